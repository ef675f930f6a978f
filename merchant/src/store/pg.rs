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

macro_rules! session_columns {
    () => {
        "id, cart, cart_hash, status, created_at, order_id, owner_jkt"
    };
}
macro_rules! order_columns {
    () => {
        "id, session_id, amount, currency, mandate, claims, iss, jti, sub, kid, agent_id, \
         charge_id, created_at, agent_jkt"
    };
}

const INSERT_SESSION: &str = concat!(
    "INSERT INTO sessions (",
    session_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
);
const SELECT_SESSION: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM sessions WHERE id = $1"
);
/// One statement, so one round trip and one commit: the session's row is locked (of two
/// completions racing at two instances, the second waits, then sees `charging`), the order is
/// inserted only if the session was ready (the unique `(iss, jti)` refuses a spent mandate),
/// and the session is marked `charging`. The row answered is the session's status before.
const BEGIN_ORDER: &str = concat!(
    "WITH s AS (SELECT status FROM sessions WHERE id = $2 FOR UPDATE),
     o AS (INSERT INTO orders (",
    order_columns!(),
    ") SELECT $1::text, $2::text, $3::bigint, $4::text, $5::text, $6::text, $7::text,
                 $8::text, $9::text, $10::text, $11::text, NULL, $12::bigint, $13::text
          FROM s WHERE s.status = 'ready_for_complete' RETURNING session_id),
     u AS (UPDATE sessions SET status = 'charging', order_id = $1
           WHERE id IN (SELECT session_id FROM o))
     SELECT status FROM s"
);
/// The charge recorded and the session completed, in one statement.
const FINISH_ORDER: &str =
    "WITH o AS (UPDATE orders SET charge_id = $2 WHERE id = $1 RETURNING session_id)
     UPDATE sessions SET status = 'completed' WHERE id IN (SELECT session_id FROM o)";
/// The order removed and its session reopened, in one statement.
const ABORT_ORDER: &str = "WITH o AS (DELETE FROM orders WHERE id = $1 RETURNING session_id)
     UPDATE sessions SET status = 'ready_for_complete', order_id = NULL
     WHERE id IN (SELECT session_id FROM o)";
const SELECT_ORDER: &str = concat!("SELECT ", order_columns!(), " FROM orders WHERE id = $1");

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
        let insert = conn.prepared(INSERT_SESSION).map_err(backend)?;
        let params: [&(dyn postgres::types::ToSql + Sync); 7] = [
            &s.id,
            &s.cart,
            &s.cart_hash,
            &s.status.as_str(),
            &s.created_at,
            &s.order_id,
            &s.owner_jkt,
        ];
        let (Some(owner), Some((max, opened_after))) = (&s.owner_jkt, cap) else {
            // Nothing to count: one statement, its own transaction.
            conn.execute(&insert, &params).map_err(backend)?;
            return Ok(());
        };
        let mut tx = conn.transaction().map_err(backend)?;
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
        tx.execute(&insert, &params).map_err(backend)?;
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
        let select = conn.prepared(SELECT_SESSION).map_err(backend)?;
        conn.query_opt(&select, &[&id])
            .map_err(backend)?
            .as_ref()
            .map(session_row)
            .transpose()
    }

    fn begin_order(&self, o: &OrderRow) -> Result<(), StoreError> {
        let mut conn = self.db.get().map_err(StoreError::Backend)?;
        let begin = conn.prepared(BEGIN_ORDER).map_err(backend)?;
        let before = conn.query_opt(
            &begin,
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
        let status: Option<String> = match before {
            Ok(row) => row.map(|row| row.get(0)),
            Err(e) if is_unique_violation(&e) => return Err(StoreError::MandateUsed),
            Err(e) => return Err(backend(e)),
        };
        match status.as_deref().and_then(SessionStatus::parse) {
            None => Err(StoreError::NotFound),
            Some(SessionStatus::ReadyForComplete) => Ok(()),
            Some(other) => Err(StoreError::NotReady(other)),
        }
    }

    fn finish_order(&self, order_id: &str, charge_id: &str) -> Result<(), StoreError> {
        let mut conn = self.db.get().map_err(StoreError::Backend)?;
        let finish = conn.prepared(FINISH_ORDER).map_err(backend)?;
        conn.execute(&finish, &[&order_id, &charge_id])
            .map_err(backend)?;
        Ok(())
    }

    fn abort_order(&self, order_id: &str) -> Result<(), StoreError> {
        let mut conn = self.db.get().map_err(StoreError::Backend)?;
        let abort = conn.prepared(ABORT_ORDER).map_err(backend)?;
        conn.execute(&abort, &[&order_id]).map_err(backend)?;
        Ok(())
    }

    fn order(&self, id: &str) -> Result<Option<OrderRow>, StoreError> {
        let mut conn = self.db.get().map_err(StoreError::Backend)?;
        let select = conn.prepared(SELECT_ORDER).map_err(backend)?;
        conn.query_opt(&select, &[&id])
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
                order_columns!()
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
