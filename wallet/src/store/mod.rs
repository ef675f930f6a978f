//! What the wallet keeps: users (with their sealed keys) and mandate requests. The trait is
//! asynchronous. On SQLite, reads by key run on the calling task and every write is
//! group-committed by the database's writer thread (the two writes of a mandate, its request
//! and its approval, among them), the task woken when its group is durable: no blocking-thread
//! hop per call, and the connection readers share never waits on an fsync. On PostgreSQL each
//! call runs on the blocking pool, the driver being synchronous.

/// The users table's columns, in the order both backends' row readers take them.
macro_rules! user_columns {
    () => {
        "user_id, kid, token_hash, sealed_key, registered, created_at, key_revoked_at"
    };
}
/// The requests table's columns, likewise.
macro_rules! request_columns {
    () => {
        "id, user_id, agent_id, merchant_id, cart, cart_hash, max_amount, currency, ttl_secs, \
         otp, attempts, status, created_at, expires_at, mandate, mandate_exp, cnf_jkt"
    };
}

mod pg;
mod sqlite;

pub use pg::PgStore;
pub use sqlite::SqliteStore;

/// A user as stored.
#[derive(Debug, Clone)]
pub struct UserRow {
    /// The user's id (the mandate's `sub`).
    pub user_id: String,
    /// The kid of the user's key.
    pub kid: String,
    /// SHA-256 of the user's bearer token.
    pub token_hash: String,
    /// The private key, PKCS#8 DER sealed with the master key.
    pub sealed_key: Vec<u8>,
    /// Whether the key directory has the public key.
    pub registered: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// When the key directory revoked this key (SPEC §10): the wallet never signs with it.
    pub key_revoked_at: Option<i64>,
}

/// Where a mandate request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Waiting for the user's code.
    PendingApproval,
    /// Approved; the mandate is minted.
    Approved,
    /// The user said no.
    Denied,
    /// Three wrong codes.
    Locked,
    /// Not approved in time.
    Expired,
}

impl Status {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingApproval => "pending_approval",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Locked => "locked",
            Self::Expired => "expired",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending_approval" => Self::PendingApproval,
            "approved" => Self::Approved,
            "denied" => Self::Denied,
            "locked" => Self::Locked,
            "expired" => Self::Expired,
            _ => return None,
        })
    }
}

/// A mandate request as stored.
#[derive(Debug, Clone)]
pub struct RequestRow {
    /// Random id.
    pub id: String,
    /// Whose approval it needs.
    pub user_id: String,
    /// The agent that asked, and the only one the mandate will allow.
    pub agent_id: String,
    /// The merchant (`aud`).
    pub merchant_id: String,
    /// The cart's JSON, as validated.
    pub cart: String,
    /// The cart's hash, computed by the wallet.
    pub cart_hash: String,
    /// The ceiling, a decimal string in `currency`.
    pub max_amount: String,
    /// ISO 4217.
    pub currency: String,
    /// The mandate's lifetime once approved.
    pub ttl_secs: i64,
    /// The one-time code, sealed under the master key (`crypto::seal_code`); empty once the
    /// request has ended.
    pub otp: String,
    /// Wrong codes so far.
    pub attempts: i64,
    /// Where it stands (a pending request past `expires_at` is expired).
    pub status: Status,
    /// Unix seconds.
    pub created_at: i64,
    /// The approval deadline, Unix seconds.
    pub expires_at: i64,
    /// The agent key the mandate is bound to (`cnf.jkt`), from the request's DPoP proof.
    pub cnf_jkt: Option<String>,
    /// The minted mandate, once approved.
    pub mandate: Option<String>,
    /// The mandate's `exp`.
    pub mandate_exp: Option<i64>,
}

impl RequestRow {
    /// The status as of `now`: a pending request past its deadline reads as expired.
    pub fn status_at(&self, now: i64) -> Status {
        if self.status == Status::PendingApproval && now >= self.expires_at {
            Status::Expired
        } else {
            self.status
        }
    }
}

/// What an approval attempt did.
#[derive(Debug, Clone)]
pub enum Approval {
    /// The code was right; the mandate was minted, exactly once.
    Approved(Box<RequestRow>),
    /// A wrong code; `remaining` tries left.
    WrongCode {
        /// Tries left before the request locks.
        remaining: i64,
    },
    /// This attempt (or an earlier one) used the last try.
    Locked,
    /// The deadline passed.
    Expired,
    /// Already approved, denied or locked.
    NotPending(Status),
}

/// One approval attempt, as [`WalletStore::approve`] checks and stores it.
pub struct Attempt {
    /// The request.
    pub id: String,
    /// The user approving: the request's, or `NotYours`.
    pub user_id: String,
    /// Checks the typed code against the stored, sealed one; always true for a passkey
    /// approval, whose assertion was checked before.
    pub code_matches: Box<dyn Fn(&str) -> bool + Send>,
    /// Unix seconds.
    pub now: i64,
    /// Wrong codes before the request locks.
    pub max_attempts: i64,
    /// The mandate and its `exp`, signed beforehand from the request as read (whose
    /// mandate-making fields never change): stored, and answered, only if the code matches
    /// and the request is still pending. `None` when the caller found nothing to approve.
    pub mandate: Option<(String, i64)>,
    /// The evidence of a passkey approval (SPEC §12), stored with it.
    pub evidence: Option<String>,
}

/// What an approval writes to its request.
#[derive(Debug)]
pub(crate) enum Change {
    /// Nothing: locked, or not pending.
    None,
    /// The request ends with this status (expired), and loses its code.
    End(Status),
    /// Approved with this mandate and `exp`, and the evidence when given; the code goes.
    Approve {
        mandate: String,
        exp: i64,
        evidence: Option<String>,
    },
    /// A wrong code: `attempts` counted, and the request locked (losing its code) if `locks`.
    WrongCode { attempts: i64, locks: bool },
}

/// The rules of an approval, for every backend: what `attempt` makes of `request` (read in the
/// approval's transaction), the answer and the change to write.
pub(crate) fn decide(
    mut request: RequestRow,
    attempt: Attempt,
) -> Result<(Approval, Change), StoreError> {
    if request.user_id != attempt.user_id {
        return Err(StoreError::NotYours);
    }
    Ok(match request.status_at(attempt.now) {
        Status::Expired => (Approval::Expired, Change::End(Status::Expired)),
        Status::PendingApproval if (attempt.code_matches)(&request.otp) => {
            let (mandate, exp) = attempt.mandate.ok_or_else(|| {
                StoreError::Mint("the request was approved without a mandate".into())
            })?;
            let change = Change::Approve {
                mandate: mandate.clone(),
                exp,
                evidence: attempt.evidence,
            };
            request.status = Status::Approved;
            request.otp = String::new();
            request.mandate = Some(mandate);
            request.mandate_exp = Some(exp);
            (Approval::Approved(Box::new(request)), change)
        }
        Status::PendingApproval => {
            let attempts = request.attempts.saturating_add(1);
            let locks = attempts >= attempt.max_attempts;
            let answer = if locks {
                Approval::Locked
            } else {
                Approval::WrongCode {
                    remaining: attempt.max_attempts - attempts,
                }
            };
            (answer, Change::WrongCode { attempts, locks })
        }
        Status::Locked => (Approval::Locked, Change::None),
        other => (Approval::NotPending(other), Change::None),
    })
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The user id is taken.
    #[error("the user exists")]
    UserExists,
    /// No such user or request.
    #[error("not found")]
    NotFound,
    /// The request belongs to another user.
    #[error("the request belongs to another user")]
    NotYours,
    /// The user has as many pending requests as allowed.
    #[error("too many pending requests")]
    TooManyPending,
    /// The request's DPoP proof was seen before.
    #[error("the DPoP proof was already used")]
    ProofReplayed,
    /// The passkey credential is enrolled already.
    #[error("the credential is enrolled already")]
    CredentialExists,
    /// Minting failed; nothing changed.
    #[error("minting failed: {0}")]
    Mint(String),
    /// The database failed.
    #[error("store failure: {0}")]
    Backend(String),
}

/// The wallet's storage.
#[async_trait::async_trait]
pub trait WalletStore: Send + Sync + 'static {
    /// Adds a user (not yet registered at the directory).
    async fn create_user(&self, user: UserRow) -> Result<(), StoreError>;
    /// Records that the directory has the user's key.
    async fn mark_registered(&self, user_id: &str) -> Result<(), StoreError>;
    /// Removes a user whose key never reached the directory.
    async fn delete_unregistered_user(&self, user_id: &str) -> Result<(), StoreError>;
    /// Makes `new_kid` (sealed as `new_sealed`) the user's key, and keeps the old kid as
    /// retired, to be revoked at the directory; one transaction. Returns the old kid.
    async fn rotate_key(
        &self,
        user_id: &str,
        new_kid: &str,
        new_sealed: &[u8],
        now: i64,
    ) -> Result<String, StoreError>;
    /// Retired kids not yet revoked at the directory.
    async fn retired_unrevoked(&self) -> Result<Vec<String>, StoreError>;
    /// The directory revoked `kid` at `now`: a user's current key is marked (never signed
    /// with again), a retired one is done with. Returns the user whose current key it was.
    async fn key_revoked(&self, kid: &str, now: i64) -> Result<Option<String>, StoreError>;
    /// Users whose key has not reached the directory yet.
    async fn unregistered_users(&self) -> Result<Vec<UserRow>, StoreError>;
    /// A user.
    async fn user(&self, user_id: &str) -> Result<Option<UserRow>, StoreError>;
    /// The user whose token hashes to `token_hash`.
    async fn user_by_token_hash(&self, token_hash: &str) -> Result<Option<String>, StoreError>;
    /// Adds a request and, in the same transaction, records its DPoP proof's replay key until
    /// its deadline (`ProofReplayed`, and no request, if the key is there already) and checks
    /// that the user has fewer than `max_pending` pending requests (`TooManyPending`).
    /// Records past their deadline are removed on the way.
    async fn create_request(
        &self,
        request: RequestRow,
        proof: Option<(String, i64)>,
        max_pending: u32,
    ) -> Result<(), StoreError>;
    /// A request.
    async fn request(&self, id: &str) -> Result<Option<RequestRow>, StoreError>;
    /// A user's pending requests whose deadline has not passed, oldest first: at most `limit`,
    /// after the `(created_at, id)` of `after` when given.
    async fn pending_for_user(
        &self,
        user_id: &str,
        now: i64,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<RequestRow>, StoreError>;
    /// Checks `attempt`'s code against its request and, when right and the request is still
    /// pending, stores the mandate it carries (and its evidence, SPEC §12) in one
    /// transaction: of concurrent approvals, one stores its mandate and the others find the
    /// request approved. A wrong code counts an attempt; a request that ends (approved,
    /// locked, expired) loses its code. A right code without a mandate is `Mint`, and
    /// changes nothing.
    async fn approve(&self, attempt: Attempt) -> Result<Approval, StoreError>;
    /// The evidence of a passkey approval (SPEC §12), the JSON stored with it.
    async fn evidence(&self, request_id: &str) -> Result<Option<String>, StoreError>;
    /// Enrols a passkey (`passkey` is the credential as `webauthn-rs` serialises it);
    /// `CredentialExists` when its id is enrolled already, for anyone.
    async fn add_passkey(
        &self,
        user_id: &str,
        cred_id: &str,
        passkey: &str,
        now: i64,
    ) -> Result<(), StoreError>;
    /// A user's passkeys, oldest first.
    async fn passkeys(&self, user_id: &str) -> Result<Vec<String>, StoreError>;
    /// Stores a passkey's new state (its sign counter) after an assertion.
    async fn update_passkey(&self, cred_id: &str, passkey: &str) -> Result<(), StoreError>;
    /// Denies a pending request.
    async fn deny(
        &self,
        id: &str,
        user_id: &str,
        now: i64,
    ) -> Result<Result<RequestRow, Status>, StoreError>;
    /// The sweep (SPEC §9): ends at most `limit` pending requests whose deadline passed by
    /// `now` (expired, their code erased), and deletes at most `limit` requests that ended
    /// without a mandate (expired, denied, locked) by `delete_before`. Approved requests, the
    /// record of what the user signed, stay. Returns how many it ended and deleted.
    async fn sweep_requests(
        &self,
        now: i64,
        delete_before: i64,
        limit: u32,
    ) -> Result<(usize, usize), StoreError>;
    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
}
