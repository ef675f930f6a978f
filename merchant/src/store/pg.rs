//! The merchant on PostgreSQL (SPEC §11): every instance shares the sessions and orders, so a
//! checkout opened at one completes at any other. The same rules as the SQLite store, made
//! safe across processes with row locks (a completion locks its session) and advisory locks
//! (an owner's session count).

use ap2_service::pg::{PgDb, is_unique_violation};

use super::{MerchantStore, OrderRow, SessionRow, SessionStatus, StoreError};

/// The versioned schema: migration `i` is version `i + 1`; never edit one that shipped.
const MIGRATIONS: &[&str] = &["
CREATE TABLE sessions (
    id         TEXT PRIMARY KEY,
    cart       TEXT NOT NULL,
    cart_hash  TEXT NOT NULL,
    status     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    order_id   TEXT,
    owner_jkt  TEXT
);
CREATE INDEX sessions_open_by_owner ON sessions (owner_jkt, status, created_at);
CREATE INDEX sessions_by_status_created ON sessions (status, created_at);
CREATE TABLE orders (
    id         TEXT PRIMARY KEY,
    session_id TEXT NOT NULL UNIQUE REFERENCES sessions (id),
    amount     BIGINT NOT NULL,
    currency   TEXT NOT NULL,
    mandate    TEXT NOT NULL,
    claims     TEXT NOT NULL,
    iss        TEXT NOT NULL,
    jti        TEXT NOT NULL,
    sub        TEXT NOT NULL,
    kid        TEXT NOT NULL,
    agent_id   TEXT NOT NULL,
    charge_id  TEXT,
    created_at BIGINT NOT NULL,
    agent_jkt  TEXT,
    UNIQUE (iss, jti)
);
"];

const SESSION_COLUMNS: &str = "id, cart, cart_hash, status, created_at, order_id, owner_jkt";
const ORDER_COLUMNS: &str = "id, session_id, amount, currency, mandate, claims, iss, jti, sub, kid, agent_id, charge_id, created_at, agent_jkt";

/// Sessions and orders in PostgreSQL, schema `merchant`.
#[derive(Debug, Clone)]
pub struct PgStore {
    db: PgDb,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn session_row(row: &postgres::Row) -> Result<SessionRow, StoreError> {
    let status: String = row.try_get(3).map_err(backend)?;
    Ok(SessionRow {
        id: row.try_get(0).map_err(backend)?,
        cart: row.try_get(1).map_err(backend)?,
        cart_hash: row.try_get(2).map_err(backend)?,
        status: SessionStatus::parse(&status)
            .ok_or_else(|| backend(format!("unknown status {status:?}")))?,
        created_at: row.try_get(4).map_err(backend)?,
        order_id: row.try_get(5).map_err(backend)?,
        owner_jkt: row.try_get(6).map_err(backend)?,
    })
}

fn order_row(row: &postgres::Row) -> Result<OrderRow, StoreError> {
    let get = |i: usize| -> Result<String, StoreError> { row.try_get(i).map_err(backend) };
    Ok(OrderRow {
        id: get(0)?,
        session_id: get(1)?,
        amount: row.try_get(2).map_err(backend)?,
        currency: get(3)?,
        mandate: get(4)?,
        claims: get(5)?,
        iss: get(6)?,
        jti: get(7)?,
        sub: get(8)?,
        kid: get(9)?,
        agent_id: get(10)?,
        charge_id: row.try_get(11).map_err(backend)?,
        created_at: row.try_get(12).map_err(backend)?,
        agent_jkt: row.try_get(13).map_err(backend)?,
    })
}

impl PgStore {
    /// Connects (at most `max_connections`) and migrates the `merchant` schema.
    pub fn open(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        Ok(Self {
            db: PgDb::open(url, "merchant", MIGRATIONS, max_connections)?,
        })
    }
}

impl MerchantStore for PgStore {
    fn create_session(&self, s: &SessionRow, cap: Option<(u32, i64)>) -> Result<(), StoreError> {
        let mut conn = self.db.get().map_err(StoreError::Backend)?;
        let mut tx = conn.transaction().map_err(backend)?;
        if let (Some(owner), Some((max, opened_after))) = (&s.owner_jkt, cap) {
            // One owner's sessions are counted one insert at a time, across instances.
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[owner])
                .map_err(backend)?;
            let open: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM sessions WHERE owner_jkt = $1
                     AND status = 'ready_for_complete' AND created_at > $2",
                    &[owner, &opened_after],
                )
                .map_err(backend)?
                .get(0);
            if open >= i64::from(max) {
                return Err(StoreError::TooManySessions);
            }
        }
        tx.execute(
            &format!(
                "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            ),
            &[
                &s.id,
                &s.cart,
                &s.cart_hash,
                &s.status.as_str(),
                &s.created_at,
                &s.order_id,
                &s.owner_jkt,
            ],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn delete_expired_sessions(&self, opened_before: i64) -> Result<usize, StoreError> {
        let mut conn = self.db.get().map_err(StoreError::Backend)?;
        let n = conn
            .execute(
                "DELETE FROM sessions WHERE status = 'ready_for_complete' AND created_at <= $1",
                &[&opened_before],
            )
            .map_err(backend)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn session(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        let mut conn = self.db.get().map_err(StoreError::Backend)?;
        conn.query_opt(
            &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"),
            &[&id],
        )
        .map_err(backend)?
        .as_ref()
        .map(session_row)
        .transpose()
    }

    fn begin_order(&self, o: &OrderRow) -> Result<(), StoreError> {
        let mut conn = self.db.get().map_err(StoreError::Backend)?;
        let mut tx = conn.transaction().map_err(backend)?;
        // The session's row lock: of two completions racing at two instances, one goes on.
        let status: Option<String> = tx
            .query_opt(
                "SELECT status FROM sessions WHERE id = $1 FOR UPDATE",
                &[&o.session_id],
            )
            .map_err(backend)?
            .map(|row| row.get(0));
        match status.as_deref().and_then(SessionStatus::parse) {
            None => return Err(StoreError::NotFound),
            Some(SessionStatus::ReadyForComplete) => {}
            Some(other) => return Err(StoreError::NotReady(other)),
        }
        let inserted = tx.execute(
            &format!(
                "INSERT INTO orders ({ORDER_COLUMNS}) VALUES
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, $12, $13)"
            ),
            &[
                &o.id,
                &o.session_id,
                &o.amount,
                &o.currency,
                &o.mandate,
                &o.claims,
                &o.iss,
                &o.jti,
                &o.sub,
                &o.kid,
                &o.agent_id,
                &o.created_at,
                &o.agent_jkt,
            ],
        );
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(StoreError::MandateUsed),
            Err(e) => return Err(backend(e)),
        }
        tx.execute(
            "UPDATE sessions SET status = 'charging', order_id = $2 WHERE id = $1",
            &[&o.session_id, &o.id],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn finish_order(&self, order_id: &str, charge_id: &str) -> Result<(), StoreError> {
        let mut conn = self.db.get().map_err(StoreError::Backend)?;
        let mut tx = conn.transaction().map_err(backend)?;
        tx.execute(
            "UPDATE orders SET charge_id = $2 WHERE id = $1",
            &[&order_id, &charge_id],
        )
        .map_err(backend)?;
        tx.execute(
            "UPDATE sessions SET status = 'completed'
             WHERE id = (SELECT session_id FROM orders WHERE id = $1)",
            &[&order_id],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn abort_order(&self, order_id: &str) -> Result<(), StoreError> {
        let mut conn = self.db.get().map_err(StoreError::Backend)?;
        let mut tx = conn.transaction().map_err(backend)?;
        tx.execute(
            "UPDATE sessions SET status = 'ready_for_complete', order_id = NULL
             WHERE id = (SELECT session_id FROM orders WHERE id = $1)",
            &[&order_id],
        )
        .map_err(backend)?;
        tx.execute("DELETE FROM orders WHERE id = $1", &[&order_id])
            .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn order(&self, id: &str) -> Result<Option<OrderRow>, StoreError> {
        let mut conn = self.db.get().map_err(StoreError::Backend)?;
        conn.query_opt(
            &format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"),
            &[&id],
        )
        .map_err(backend)?
        .as_ref()
        .map(order_row)
        .transpose()
    }

    fn stuck_orders(&self, begun_before: i64) -> Result<Vec<OrderRow>, StoreError> {
        let mut conn = self.db.get().map_err(StoreError::Backend)?;
        conn.query(
            &format!(
                "SELECT {} FROM orders o JOIN sessions s ON s.id = o.session_id
                 WHERE s.status = 'charging' AND o.charge_id IS NULL AND o.created_at < $1",
                ORDER_COLUMNS
                    .split(", ")
                    .map(|c| format!("o.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &[&begun_before],
        )
        .map_err(backend)?
        .iter()
        .map(order_row)
        .collect()
    }

    fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.db.get().map_err(StoreError::Backend)?;
        conn.execute("SELECT 1", &[]).map_err(backend).map(|_| ())
    }
}
