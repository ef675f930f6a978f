//! The wallet on PostgreSQL (SPEC §11): every instance serves the same users and requests.
//! The rules are the SQLite store's; races across instances are settled by row locks (an
//! approval locks its request) and advisory locks (a user's pending count).

use ap2_service::pg::{PgDb, is_unique_violation};
use postgres::GenericClient;

use super::{
    Approval, Attempt, Change, RequestRow, Status, StoreError, UserRow, WalletStore, decide,
};

/// The versioned schema: migration `i` is version `i + 1`; never edit one that shipped.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE users (
    user_id        TEXT PRIMARY KEY,
    kid            TEXT NOT NULL UNIQUE,
    token_hash     TEXT NOT NULL UNIQUE,
    sealed_key     BYTEA NOT NULL,
    registered     BOOLEAN NOT NULL,
    created_at     BIGINT NOT NULL,
    key_revoked_at BIGINT
);
CREATE TABLE requests (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (user_id),
    agent_id    TEXT NOT NULL,
    merchant_id TEXT NOT NULL,
    cart        TEXT NOT NULL,
    cart_hash   TEXT NOT NULL,
    max_amount  TEXT NOT NULL,
    currency    TEXT NOT NULL,
    ttl_secs    BIGINT NOT NULL,
    otp         TEXT NOT NULL,
    attempts    BIGINT NOT NULL,
    status      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    mandate     TEXT,
    mandate_exp BIGINT,
    cnf_jkt     TEXT
);
CREATE INDEX requests_by_user ON requests (user_id, status, created_at, id);
CREATE TABLE dpop_proofs (
    key   TEXT PRIMARY KEY,
    until BIGINT NOT NULL
);
CREATE INDEX dpop_proofs_by_until ON dpop_proofs (until);
CREATE TABLE retired_keys (
    kid        TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (user_id),
    retired_at BIGINT NOT NULL,
    revoked    BOOLEAN NOT NULL
);
",
    "
CREATE TABLE passkeys (
    cred_id    TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (user_id),
    passkey    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX passkeys_by_user ON passkeys (user_id, created_at);
CREATE TABLE evidence (
    request_id TEXT PRIMARY KEY REFERENCES requests (id),
    evidence   TEXT NOT NULL
);
",
    "
-- The sweep: pending requests past their deadline lose their code, and requests that ended
-- without a mandate are deleted after the retention period, each found by its own index.
CREATE INDEX requests_pending_by_expiry ON requests (expires_at)
    WHERE status = 'pending_approval';
CREATE INDEX requests_ended_by_expiry ON requests (expires_at)
    WHERE status IN ('expired', 'denied', 'locked');
",
];

/// The sweep (`WalletStore::sweep_requests`): the oldest first, `$2` at a time, each by its
/// partial index. `FOR UPDATE SKIP LOCKED`: a row an approval holds is left for the next
/// sweep, and a row is locked only as it is now, so another instance's approval that
/// committed meanwhile is never marked expired; sweeps of several instances share the work.
const EXPIRE_PENDING: &str = "UPDATE requests SET status = 'expired', otp = ''
     WHERE id IN (SELECT id FROM requests WHERE status = 'pending_approval' AND expires_at <= $1
                  ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)";
/// See [`EXPIRE_PENDING`].
const DELETE_ENDED: &str = "DELETE FROM requests
     WHERE id IN (SELECT id FROM requests WHERE status IN ('expired', 'denied', 'locked')
                  AND expires_at <= $1 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)";

/// Users and requests in PostgreSQL, schema `wallet`.
#[derive(Debug, Clone)]
pub struct PgStore {
    blocking: Blocking,
}

/// The store's calls on the synchronous driver, each run on the blocking pool.
#[derive(Debug, Clone)]
struct Blocking {
    db: PgDb,
}

/// A failure as the store reports it, with the server's own message (`describe`).
fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::Backend(ap2_service::describe(&*e.into()))
}

fn user_row(row: &postgres::Row) -> Result<UserRow, StoreError> {
    Ok(UserRow {
        user_id: row.try_get(0).map_err(backend)?,
        kid: row.try_get(1).map_err(backend)?,
        token_hash: row.try_get(2).map_err(backend)?,
        sealed_key: row.try_get(3).map_err(backend)?,
        registered: row.try_get(4).map_err(backend)?,
        created_at: row.try_get(5).map_err(backend)?,
        key_revoked_at: row.try_get(6).map_err(backend)?,
    })
}

fn request_row(row: &postgres::Row) -> Result<RequestRow, StoreError> {
    let text = |i: usize| -> Result<String, StoreError> { row.try_get(i).map_err(backend) };
    let int = |i: usize| -> Result<i64, StoreError> { row.try_get(i).map_err(backend) };
    let status = text(11)?;
    Ok(RequestRow {
        id: text(0)?,
        user_id: text(1)?,
        agent_id: text(2)?,
        merchant_id: text(3)?,
        cart: text(4)?,
        cart_hash: text(5)?,
        max_amount: text(6)?,
        currency: text(7)?,
        ttl_secs: int(8)?,
        otp: text(9)?,
        attempts: int(10)?,
        status: Status::parse(&status)
            .ok_or_else(|| backend(format!("unknown status {status:?}")))?,
        created_at: int(12)?,
        expires_at: int(13)?,
        mandate: row.try_get(14).map_err(backend)?,
        mandate_exp: row.try_get(15).map_err(backend)?,
        cnf_jkt: row.try_get(16).map_err(backend)?,
    })
}

fn select_request(
    conn: &mut impl GenericClient,
    id: &str,
    lock: bool,
) -> Result<Option<RequestRow>, StoreError> {
    let sql = if lock {
        concat!(
            "SELECT ",
            request_columns!(),
            " FROM requests WHERE id = $1 FOR UPDATE"
        )
    } else {
        concat!(
            "SELECT ",
            request_columns!(),
            " FROM requests WHERE id = $1"
        )
    };
    conn.query_opt(sql, &[&id])
        .map_err(backend)?
        .as_ref()
        .map(request_row)
        .transpose()
}

fn select_user(
    conn: &mut impl GenericClient,
    column: &str,
    value: &str,
) -> Result<Option<UserRow>, StoreError> {
    conn.query_opt(
        &format!(
            concat!("SELECT ", user_columns!(), " FROM users WHERE {} = $1"),
            column
        ),
        &[&value],
    )
    .map_err(backend)?
    .as_ref()
    .map(user_row)
    .transpose()
}

/// Sets an ended status; the request's code goes with it.
fn set_status(conn: &mut impl GenericClient, id: &str, status: Status) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE requests SET status = $2, otp = '' WHERE id = $1",
        &[&id, &status.as_str()],
    )
    .map(|_| ())
    .map_err(backend)
}

impl PgStore {
    /// Connects (at most `max_connections`) and migrates the `wallet` schema.
    pub fn open(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        Ok(Self {
            blocking: Blocking {
                db: PgDb::open(url, "wallet", MIGRATIONS, max_connections)?,
            },
        })
    }

    /// Runs `f` with the synchronous store on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Blocking) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let blocking = self.blocking.clone();
        tokio::task::spawn_blocking(move || f(&blocking))
            .await
            .map_err(backend)?
    }
}

impl Blocking {
    fn conn(&self) -> Result<ap2_service::pg::PgConnection, StoreError> {
        self.db.get().map_err(StoreError::Backend)
    }
}

impl Blocking {
    fn create_user(&self, user: &UserRow) -> Result<(), StoreError> {
        let inserted = self.conn()?.execute(
            concat!(
                "INSERT INTO users (",
                user_columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, NULL)"
            ),
            &[
                &user.user_id,
                &user.kid,
                &user.token_hash,
                &user.sealed_key,
                &user.registered,
                &user.created_at,
            ],
        );
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::UserExists),
            Err(e) => Err(backend(e)),
        }
    }

    fn mark_registered(&self, user_id: &str) -> Result<(), StoreError> {
        self.conn()?
            .execute(
                "UPDATE users SET registered = TRUE WHERE user_id = $1",
                &[&user_id],
            )
            .map(|_| ())
            .map_err(backend)
    }

    fn delete_unregistered_user(&self, user_id: &str) -> Result<(), StoreError> {
        self.conn()?
            .execute(
                "DELETE FROM users WHERE user_id = $1 AND NOT registered",
                &[&user_id],
            )
            .map(|_| ())
            .map_err(backend)
    }

    fn rotate_key(
        &self,
        user_id: &str,
        new_kid: &str,
        new_sealed: &[u8],
        now: i64,
    ) -> Result<String, StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(backend)?;
        let old: String = tx
            .query_opt(
                "SELECT kid FROM users WHERE user_id = $1 FOR UPDATE",
                &[&user_id],
            )
            .map_err(backend)?
            .ok_or(StoreError::NotFound)?
            .get(0);
        tx.execute(
            "INSERT INTO retired_keys (kid, user_id, retired_at, revoked) VALUES ($1, $2, $3, FALSE)
             ON CONFLICT (kid) DO NOTHING",
            &[&old, &user_id, &now],
        )
        .map_err(backend)?;
        tx.execute(
            "UPDATE users SET kid = $2, sealed_key = $3, key_revoked_at = NULL, registered = TRUE
             WHERE user_id = $1",
            &[&user_id, &new_kid, &new_sealed],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(old)
    }

    fn retired_unrevoked(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .conn()?
            .query(
                "SELECT kid FROM retired_keys WHERE NOT revoked ORDER BY retired_at",
                &[],
            )
            .map_err(backend)?
            .iter()
            .map(|row| row.get(0))
            .collect())
    }

    fn key_revoked(&self, kid: &str, now: i64) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(backend)?;
        tx.execute(
            "UPDATE retired_keys SET revoked = TRUE WHERE kid = $1",
            &[&kid],
        )
        .map_err(backend)?;
        let user = tx
            .query_opt(
                "UPDATE users SET key_revoked_at = COALESCE(key_revoked_at, $2) WHERE kid = $1
                 RETURNING user_id",
                &[&kid, &now],
            )
            .map_err(backend)?
            .map(|row| row.get(0));
        tx.commit().map_err(backend)?;
        Ok(user)
    }

    fn unregistered_users(&self) -> Result<Vec<UserRow>, StoreError> {
        self.conn()?
            .query(
                concat!(
                    "SELECT ",
                    user_columns!(),
                    " FROM users WHERE NOT registered"
                ),
                &[],
            )
            .map_err(backend)?
            .iter()
            .map(user_row)
            .collect()
    }

    fn user(&self, user_id: &str) -> Result<Option<UserRow>, StoreError> {
        select_user(&mut **self.conn()?, "user_id", user_id)
    }

    fn user_by_token_hash(&self, token_hash: &str) -> Result<Option<String>, StoreError> {
        Ok(select_user(&mut **self.conn()?, "token_hash", token_hash)?.map(|u| u.user_id))
    }

    fn create_request(
        &self,
        r: &RequestRow,
        proof: Option<(String, i64)>,
        max_pending: u32,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(backend)?;
        // One user's requests are counted one insert at a time, across instances.
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&r.user_id])
            .map_err(backend)?;
        let pending: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM requests WHERE user_id = $1
                 AND status = 'pending_approval' AND expires_at > $2",
                &[&r.user_id, &r.created_at],
            )
            .map_err(backend)?
            .get(0);
        if pending >= i64::from(max_pending) {
            return Err(StoreError::TooManyPending);
        }
        if let Some((key, until)) = proof {
            tx.execute(
                "DELETE FROM dpop_proofs WHERE until <= $1",
                &[&r.created_at],
            )
            .map_err(backend)?;
            let inserted = tx
                .execute(
                    "INSERT INTO dpop_proofs (key, until) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&key, &until],
                )
                .map_err(backend)?;
            if inserted == 0 {
                return Err(StoreError::ProofReplayed);
            }
        }
        tx.execute(
            concat!(
                "INSERT INTO requests (",
                request_columns!(),
                ") VALUES
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
            ),
            &[
                &r.id,
                &r.user_id,
                &r.agent_id,
                &r.merchant_id,
                &r.cart,
                &r.cart_hash,
                &r.max_amount,
                &r.currency,
                &r.ttl_secs,
                &r.otp,
                &r.attempts,
                &r.status.as_str(),
                &r.created_at,
                &r.expires_at,
                &r.mandate,
                &r.mandate_exp,
                &r.cnf_jkt,
            ],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn request(&self, id: &str) -> Result<Option<RequestRow>, StoreError> {
        select_request(&mut **self.conn()?, id, false)
    }

    fn pending_for_user(
        &self,
        user_id: &str,
        now: i64,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<RequestRow>, StoreError> {
        let (after_time, after_id) = after.unwrap_or((i64::MIN, ""));
        self.conn()?
            .query(
                concat!(
                    "SELECT ",
                    request_columns!(),
                    " FROM requests WHERE user_id = $1
                     AND status = 'pending_approval' AND expires_at > $2
                     AND (created_at, id) > ($3, $4) ORDER BY created_at, id LIMIT $5"
                ),
                &[&user_id, &now, &after_time, &after_id, &i64::from(limit)],
            )
            .map_err(backend)?
            .iter()
            .map(request_row)
            .collect()
    }

    fn approve(&self, attempt: Attempt) -> Result<Approval, StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(backend)?;
        // The request's row lock: concurrent approvals at several instances mint once.
        let request = select_request(&mut tx, &attempt.id, true)?.ok_or(StoreError::NotFound)?;
        let id = request.id.clone();
        let (answer, change) = decide(request, attempt)?;
        match change {
            Change::None => {}
            Change::End(status) => set_status(&mut tx, &id, status)?,
            Change::Approve {
                mandate,
                exp,
                evidence,
            } => {
                tx.execute(
                    "UPDATE requests SET status = 'approved', mandate = $2, mandate_exp = $3,
                     otp = '' WHERE id = $1",
                    &[&id, &mandate, &exp],
                )
                .map_err(backend)?;
                if let Some(evidence) = evidence {
                    tx.execute(
                        "INSERT INTO evidence (request_id, evidence) VALUES ($1, $2)",
                        &[&id, &evidence],
                    )
                    .map_err(backend)?;
                }
            }
            Change::WrongCode { attempts, locks } => {
                tx.execute(
                    "UPDATE requests SET attempts = $2 WHERE id = $1",
                    &[&id, &attempts],
                )
                .map_err(backend)?;
                if locks {
                    set_status(&mut tx, &id, Status::Locked)?;
                }
            }
        }
        tx.commit().map_err(backend)?;
        Ok(answer)
    }

    fn evidence(&self, request_id: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn()?;
        conn.query_opt(
            "SELECT evidence FROM evidence WHERE request_id = $1",
            &[&request_id],
        )
        .map(|row| row.map(|row| row.get(0)))
        .map_err(backend)
    }

    fn add_passkey(
        &self,
        user_id: &str,
        cred_id: &str,
        passkey: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        match conn.execute(
            "INSERT INTO passkeys (cred_id, user_id, passkey, created_at) VALUES ($1, $2, $3, $4)",
            &[&cred_id, &user_id, &passkey, &now],
        ) {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::CredentialExists),
            Err(e) => Err(backend(e)),
        }
    }

    fn passkeys(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn()?;
        conn.query(
            "SELECT passkey FROM passkeys WHERE user_id = $1 ORDER BY created_at, cred_id",
            &[&user_id],
        )
        .map(|rows| rows.iter().map(|row| row.get(0)).collect())
        .map_err(backend)
    }

    fn update_passkey(&self, cred_id: &str, passkey: &str) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        conn.execute(
            "UPDATE passkeys SET passkey = $2 WHERE cred_id = $1",
            &[&cred_id, &passkey],
        )
        .map(|_| ())
        .map_err(backend)
    }

    fn deny(
        &self,
        id: &str,
        user_id: &str,
        now: i64,
    ) -> Result<Result<RequestRow, Status>, StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(backend)?;
        let mut request = select_request(&mut tx, id, true)?.ok_or(StoreError::NotFound)?;
        if request.user_id != user_id {
            return Err(StoreError::NotYours);
        }
        let outcome = match request.status_at(now) {
            Status::PendingApproval => {
                set_status(&mut tx, id, Status::Denied)?;
                request.status = Status::Denied;
                Ok(request)
            }
            other => Err(other),
        };
        tx.commit().map_err(backend)?;
        Ok(outcome)
    }

    fn sweep_requests(
        &self,
        now: i64,
        delete_before: i64,
        limit: u32,
    ) -> Result<(usize, usize), StoreError> {
        let mut conn = self.conn()?;
        let limit = i64::from(limit);
        let ended = conn
            .execute(EXPIRE_PENDING, &[&now, &limit])
            .map_err(backend)?;
        let deleted = conn
            .execute(DELETE_ENDED, &[&delete_before, &limit])
            .map_err(backend)?;
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Ok((count(ended), count(deleted)))
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.conn()?
            .execute("SELECT 1", &[])
            .map(|_| ())
            .map_err(backend)
    }
}

#[async_trait::async_trait]
impl WalletStore for PgStore {
    async fn create_user(&self, user: UserRow) -> Result<(), StoreError> {
        self.run(move |s| s.create_user(&user)).await
    }

    async fn mark_registered(&self, user_id: &str) -> Result<(), StoreError> {
        let user_id = user_id.to_owned();
        self.run(move |s| s.mark_registered(&user_id)).await
    }

    async fn delete_unregistered_user(&self, user_id: &str) -> Result<(), StoreError> {
        let user_id = user_id.to_owned();
        self.run(move |s| s.delete_unregistered_user(&user_id))
            .await
    }

    async fn rotate_key(
        &self,
        user_id: &str,
        new_kid: &str,
        new_sealed: &[u8],
        now: i64,
    ) -> Result<String, StoreError> {
        let (user_id, new_kid, new_sealed) = (
            user_id.to_owned(),
            new_kid.to_owned(),
            new_sealed.to_owned(),
        );
        self.run(move |s| s.rotate_key(&user_id, &new_kid, &new_sealed, now))
            .await
    }

    async fn retired_unrevoked(&self) -> Result<Vec<String>, StoreError> {
        self.run(Blocking::retired_unrevoked).await
    }

    async fn key_revoked(&self, kid: &str, now: i64) -> Result<Option<String>, StoreError> {
        let kid = kid.to_owned();
        self.run(move |s| s.key_revoked(&kid, now)).await
    }

    async fn unregistered_users(&self) -> Result<Vec<UserRow>, StoreError> {
        self.run(Blocking::unregistered_users).await
    }

    async fn user(&self, user_id: &str) -> Result<Option<UserRow>, StoreError> {
        let user_id = user_id.to_owned();
        self.run(move |s| s.user(&user_id)).await
    }

    async fn user_by_token_hash(&self, token_hash: &str) -> Result<Option<String>, StoreError> {
        let token_hash = token_hash.to_owned();
        self.run(move |s| s.user_by_token_hash(&token_hash)).await
    }

    async fn create_request(
        &self,
        request: RequestRow,
        proof: Option<(String, i64)>,
        max_pending: u32,
    ) -> Result<(), StoreError> {
        self.run(move |s| s.create_request(&request, proof, max_pending))
            .await
    }

    async fn request(&self, id: &str) -> Result<Option<RequestRow>, StoreError> {
        let id = id.to_owned();
        self.run(move |s| s.request(&id)).await
    }

    async fn pending_for_user(
        &self,
        user_id: &str,
        now: i64,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<RequestRow>, StoreError> {
        let user_id = user_id.to_owned();
        let after = after.map(|(time, id)| (time, id.to_owned()));
        self.run(move |s| {
            let after = after.as_ref().map(|(time, id)| (*time, id.as_str()));
            s.pending_for_user(&user_id, now, after, limit)
        })
        .await
    }

    async fn approve(&self, attempt: Attempt) -> Result<Approval, StoreError> {
        self.run(move |s| s.approve(attempt)).await
    }

    async fn evidence(&self, request_id: &str) -> Result<Option<String>, StoreError> {
        let request_id = request_id.to_owned();
        self.run(move |s| s.evidence(&request_id)).await
    }

    async fn add_passkey(
        &self,
        user_id: &str,
        cred_id: &str,
        passkey: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let (user_id, cred_id, passkey) =
            (user_id.to_owned(), cred_id.to_owned(), passkey.to_owned());
        self.run(move |s| s.add_passkey(&user_id, &cred_id, &passkey, now))
            .await
    }

    async fn passkeys(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let user_id = user_id.to_owned();
        self.run(move |s| s.passkeys(&user_id)).await
    }

    async fn update_passkey(&self, cred_id: &str, passkey: &str) -> Result<(), StoreError> {
        let (cred_id, passkey) = (cred_id.to_owned(), passkey.to_owned());
        self.run(move |s| s.update_passkey(&cred_id, &passkey))
            .await
    }

    async fn deny(
        &self,
        id: &str,
        user_id: &str,
        now: i64,
    ) -> Result<Result<RequestRow, Status>, StoreError> {
        let (id, user_id) = (id.to_owned(), user_id.to_owned());
        self.run(move |s| s.deny(&id, &user_id, now)).await
    }

    async fn sweep_requests(
        &self,
        now: i64,
        delete_before: i64,
        limit: u32,
    ) -> Result<(usize, usize), StoreError> {
        self.run(move |s| s.sweep_requests(now, delete_before, limit))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(Blocking::ping).await
    }
}
