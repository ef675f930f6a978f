//! The wallet's SQLite database (WAL, synchronous commits).

use std::path::Path;

use ap2_service::{DbPoisoned, SqliteDb, WriteFailed, execute_cached, query_row_cached};
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    Approval, Attempt, Change, RequestRow, Status, StoreError, UserRow, WalletStore, decide,
};

/// Users and requests in one SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    db: SqliteDb,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl From<DbPoisoned> for StoreError {
    fn from(e: DbPoisoned) -> Self {
        backend(e)
    }
}

impl From<WriteFailed> for StoreError {
    fn from(e: WriteFailed) -> Self {
        backend(e)
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    user_id    TEXT PRIMARY KEY NOT NULL,
    kid        TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    sealed_key BLOB NOT NULL,
    registered INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS requests (
    id          TEXT PRIMARY KEY NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users(user_id),
    agent_id    TEXT NOT NULL,
    merchant_id TEXT NOT NULL,
    cart        TEXT NOT NULL,
    cart_hash   TEXT NOT NULL,
    max_amount  TEXT NOT NULL,
    currency    TEXT NOT NULL,
    ttl_secs    INTEGER NOT NULL,
    otp         TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    status      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    mandate     TEXT,
    mandate_exp INTEGER
) STRICT;
-- A user's requests: for the foreign key's checks (a user deleted), never changed once made.
-- A user's pending requests (the notifications, the cap on pending ones) have their own
-- small index, which a request leaves when it is approved or ends. Before, one index on
-- (user_id, status) held every request ever made, and each approval moved its entry in it.
DROP INDEX IF EXISTS requests_by_user;
CREATE INDEX IF NOT EXISTS requests_of_user ON requests(user_id);
CREATE INDEX IF NOT EXISTS requests_pending_by_user ON requests(user_id, created_at, id)
    WHERE status = 'pending_approval';
CREATE INDEX IF NOT EXISTS requests_pending_by_expiry ON requests(expires_at)
    WHERE status = 'pending_approval';
CREATE INDEX IF NOT EXISTS requests_ended_by_expiry ON requests(expires_at)
    WHERE status IN ('expired', 'denied', 'locked');
CREATE TABLE IF NOT EXISTS dpop_proofs (
    key   TEXT PRIMARY KEY NOT NULL,
    until INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS dpop_proofs_by_until ON dpop_proofs(until);
CREATE TABLE IF NOT EXISTS passkeys (
    cred_id    TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users(user_id),
    passkey    TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS passkeys_by_user ON passkeys(user_id, created_at);
CREATE TABLE IF NOT EXISTS evidence (
    request_id TEXT PRIMARY KEY NOT NULL REFERENCES requests(id),
    evidence   TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS retired_keys (
    kid        TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users(user_id),
    retired_at INTEGER NOT NULL,
    revoked    INTEGER NOT NULL
) STRICT;
";

/// A user's pending requests not yet expired at `?2` (the cap on pending requests), by
/// `requests_pending_by_user`.
const COUNT_PENDING: &str = "SELECT COUNT(*) FROM requests WHERE user_id = ?1 \
     AND status = 'pending_approval' AND expires_at > ?2";
/// A page of a user's pending requests (the notifications), after the cursor `(?3, ?4)`, by
/// `requests_pending_by_user`, in its order.
const PENDING_FOR_USER: &str = concat!(
    "SELECT ",
    request_columns!(),
    " FROM requests WHERE user_id = ?1 \
     AND status = 'pending_approval' AND expires_at > ?2 \
     AND (created_at, id) > (?3, ?4) ORDER BY created_at, id LIMIT ?5"
);

/// The sweep (`WalletStore::sweep_requests`): the oldest first, `?2` at a time, each by its
/// partial index. The database's one writer runs them, so nothing changes a row between the
/// choice and the write.
const EXPIRE_PENDING: &str = "UPDATE requests SET status = 'expired', otp = ''
     WHERE id IN (SELECT id FROM requests WHERE status = 'pending_approval' AND expires_at <= ?1
                  ORDER BY expires_at LIMIT ?2)";
/// See [`EXPIRE_PENDING`].
const DELETE_ENDED: &str = "DELETE FROM requests
     WHERE id IN (SELECT id FROM requests WHERE status IN ('expired', 'denied', 'locked')
                  AND expires_at <= ?1 ORDER BY expires_at LIMIT ?2)";

fn user_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        user_id: row.get(0)?,
        kid: row.get(1)?,
        token_hash: row.get(2)?,
        sealed_key: row.get(3)?,
        registered: row.get::<_, i64>(4)? != 0,
        created_at: row.get(5)?,
        key_revoked_at: row.get(6)?,
    })
}

fn request_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RequestRow> {
    let status: String = row.get(11)?;
    Ok(RequestRow {
        id: row.get(0)?,
        user_id: row.get(1)?,
        agent_id: row.get(2)?,
        merchant_id: row.get(3)?,
        cart: row.get(4)?,
        cart_hash: row.get(5)?,
        max_amount: row.get(6)?,
        currency: row.get(7)?,
        ttl_secs: row.get(8)?,
        otp: row.get(9)?,
        attempts: row.get(10)?,
        status: Status::parse(&status).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                11,
                rusqlite::types::Type::Text,
                format!("unknown status {status:?}").into(),
            )
        })?,
        created_at: row.get(12)?,
        expires_at: row.get(13)?,
        mandate: row.get(14)?,
        mandate_exp: row.get(15)?,
        cnf_jkt: row.get(16)?,
    })
}

fn select_request(conn: &Connection, id: &str) -> Result<Option<RequestRow>, StoreError> {
    query_row_cached(
        conn,
        concat!(
            "SELECT ",
            request_columns!(),
            " FROM requests WHERE id = ?1"
        ),
        params![id],
        request_row,
    )
    .optional()
    .map_err(backend)
}

/// Sets an ended status; the request's code goes with it.
fn set_status(conn: &Connection, id: &str, status: Status) -> Result<(), StoreError> {
    execute_cached(
        conn,
        "UPDATE requests SET status = ?2, otp = '' WHERE id = ?1",
        params![id, status.as_str()],
    )
    .map(|_| ())
    .map_err(backend)
}

impl SqliteStore {
    /// Opens (or creates) `wallet.db` in `data_dir`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let db = SqliteDb::open(&data_dir.join("wallet.db"), SCHEMA)?;
        // Databases made before SPEC §8 (agent binding).
        db.add_column("requests", "cnf_jkt", "TEXT")?;
        db.add_column("users", "key_revoked_at", "INTEGER")?;
        Ok(Self { db })
    }
}

#[async_trait::async_trait]
impl WalletStore for SqliteStore {
    async fn create_user(&self, user: UserRow) -> Result<(), StoreError> {
        self.db
            .write_async(move |conn| {
                let result = execute_cached(
                    conn,
                    concat!(
                        "INSERT INTO users (",
                        user_columns!(),
                        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)"
                    ),
                    params![
                        user.user_id,
                        user.kid,
                        user.token_hash,
                        user.sealed_key,
                        i64::from(user.registered),
                        user.created_at
                    ],
                );
                match result {
                    Ok(_) => Ok(()),
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        Err(StoreError::UserExists)
                    }
                    Err(e) => Err(backend(e)),
                }
            })
            .await
    }

    async fn mark_registered(&self, user_id: &str) -> Result<(), StoreError> {
        let user_id = user_id.to_owned();
        self.db
            .write_async(move |conn| {
                execute_cached(
                    conn,
                    "UPDATE users SET registered = 1 WHERE user_id = ?1",
                    params![user_id],
                )
                .map(|_| ())
                .map_err(backend)
            })
            .await
    }

    async fn rotate_key(
        &self,
        user_id: &str,
        new_kid: &str,
        new_sealed: &[u8],
        now: i64,
    ) -> Result<String, StoreError> {
        let user_id = user_id.to_owned();
        let new_kid = new_kid.to_owned();
        let new_sealed = new_sealed.to_owned();
        self.db
            .write_async(move |conn| {
                let old: String = query_row_cached(
                    conn,
                    "SELECT kid FROM users WHERE user_id = ?1",
                    params![user_id],
                    |row| row.get(0),
                )
                .optional()
                .map_err(backend)?
                .ok_or(StoreError::NotFound)?;
                execute_cached(
                    conn,
                "INSERT INTO retired_keys (kid, user_id, retired_at, revoked) VALUES (?1, ?2, ?3, 0)
                 ON CONFLICT (kid) DO NOTHING",
                params![old, user_id, now],
            )
            .map_err(backend)?;
                execute_cached(
                    conn,
                "UPDATE users SET kid = ?2, sealed_key = ?3, key_revoked_at = NULL, registered = 1
                 WHERE user_id = ?1",
                params![user_id, new_kid, new_sealed],
            )
            .map_err(backend)?;
                Ok(old)
            })
            .await
    }

    async fn retired_unrevoked(&self) -> Result<Vec<String>, StoreError> {
        self.db.with(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT kid FROM retired_keys WHERE revoked = 0 ORDER BY retired_at",
                )
                .map_err(backend)?;
            let rows = stmt.query_map([], |row| row.get(0)).map_err(backend)?;
            rows.map(|row| row.map_err(backend)).collect()
        })
    }

    async fn key_revoked(&self, kid: &str, now: i64) -> Result<Option<String>, StoreError> {
        let kid = kid.to_owned();
        self.db
            .write_async(move |conn| {
                execute_cached(
                    conn,
                    "UPDATE retired_keys SET revoked = 1 WHERE kid = ?1",
                    params![kid],
                )
                .map_err(backend)?;
                execute_cached(
                    conn,
                "UPDATE users SET key_revoked_at = ?2 WHERE kid = ?1 AND key_revoked_at IS NULL",
                params![kid, now],
            )
            .map_err(backend)?;
                let user = query_row_cached(
                    conn,
                    "SELECT user_id FROM users WHERE kid = ?1",
                    params![kid],
                    |row| row.get(0),
                )
                .optional()
                .map_err(backend)?;
                Ok(user)
            })
            .await
    }

    async fn delete_unregistered_user(&self, user_id: &str) -> Result<(), StoreError> {
        let user_id = user_id.to_owned();
        self.db
            .write_async(move |conn| {
                execute_cached(
                    conn,
                    "DELETE FROM users WHERE user_id = ?1 AND registered = 0",
                    params![user_id],
                )
                .map(|_| ())
                .map_err(backend)
            })
            .await
    }

    async fn unregistered_users(&self) -> Result<Vec<UserRow>, StoreError> {
        self.db.with(|conn| {
            let mut stmt = conn
                .prepare_cached(concat!(
                    "SELECT ",
                    user_columns!(),
                    " FROM users WHERE registered = 0"
                ))
                .map_err(backend)?;
            let rows = stmt.query_map([], user_row).map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)
        })
    }

    async fn user(&self, user_id: &str) -> Result<Option<UserRow>, StoreError> {
        self.db.with(|conn| {
            query_row_cached(
                conn,
                concat!("SELECT ", user_columns!(), " FROM users WHERE user_id = ?1"),
                params![user_id],
                user_row,
            )
            .optional()
            .map_err(backend)
        })
    }

    async fn user_by_token_hash(&self, token_hash: &str) -> Result<Option<String>, StoreError> {
        self.db.with(|conn| {
            query_row_cached(
                conn,
                "SELECT user_id FROM users WHERE token_hash = ?1",
                params![token_hash],
                |row| row.get(0),
            )
            .optional()
            .map_err(backend)
        })
    }

    async fn create_request(
        &self,
        r: RequestRow,
        proof: Option<(String, i64)>,
        max_pending: u32,
    ) -> Result<(), StoreError> {
        // The writer thread's transaction: the count sees the requests committed with it.
        self.db
            .write_async(move |conn| {
                let pending: i64 = query_row_cached(
                    conn,
                    COUNT_PENDING,
                    params![r.user_id, r.created_at],
                    |row| row.get(0),
                )
                .map_err(backend)?;
                if pending >= i64::from(max_pending) {
                    return Err(StoreError::TooManyPending);
                }
                if let Some((key, until)) = proof {
                    execute_cached(
                    conn,
                        "DELETE FROM dpop_proofs WHERE until <= ?1",
                        params![r.created_at],
                    )
                    .map_err(backend)?;
                    let inserted = execute_cached(
                    conn,
                    "INSERT INTO dpop_proofs (key, until) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    params![key, until],
                );
                    if inserted.map_err(backend)? == 0 {
                        return Err(StoreError::ProofReplayed);
                    }
                }
                conn.prepare_cached(concat!("INSERT INTO requests (", request_columns!(), ") VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"))
                .and_then(|mut insert| {
                    insert.execute(params![
                        r.id,
                        r.user_id,
                        r.agent_id,
                        r.merchant_id,
                        r.cart,
                        r.cart_hash,
                        r.max_amount,
                        r.currency,
                        r.ttl_secs,
                        r.otp,
                        r.attempts,
                        r.status.as_str(),
                        r.created_at,
                        r.expires_at,
                        r.mandate,
                        r.mandate_exp,
                        r.cnf_jkt
                    ])
                })
                .map(drop)
                .map_err(backend)
            })
            .await
    }

    async fn request(&self, id: &str) -> Result<Option<RequestRow>, StoreError> {
        self.db.with(|conn| select_request(conn, id))
    }

    async fn pending_for_user(
        &self,
        user_id: &str,
        now: i64,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<RequestRow>, StoreError> {
        let (after_time, after_id) = after.unwrap_or((i64::MIN, ""));
        self.db.with(|conn| {
            let mut stmt = conn.prepare_cached(PENDING_FOR_USER).map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![user_id, now, after_time, after_id, limit],
                    request_row,
                )
                .map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)
        })
    }

    async fn approve(&self, attempt: Attempt) -> Result<Approval, StoreError> {
        self.db
            .write_async(move |conn| {
                let request = select_request(conn, &attempt.id)?.ok_or(StoreError::NotFound)?;
                let id = request.id.clone();
                let (answer, change) = decide(request, attempt)?;
                match change {
                    Change::None => {}
                    Change::End(status) => set_status(conn, &id, status)?,
                    Change::Approve {
                        mandate,
                        exp,
                        evidence,
                    } => {
                        execute_cached(
                            conn,
                            "UPDATE requests SET status = 'approved', mandate = ?2, \
                             mandate_exp = ?3, otp = '' WHERE id = ?1",
                            params![id, mandate, exp],
                        )
                        .map_err(backend)?;
                        if let Some(evidence) = evidence {
                            execute_cached(
                                conn,
                                "INSERT INTO evidence (request_id, evidence) VALUES (?1, ?2)",
                                params![id, evidence],
                            )
                            .map_err(backend)?;
                        }
                    }
                    Change::WrongCode { attempts, locks } => {
                        execute_cached(
                            conn,
                            "UPDATE requests SET attempts = ?2 WHERE id = ?1",
                            params![id, attempts],
                        )
                        .map_err(backend)?;
                        if locks {
                            set_status(conn, &id, Status::Locked)?;
                        }
                    }
                }
                Ok(answer)
            })
            .await
    }

    async fn evidence(&self, request_id: &str) -> Result<Option<String>, StoreError> {
        self.db.with(|conn| {
            query_row_cached(
                conn,
                "SELECT evidence FROM evidence WHERE request_id = ?1",
                params![request_id],
                |row| row.get(0),
            )
            .optional()
            .map_err(backend)
        })
    }

    async fn add_passkey(
        &self,
        user_id: &str,
        cred_id: &str,
        passkey: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let user_id = user_id.to_owned();
        let cred_id = cred_id.to_owned();
        let passkey = passkey.to_owned();
        self.db.write_async(move |conn| {
            match execute_cached(
                    conn,
                "INSERT INTO passkeys (cred_id, user_id, passkey, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![cred_id, user_id, passkey, now],
            ) {
                Ok(_) => Ok(()),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(StoreError::CredentialExists)
                }
                Err(e) => Err(backend(e)),
            }
        })
        .await
    }

    async fn passkeys(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        self.db.with(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT passkey FROM passkeys WHERE user_id = ?1 ORDER BY created_at, cred_id",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![user_id], |row| row.get(0))
                .map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)
        })
    }

    async fn update_passkey(&self, cred_id: &str, passkey: &str) -> Result<(), StoreError> {
        let cred_id = cred_id.to_owned();
        let passkey = passkey.to_owned();
        self.db
            .write_async(move |conn| {
                execute_cached(
                    conn,
                    "UPDATE passkeys SET passkey = ?2 WHERE cred_id = ?1",
                    params![cred_id, passkey],
                )
                .map(|_| ())
                .map_err(backend)
            })
            .await
    }

    async fn deny(
        &self,
        id: &str,
        user_id: &str,
        now: i64,
    ) -> Result<Result<RequestRow, Status>, StoreError> {
        let id = id.to_owned();
        let user_id = user_id.to_owned();
        self.db
            .write_async(move |conn| {
                let mut request = select_request(conn, &id)?.ok_or(StoreError::NotFound)?;
                if request.user_id != user_id {
                    return Err(StoreError::NotYours);
                }
                let outcome = match request.status_at(now) {
                    Status::PendingApproval => {
                        set_status(conn, &id, Status::Denied)?;
                        request.status = Status::Denied;
                        Ok(request)
                    }
                    other => Err(other),
                };
                Ok(outcome)
            })
            .await
    }

    async fn sweep_requests(
        &self,
        now: i64,
        delete_before: i64,
        limit: u32,
    ) -> Result<(usize, usize), StoreError> {
        self.db
            .write_async(move |conn| {
                let ended =
                    execute_cached(conn, EXPIRE_PENDING, params![now, limit]).map_err(backend)?;
                let deleted = execute_cached(conn, DELETE_ENDED, params![delete_before, limit])
                    .map_err(backend)?;
                Ok((ended, deleted))
            })
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .with(|conn| query_row_cached(conn, "SELECT 1", [], |_| Ok(())).map_err(backend))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn plan(store: &SqliteStore, sql: &str, args: usize) -> String {
        ap2_testkit::sqlite::plan(&store.db, sql, args)
    }

    #[test]
    fn a_users_pending_requests_are_read_by_their_own_index_and_a_user_by_the_plain_one() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(tmp.path()).unwrap();
        for (sql, args) in [(COUNT_PENDING, 2), (PENDING_FOR_USER, 5)] {
            let plan = plan(&store, sql, args);
            assert!(
                plan.contains("USING INDEX requests_pending_by_user"),
                "{sql}: {plan}"
            );
            // In the index's order: no sort step.
            assert!(!plan.contains("TEMP B-TREE"), "{sql}: {plan}");
        }
        // The shape of the foreign key's check when a user is deleted.
        let plan = plan(&store, "SELECT 1 FROM requests WHERE user_id = ?1", 1);
        assert!(
            plan.contains("USING COVERING INDEX requests_of_user"),
            "{plan}"
        );
    }

    #[test]
    fn a_database_from_before_loses_the_index_of_every_request_by_status() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(tmp.path()).unwrap();
        ap2_testkit::sqlite::execute(
            &store.db,
            "DROP INDEX requests_of_user; DROP INDEX requests_pending_by_user;
                 CREATE INDEX requests_by_user ON requests(user_id, status);",
        );
        drop(store);
        let store = SqliteStore::open(tmp.path()).unwrap();
        assert_eq!(
            ap2_testkit::sqlite::indexes(&store.db, "requests"),
            [
                "requests_ended_by_expiry",
                "requests_of_user",
                "requests_pending_by_expiry",
                "requests_pending_by_user"
            ]
        );
    }
}
