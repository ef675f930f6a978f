//! Checkout sessions and orders. Each order keeps the mandate it was paid with and the verified
//! claims, so a disputed charge can be re-verified later; `(iss, jti)` is unique across orders,
//! a durable second line should the replay set lose its data.

/// The sessions table's columns, in the order both backends' row readers take them.
macro_rules! session_columns {
    () => {
        "id, cart, cart_hash, status, created_at, order_id, owner_jkt"
    };
}
/// The orders table's columns, likewise.
macro_rules! order_columns {
    () => {
        "id, session_id, amount, currency, mandate, claims, iss, jti, sub, kid, agent_id, \
         charge_id, created_at, agent_jkt"
    };
}

mod pg;
mod sqlite;

pub use pg::PgStore;
pub use sqlite::SqliteStore;

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatus {
    /// Priced, waiting for a mandate.
    ReadyForComplete,
    /// A verified mandate is being charged.
    Charging,
    /// Paid.
    Completed,
}

impl SessionStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadyForComplete => "ready_for_complete",
            Self::Charging => "charging",
            Self::Completed => "completed",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ready_for_complete" => Self::ReadyForComplete,
            "charging" => Self::Charging,
            "completed" => Self::Completed,
            _ => return None,
        })
    }
}

/// A checkout session.
#[derive(Debug, Clone)]
pub struct SessionRow {
    /// Random id.
    pub id: String,
    /// The priced cart's JSON.
    pub cart: String,
    /// Its hash.
    pub cart_hash: String,
    /// Where it stands.
    pub status: SessionStatus,
    /// Unix seconds.
    pub created_at: i64,
    /// The order that paid it.
    pub order_id: Option<String>,
    /// The agent key that opened it (SPEC §8): only a proof by that key sees or completes
    /// it. `None` for a session opened without a proof (binding not required).
    pub owner_jkt: Option<String>,
}

/// An order: one paid session.
#[derive(Debug, Clone)]
pub struct OrderRow {
    /// Random id; also the payment's idempotency key.
    pub id: String,
    /// The session it paid.
    pub session_id: String,
    /// Minor units, the cart's total.
    pub amount: i64,
    /// ISO 4217.
    pub currency: String,
    /// The mandate as presented.
    pub mandate: String,
    /// The verified claims (JSON).
    pub claims: String,
    /// The mandate's issuer.
    pub iss: String,
    /// The mandate's jti.
    pub jti: String,
    /// The user.
    pub sub: String,
    /// The key.
    pub kid: String,
    /// The presenting agent.
    pub agent_id: String,
    /// The processor's charge id, once paid.
    pub charge_id: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// The key of the agent's DPoP proof, when the mandate was presented with one.
    pub agent_jkt: Option<String>,
}

/// Why an order could not begin.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such session.
    #[error("no such session")]
    NotFound,
    /// The session is charging or completed.
    #[error("the session is {}", .0.as_str())]
    NotReady(SessionStatus),
    /// An order already used this `(iss, jti)`.
    #[error("this mandate already paid an order")]
    MandateUsed,
    /// The session's owner has as many open sessions as allowed.
    #[error("too many open sessions")]
    TooManySessions,
    /// A charge was recorded for an order that no longer holds its session (aborted, and the
    /// session reopened or paid by another order): the money moved and no order shows it.
    #[error("the order no longer holds its session")]
    OrderNotHeld,
    /// The database failed.
    #[error("store failure: {0}")]
    Backend(String),
}

/// Sessions and orders. Every call is asynchronous: a store waits for its database on the
/// caller's task (SQLite's writer thread or PostgreSQL's sockets), not on a blocking thread;
/// only the sweep's scan of stuck orders on SQLite runs on one.
#[async_trait::async_trait]
pub trait MerchantStore: Send + Sync + 'static {
    /// Adds a session. With `cap` = `(max, opened_after)`, an owned session is refused
    /// (`TooManySessions`) when its owner already has `max` open sessions created after
    /// `opened_after`; the count and the insert are one transaction.
    async fn create_session(
        &self,
        session: &SessionRow,
        cap: Option<(u32, i64)>,
    ) -> Result<(), StoreError>;
    /// Deletes the open sessions created at or before `opened_before` (expired); how many.
    async fn delete_expired_sessions(&self, opened_before: i64) -> Result<usize, StoreError>;
    /// A session.
    async fn session(&self, id: &str) -> Result<Option<SessionRow>, StoreError>;
    /// Moves a ready session to charging and records its pending order, atomically: of two
    /// racing completions, one begins.
    async fn begin_order(&self, order: &OrderRow) -> Result<(), StoreError>;
    /// The charge went through: the order `order_id` of session `session_id` is paid and the
    /// session completed. Recording it again is `Ok`; when the session's order is another, or
    /// none, nothing changes and the answer is `OrderNotHeld`.
    async fn finish_order(
        &self,
        session_id: &str,
        order_id: &str,
        charge_id: &str,
    ) -> Result<(), StoreError>;
    /// The charge failed: the order goes and the session is ready again.
    async fn abort_order(&self, order_id: &str) -> Result<(), StoreError>;
    /// An order.
    async fn order(&self, id: &str) -> Result<Option<OrderRow>, StoreError>;
    /// The orders begun before `begun_before` whose charge never finished (a process died
    /// between beginning the order and recording the charge): their sessions are `charging`.
    async fn stuck_orders(&self, begun_before: i64) -> Result<Vec<OrderRow>, StoreError>;
    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
}
