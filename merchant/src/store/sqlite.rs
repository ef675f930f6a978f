//! The merchant's SQLite database (WAL, synchronous commits).

use std::path::Path;

use ap2_service::{DbPoisoned, SqliteDb, WriteFailed, execute_cached, query_row_cached};
use rusqlite::{OptionalExtension, params};

use super::{MerchantStore, OrderRow, SessionRow, SessionStatus, StoreError};

/// Sessions and orders in one SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    db: std::sync::Arc<SqliteDb>,
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
CREATE TABLE IF NOT EXISTS sessions (
    id         TEXT PRIMARY KEY NOT NULL,
    cart       TEXT NOT NULL,
    cart_hash  TEXT NOT NULL,
    status     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    order_id   TEXT,
    owner_jkt  TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS orders (
    id         TEXT PRIMARY KEY NOT NULL,
    session_id TEXT NOT NULL UNIQUE REFERENCES sessions(id),
    amount     INTEGER NOT NULL,
    currency   TEXT NOT NULL,
    mandate    TEXT NOT NULL,
    claims     TEXT NOT NULL,
    iss        TEXT NOT NULL,
    jti        TEXT NOT NULL,
    sub        TEXT NOT NULL,
    kid        TEXT NOT NULL,
    agent_id   TEXT NOT NULL,
    charge_id  TEXT,
    created_at INTEGER NOT NULL,
    agent_jkt  TEXT,
    UNIQUE (iss, jti)
) STRICT;
";

/// The sessions' indexes by status, each a partial index holding one status: counting an
/// owner's open sessions (SPEC §9), sweeping the expired ones, and finding the orders a crash
/// left charging. A session's status changes twice per completion; the indexes from before had
/// `status` in their keys, so each change moved its entry in both (eight index writes per
/// completion, and every completed session kept two entries for ever). Now opening a session
/// adds to the two open indexes, beginning its order moves it to the charging one, and paying
/// removes it from that (docs/PROTOCOL.md). The indexes from before are dropped on open.
const INDEXES: &str = "
DROP INDEX IF EXISTS sessions_by_status_created;
DROP INDEX IF EXISTS sessions_open_by_owner;
CREATE INDEX IF NOT EXISTS sessions_open_by_owner_created ON sessions(owner_jkt, created_at)
    WHERE status = 'ready_for_complete';
CREATE INDEX IF NOT EXISTS sessions_open_by_created ON sessions(created_at)
    WHERE status = 'ready_for_complete';
CREATE INDEX IF NOT EXISTS sessions_charging ON sessions(created_at) WHERE status = 'charging';
";
/// An owner's open sessions opened after `?2`, by `sessions_open_by_owner_created`.
const COUNT_OPEN: &str = "SELECT COUNT(*) FROM sessions WHERE owner_jkt = ?1 \
     AND status = 'ready_for_complete' AND created_at > ?2";
/// The open sessions opened at or before `?1` (expired), by `sessions_open_by_created`.
const DELETE_EXPIRED: &str =
    "DELETE FROM sessions WHERE status = 'ready_for_complete' AND created_at <= ?1";
/// The orders begun before `?1` whose session is still charging, by `sessions_charging` and
/// the orders' unique index on `session_id`.
const STUCK_ORDERS: &str = concat!(
    "SELECT ",
    order_columns!(),
    " FROM orders WHERE charge_id IS NULL AND created_at < ?1 \
      AND session_id IN (SELECT id FROM sessions WHERE status = 'charging')"
);

fn session_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRow> {
    let status: String = row.get(3)?;
    Ok(SessionRow {
        id: row.get(0)?,
        cart: row.get(1)?,
        cart_hash: row.get(2)?,
        status: SessionStatus::parse(&status).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                3,
                rusqlite::types::Type::Text,
                format!("unknown status {status:?}").into(),
            )
        })?,
        created_at: row.get(4)?,
        order_id: row.get(5)?,
        owner_jkt: row.get(6)?,
    })
}

fn order_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<OrderRow> {
    Ok(OrderRow {
        id: row.get(0)?,
        session_id: row.get(1)?,
        amount: row.get(2)?,
        currency: row.get(3)?,
        mandate: row.get(4)?,
        claims: row.get(5)?,
        iss: row.get(6)?,
        jti: row.get(7)?,
        sub: row.get(8)?,
        kid: row.get(9)?,
        agent_id: row.get(10)?,
        charge_id: row.get(11)?,
        created_at: row.get(12)?,
        agent_jkt: row.get(13)?,
    })
}

impl SqliteStore {
    /// Opens (or creates) `merchant.db` in `data_dir`. Orders a crash left charging are rolled
    /// forward by the merchant's sweep ([`MerchantStore::stuck_orders`]).
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let db = SqliteDb::open(&data_dir.join("merchant.db"), SCHEMA)?;
        // Databases made before SPEC §8 (agent binding).
        db.add_column("sessions", "owner_jkt", "TEXT")?;
        db.add_column("orders", "agent_jkt", "TEXT")?;
        db.with(|conn| conn.execute_batch(INDEXES).map_err(anyhow::Error::from))?;
        Ok(Self {
            db: std::sync::Arc::new(db),
        })
    }
}

/// Writes go to the group-committing writer thread and the task waits for its group's commit;
/// reads by primary key run on the caller's task (a page-cache lookup, microseconds); the
/// sweep's scan runs on a blocking thread.
#[async_trait::async_trait]
impl MerchantStore for SqliteStore {
    async fn create_session(
        &self,
        s: &SessionRow,
        cap: Option<(u32, i64)>,
    ) -> Result<(), StoreError> {
        let s = s.clone();
        // Group-committed: the count and the insert are one savepoint of the writer's
        // transaction, and writes are serialised there, so the cap holds.
        self.db
            .write_async(move |conn| {
                if let (Some(owner), Some((max, opened_after))) = (&s.owner_jkt, cap) {
                    let open: i64 =
                        query_row_cached(conn, COUNT_OPEN, params![owner, opened_after], |r| {
                            r.get(0)
                        })
                        .map_err(backend)?;
                    if open >= i64::from(max) {
                        return Err(StoreError::TooManySessions);
                    }
                }
                conn.prepare_cached(concat!(
                    "INSERT INTO sessions (",
                    session_columns!(),
                    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                ))
                .and_then(|mut insert| {
                    insert.execute(params![
                        s.id,
                        s.cart,
                        s.cart_hash,
                        s.status.as_str(),
                        s.created_at,
                        s.order_id,
                        s.owner_jkt
                    ])
                })
                .map(|_| ())
                .map_err(backend)
            })
            .await
    }

    async fn delete_expired_sessions(&self, opened_before: i64) -> Result<usize, StoreError> {
        // A write: the writer thread's, in its group, so it never contends for the lock.
        self.db
            .write_async(move |conn| {
                execute_cached(conn, DELETE_EXPIRED, params![opened_before]).map_err(backend)
            })
            .await
    }

    async fn session(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        self.db.with(|conn| {
            query_row_cached(
                conn,
                concat!(
                    "SELECT ",
                    session_columns!(),
                    " FROM sessions WHERE id = ?1"
                ),
                params![id],
                session_row,
            )
            .optional()
            .map_err(backend)
        })
    }

    async fn begin_order(&self, o: &OrderRow) -> Result<(), StoreError> {
        let o = o.clone();
        self.db
            .write_async(move |conn| {
                let status: Option<String> = conn
                    .prepare_cached("SELECT status FROM sessions WHERE id = ?1")
                    .and_then(|mut stmt| {
                        stmt.query_row(params![o.session_id], |r| r.get(0))
                            .optional()
                    })
                    .map_err(backend)?;
                match status.as_deref().and_then(SessionStatus::parse) {
                    None => return Err(StoreError::NotFound),
                    Some(SessionStatus::ReadyForComplete) => {}
                    Some(other) => return Err(StoreError::NotReady(other)),
                }
                let inserted = conn
                    .prepare_cached(concat!(
                        "INSERT INTO orders (",
                        order_columns!(),
                        ") VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, NULL, ?12, ?13)"
                    ))
                    .and_then(|mut insert| {
                        insert.execute(params![
                            o.id,
                            o.session_id,
                            o.amount,
                            o.currency,
                            o.mandate,
                            o.claims,
                            o.iss,
                            o.jti,
                            o.sub,
                            o.kid,
                            o.agent_id,
                            o.created_at,
                            o.agent_jkt
                        ])
                    });
                match inserted {
                    Ok(_) => {}
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        return Err(StoreError::MandateUsed);
                    }
                    Err(e) => return Err(backend(e)),
                }
                conn.prepare_cached(
                    "UPDATE sessions SET status = 'charging', order_id = ?2 WHERE id = ?1",
                )
                .and_then(|mut update| update.execute(params![o.session_id, o.id]))
                .map(|_| ())
                .map_err(backend)
            })
            .await
    }

    async fn finish_order(
        &self,
        session_id: &str,
        order_id: &str,
        charge_id: &str,
    ) -> Result<(), StoreError> {
        let (session_id, order_id, charge_id) = (
            session_id.to_owned(),
            order_id.to_owned(),
            charge_id.to_owned(),
        );
        self.db
            .write_async(move |conn| {
                let held = conn
                    .prepare_cached(
                        "UPDATE sessions SET status = 'completed' WHERE id = ?1 AND order_id = ?2",
                    )
                    .and_then(|mut update| update.execute(params![session_id, order_id]))
                    .map_err(backend)?;
                if held == 0 {
                    return Err(StoreError::OrderNotHeld);
                }
                conn.prepare_cached("UPDATE orders SET charge_id = ?2 WHERE id = ?1")
                    .and_then(|mut update| update.execute(params![order_id, charge_id]))
                    .map(|_| ())
                    .map_err(backend)
            })
            .await
    }

    async fn abort_order(&self, order_id: &str) -> Result<(), StoreError> {
        let order_id = order_id.to_owned();
        self.db
            .write_async(move |conn| {
                execute_cached(
                    conn,
                    "UPDATE sessions SET status = 'ready_for_complete', order_id = NULL \
                 WHERE id = (SELECT session_id FROM orders WHERE id = ?1)",
                    params![order_id],
                )
                .map_err(backend)?;
                execute_cached(conn, "DELETE FROM orders WHERE id = ?1", params![order_id])
                    .map(|_| ())
                    .map_err(backend)
            })
            .await
    }

    async fn order(&self, id: &str) -> Result<Option<OrderRow>, StoreError> {
        self.db.with(|conn| {
            query_row_cached(
                conn,
                concat!("SELECT ", order_columns!(), " FROM orders WHERE id = ?1"),
                params![id],
                order_row,
            )
            .optional()
            .map_err(backend)
        })
    }

    async fn stuck_orders(&self, begun_before: i64) -> Result<Vec<OrderRow>, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            db.with(|conn| {
                let mut stmt = conn.prepare(STUCK_ORDERS).map_err(backend)?;
                let rows = stmt
                    .query_map(params![begun_before], order_row)
                    .map_err(backend)?;
                rows.collect::<Result<_, _>>().map_err(backend)
            })
        })
        .await
        .map_err(backend)?
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

    #[test]
    fn spec9_the_sessions_are_counted_swept_and_recovered_by_their_status_indexes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(tmp.path()).unwrap();
        for (sql, args, index) in [
            (COUNT_OPEN, 2, "sessions_open_by_owner_created"),
            (DELETE_EXPIRED, 1, "sessions_open_by_created"),
            (STUCK_ORDERS, 1, "sessions_charging"),
        ] {
            let plan = ap2_testkit::sqlite::plan(&store.db, sql, args);
            assert!(plan.split_whitespace().any(|w| w == index), "{sql}: {plan}");
            // No statement reads a whole table (a scan of a partial index reads its status).
            let whole = |l: &str| l.starts_with("SCAN ") && !l.contains(" USING ");
            assert!(!plan.lines().any(whole), "{sql}: {plan}");
        }
    }

    #[test]
    fn a_database_from_before_loses_the_indexes_with_status_in_their_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(tmp.path()).unwrap();
        ap2_testkit::sqlite::execute(
            &store.db,
            "DROP INDEX sessions_open_by_owner_created; DROP INDEX sessions_open_by_created;
                 DROP INDEX sessions_charging;
                 CREATE INDEX sessions_open_by_owner ON sessions(owner_jkt, status, created_at);
                 CREATE INDEX sessions_by_status_created ON sessions(status, created_at);",
        );
        drop(store);
        let store = SqliteStore::open(tmp.path()).unwrap();
        assert_eq!(
            ap2_testkit::sqlite::indexes(&store.db, "sessions"),
            [
                "sessions_charging",
                "sessions_open_by_created",
                "sessions_open_by_owner_created"
            ]
        );
    }
}
