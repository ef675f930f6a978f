//! Where keys live. The trait is synchronous because the backends are; handlers call it on the
//! blocking pool.

mod pg;
mod sqlite;

pub use pg::PgStore;
pub use sqlite::SqliteStore;

/// A registered key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// The key id.
    pub kid: String,
    /// The issuer whose token registered it.
    pub issuer: String,
    /// The user.
    pub subject: String,
    /// RFC 7638 thumbprint of the key: one key, one registration.
    pub thumbprint: String,
    /// The public JWK as served (kty, crv, x, y, kid, alg, use).
    pub jwk: serde_json::Value,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, once revoked.
    pub revoked_at: Option<i64>,
}

impl KeyEntry {
    /// Whether `other` registers the same key for the same issuer and subject.
    pub fn same_registration(&self, other: &KeyEntry) -> bool {
        self.kid == other.kid
            && self.issuer == other.issuer
            && self.subject == other.subject
            && self.thumbprint == other.thumbprint
    }
}

/// A revocation as the event stream tells it (SPEC §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Its place in the stream: increasing, never reused; the SSE `id`.
    pub seq: i64,
    /// The revoked key.
    pub kid: String,
    /// Unix seconds.
    pub revoked_at: i64,
}

/// What a registration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// A new key.
    Created(KeyEntry),
    /// The same registration again (idempotent).
    Existing(KeyEntry),
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The kid is registered with another key, issuer or subject.
    #[error("the kid is registered with another key")]
    KidTaken,
    /// This public key is registered under another kid.
    #[error("this key is registered under another kid")]
    KeyTaken,
    /// The registration exists but was revoked; a revoked key is not registered again.
    #[error("this key was revoked")]
    Revoked,
    /// No such kid.
    #[error("no such kid")]
    NotFound,
    /// The key belongs to another issuer.
    #[error("the key belongs to another issuer")]
    NotYours,
    /// The database failed.
    #[error("store failure: {0}")]
    Backend(String),
}

/// The registry.
pub trait KeyStore: Send + Sync + 'static {
    /// Registers `entry` unless its kid or key is taken; the same registration again returns
    /// the stored one. Concurrent registrations of one kid end with one winner.
    fn register(&self, entry: KeyEntry) -> Result<Registered, StoreError>;
    /// The entry for `kid`.
    fn get(&self, kid: &str) -> Result<Option<KeyEntry>, StoreError>;
    /// Revokes `kid` for `issuer` at `now`; revoking again keeps the first time. The first
    /// revocation appends its event in the same transaction.
    fn revoke(&self, kid: &str, issuer: &str, now: i64) -> Result<KeyEntry, StoreError>;
    /// At most `limit` revocations after `seq`, in order.
    fn revocations_after(&self, seq: i64, limit: usize) -> Result<Vec<Revocation>, StoreError>;
    /// The last revocation's `seq` (0 when there is none).
    fn last_revocation(&self) -> Result<i64, StoreError>;
    /// Every active key, oldest first.
    fn active(&self) -> Result<Vec<KeyEntry>, StoreError>;
    /// Whether the store answers.
    fn ping(&self) -> Result<(), StoreError>;
}
