//! The merchant on PostgreSQL (SPEC §11): every instance shares the sessions and orders, so a
//! checkout opened at one completes at any other. The same rules as the SQLite store, made
//! safe across processes with row locks (a completion locks its session) and advisory locks
//! (an owner's session count).

use ap2_service::batch::Batcher;
use ap2_service::pg::{PgPool, is_unique_violation};

use super::{MerchantStore, OrderRow, SessionRow, SessionStatus, StoreError};

/// The versioned schema: migration `i` is version `i + 1`; never edit one that shipped.
const MIGRATIONS: &[&str] = &[
    "
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
",
    "
-- The status-bearing indexes become partial ones, each holding one status only: a session's
-- status changes twice per completion, and an index keyed on it took a new entry at both
-- changes (three indexes, six entries). A partial index takes an entry only from a row that
-- enters it: opening a session adds to the two open indexes, and the first change to the
-- charging one.
DROP INDEX sessions_open_by_owner;
DROP INDEX sessions_by_status_created;
CREATE INDEX sessions_open_by_owner ON sessions (owner_jkt, created_at)
    WHERE status = 'ready_for_complete';
CREATE INDEX sessions_open_by_created ON sessions (created_at)
    WHERE status = 'ready_for_complete';
CREATE INDEX sessions_charging ON sessions (created_at) WHERE status = 'charging';
-- A paid order's charge id is kept on its session, set by the update that completes the
-- session: an order's row is then written once, at its insert. An order paid before this
-- migration keeps its charge id in orders.charge_id.
ALTER TABLE sessions ADD COLUMN charge_id TEXT;
",
    "
-- An order's session is found, locked and checked ready by the statement that inserts the
-- order, and only an open session (which has no order) is ever deleted: the foreign key could
-- not fail, and its check locked the session a second time for every order inserted.
ALTER TABLE orders DROP CONSTRAINT orders_session_id_fkey;
-- Ids, issuers, jtis and thumbprints are ASCII keys, compared byte by byte: the database's
-- collation (a locale's, on most servers) made every comparison in their indexes a call into
-- the C library's locale code.
ALTER TABLE sessions ALTER COLUMN id TYPE TEXT COLLATE \"C\",
    ALTER COLUMN order_id TYPE TEXT COLLATE \"C\", ALTER COLUMN owner_jkt TYPE TEXT COLLATE \"C\";
ALTER TABLE orders ALTER COLUMN id TYPE TEXT COLLATE \"C\",
    ALTER COLUMN session_id TYPE TEXT COLLATE \"C\", ALTER COLUMN iss TYPE TEXT COLLATE \"C\",
    ALTER COLUMN jti TYPE TEXT COLLATE \"C\";
",
    "
-- A session's row is written three times: inserted, then updated when its order begins and
-- when it is paid. Pages filled only to 70 % keep room for both new versions next to the old
-- one, so an update writes one page instead of two.
ALTER TABLE sessions SET (fillfactor = 70);
",
];

/// The charge recorded on the order's session (`$1`, while `$2` is its order) and the session
/// completed, in one statement.
const FINISH_ORDER: &str = "UPDATE sessions SET status = 'completed', charge_id = $3
     WHERE id = $1 AND order_id = $2";
/// The order removed and its session reopened, in one statement.
const ABORT_ORDER: &str = "WITH o AS (DELETE FROM orders WHERE id = $1 RETURNING session_id)
     UPDATE sessions SET status = 'ready_for_complete', order_id = NULL
     WHERE id IN (SELECT session_id FROM o)";
/// An order's columns, in `order_columns!()`'s order, with the charge id from its session
/// (`o` the order, `s` its session; an order paid before migration 2 has it on the order).
macro_rules! paid_order_columns {
    () => {
        "o.id, o.session_id, o.amount, o.currency, o.mandate, o.claims, o.iss, o.jti, o.sub, \
         o.kid, o.agent_id, COALESCE(s.charge_id, o.charge_id), o.created_at, o.agent_jkt"
    };
}
const SELECT_ORDER: &str = concat!(
    "SELECT ",
    paid_order_columns!(),
    " FROM orders o JOIN sessions s ON s.id = o.session_id WHERE o.id = $1"
);
/// Many orders begun in one statement and one commit (group commit). The ready sessions are
/// moved to `charging` by the statement's update, which locks each row as it changes it (in
/// the order of the input, which the caller sorts by session id, so two batches at two
/// instances lock their common sessions in one order); a session changed by another
/// transaction meanwhile is checked again once that one commits, so of two racing batches one
/// takes it. Each taken session's order is then inserted (in `(iss, jti)` order, so two batches
/// wait for each other's unique keys in one direction only). One row per input, in input
/// order: the session's status as the statement began (NULL: no such session) and whether
/// this order was inserted; a session that was ready and yet not taken went to another
/// completion, of this batch or another. A unique key already used (a spent mandate, which the
/// replay set refuses first) fails the statement, and its orders are then begun one at a time:
/// a plain insert searches each unique index once, where skipping conflicts (`ON CONFLICT DO
/// NOTHING`) searches each twice: measured, 81 µs of the server's time per order against 89.
/// Taking the lock with the update, rather than with a `FOR UPDATE` read before it, writes each
/// session's row once instead of twice (docs/PROTOCOL.md).
const BEGIN_ORDERS: &str = concat!(
    "WITH i AS (SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[],
                  $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                  $11::text[], $12::bigint[], $13::text[]) WITH ORDINALITY
                AS t(id, session_id, amount, currency, mandate, claims, iss, jti, sub, kid,
                     agent_id, created_at, agent_jkt, n)),
     u AS (UPDATE sessions SET status = 'charging', order_id = i.id FROM i
           WHERE sessions.id = i.session_id AND sessions.status = 'ready_for_complete'
           RETURNING i.id),
     o AS (INSERT INTO orders (",
    order_columns!(),
    ") SELECT i.id, i.session_id, i.amount, i.currency, i.mandate, i.claims, i.iss, i.jti,
                 i.sub, i.kid, i.agent_id, NULL, i.created_at, i.agent_jkt
          FROM i JOIN u ON u.id = i.id
          ORDER BY i.iss, i.jti
          RETURNING id)
     SELECT s.status, o.id IS NOT NULL
     FROM i LEFT JOIN sessions s ON s.id = i.session_id LEFT JOIN o ON o.id = i.id
     ORDER BY i.n"
);
/// Many charges recorded in one statement: each session whose order it still is completed with
/// its charge id, the rows locked as they change, in the input's order (the caller sorts it by
/// session id, as `BEGIN_ORDERS` does). The orders recorded are answered; one missing no
/// longer holds its session.
const FINISH_ORDERS: &str = "UPDATE sessions SET status = 'completed', charge_id = i.charge_id
     FROM unnest($1::text[], $2::text[], $3::text[]) AS i(session_id, order_id, charge_id)
     WHERE sessions.id = i.session_id AND sessions.order_id = i.order_id
     RETURNING i.order_id";

/// The open sessions opened at or before `$1` (expired) deleted.
const DELETE_EXPIRED: &str =
    "DELETE FROM sessions WHERE status = 'ready_for_complete' AND created_at <= $1";
/// The orders begun before `$1` whose session is still charging.
const STUCK_ORDERS: &str = concat!(
    "SELECT ",
    paid_order_columns!(),
    " FROM sessions s JOIN orders o ON o.session_id = s.id
      WHERE s.status = 'charging' AND o.created_at < $1"
);

/// Many sessions inserted in one statement.
const INSERT_SESSIONS: &str = concat!(
    "INSERT INTO sessions (",
    session_columns!(),
    ") SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                            $6::text[], $7::text[])"
);
/// The owners' advisory locks, taken in one order (two batches at two instances cannot
/// deadlock on them): an owner's sessions are counted one batch at a time, across instances.
const LOCK_OWNERS: &str = "SELECT pg_advisory_xact_lock(h)
     FROM (SELECT DISTINCT hashtext(o) AS h FROM unnest($1::text[]) AS o ORDER BY h) AS t";
/// Each owner's open sessions created after its cutoff.
const COUNT_OPEN: &str = "SELECT i.owner, COUNT(s.id)
     FROM unnest($1::text[], $2::bigint[]) AS i(owner, cutoff)
     LEFT JOIN sessions s ON s.owner_jkt = i.owner AND s.status = 'ready_for_complete'
                         AND s.created_at > i.cutoff
     GROUP BY i.owner";

/// Many sessions read in one statement.
const SELECT_SESSIONS: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM sessions WHERE id = ANY($1)"
);

/// A charge to record (`finish_order`'s arguments).
#[derive(Debug)]
struct Charged {
    session_id: String,
    order_id: String,
    charge_id: String,
}

/// A session to add, with its owner's cap (`create_session`'s arguments).
type NewSession = (SessionRow, Option<(u32, i64)>);

/// Most orders (or sessions added or read) in one statement.
const BATCH_MAX: usize = 128;
/// Batches of one kind in flight at once, each on its own connection. One: what arrives while
/// a batch commits waits for the next, so under load batches grow and commits (each a WAL
/// flush) stay few; with four, measured, batches stayed at a median of one order and the
/// commits queued on the WAL instead (docs/PROTOCOL.md).
const BATCH_WRITERS: usize = 1;
/// Orders waiting for a batch, at most; a completion past that waits for room.
const BATCH_QUEUE: usize = 4096;

/// Sessions and orders in PostgreSQL, schema `merchant`. Beginning and finishing orders, the
/// two writes of every completion, are group-committed: what arrives while a batch is being
/// written goes in the next one, one statement and one commit for many completions.
#[derive(Debug, Clone)]
pub struct PgStore {
    db: PgPool,
    creates: Batcher<NewSession, Result<(), StoreError>>,
    sessions: Batcher<String, Result<Option<SessionRow>, StoreError>>,
    begins: Batcher<OrderRow, Result<(), StoreError>>,
    finishes: Batcher<Charged, Result<(), StoreError>>,
}

/// A failure as the store reports it, with the server's own message (`describe`).
fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::Backend(ap2_service::describe(&*e.into()))
}

fn session_row(row: &tokio_postgres::Row) -> Result<SessionRow, StoreError> {
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

fn order_row(row: &tokio_postgres::Row) -> Result<OrderRow, StoreError> {
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

type Params<'a> = [&'a (dyn tokio_postgres::types::ToSql + Sync)];

/// The server refused the batch (a deadlock, a serialisation failure): its orders can be
/// tried one at a time on the same connection. Any other error is the connection's.
fn retry_alone(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some()
}

impl PgStore {
    /// Migrates the `merchant` schema and opens a pool of at most `max_connections`. Must be
    /// called within a Tokio runtime: the batch writers are its tasks.
    pub async fn open(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let db = PgPool::open(url, "merchant", MIGRATIONS, max_connections).await?;
        let creates = batcher("create_sessions", &db, create_sessions);
        let sessions = batcher("sessions", &db, select_sessions);
        let begins = batcher("begin_orders", &db, begin_orders);
        let finishes = batcher("finish_orders", &db, finish_orders);
        Ok(Self {
            db,
            creates,
            sessions,
            begins,
            finishes,
        })
    }

    async fn conn(&self) -> Result<ap2_service::pg::PgAsyncConnection, StoreError> {
        self.db.get().await.map_err(StoreError::Backend)
    }
}

/// A batcher that gives what is queued to `write`, with the store's limits.
fn batcher<I, O, Fut>(
    name: &'static str,
    db: &PgPool,
    write: fn(PgPool, Vec<I>) -> Fut,
) -> Batcher<I, O>
where
    I: Send + 'static,
    O: Send + 'static,
    Fut: std::future::Future<Output = Vec<O>> + Send + 'static,
{
    let db = db.clone();
    let runtime = db.runtime().clone();
    Batcher::spawn_on(
        &runtime,
        name,
        BATCH_WRITERS,
        BATCH_MAX,
        BATCH_QUEUE,
        move |items| write(db.clone(), items),
    )
}

/// The same failure for each of a batch's `n` items.
fn all_failed<T>(
    why: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    n: usize,
) -> Vec<Result<T, StoreError>> {
    let why = ap2_service::describe(&*why.into());
    (0..n)
        .map(|_| Err(StoreError::Backend(why.clone())))
        .collect()
}

/// `item`'s answer from its batch; a batcher that is gone is a store failure.
async fn batched<I: Send + 'static, T: Send + 'static>(
    batcher: &Batcher<I, Result<T, StoreError>>,
    item: I,
) -> Result<T, StoreError> {
    batcher
        .submit(item)
        .await
        .unwrap_or_else(|gone| Err(backend(gone)))
}

/// Many sessions added in one transaction and one commit (group commit). The capped ones'
/// owners are locked and their open sessions counted first; then, in arrival order, a capped
/// session whose owner is at its cap is refused and the others are inserted together.
async fn create_sessions(db: PgPool, items: Vec<NewSession>) -> Vec<Result<(), StoreError>> {
    let n = items.len();
    let mut conn = match db.get().await {
        Ok(conn) => conn,
        Err(why) => return all_failed(why, n),
    };
    match create_sessions_together(&mut conn, &items).await {
        Ok(outcomes) => outcomes,
        // The batch as a whole failed (a deadlock, an id drawn twice): each session again,
        // alone, so one cannot fail the others.
        Err(e) if retry_alone(&e) => {
            tracing::warn!(error = %ap2_service::describe(&e), sessions = n, "session batch failed; adding each alone");
            let mut out = Vec::with_capacity(n);
            for item in &items {
                let alone = create_sessions_together(&mut conn, std::slice::from_ref(item)).await;
                out.push(match alone {
                    Ok(mut outcome) => outcome.pop().unwrap_or_else(|| Err(backend("no outcome"))),
                    Err(e) => Err(backend(e)),
                });
            }
            out
        }
        Err(e) => all_failed(e, n),
    }
}

/// An owner's cap in a batch: the capped owners, each with the earliest cutoff any of its
/// sessions in the batch asked for (so the count is never less than one of them would see).
fn capped_owners(items: &[NewSession]) -> Vec<(&str, i64)> {
    let mut owners: Vec<(&str, i64)> = Vec::new();
    for (session, cap) in items {
        if let (Some(owner), Some((_, cutoff))) = (&session.owner_jkt, cap) {
            match owners.iter_mut().find(|(o, _)| o == owner) {
                Some((_, earliest)) => *earliest = (*earliest).min(*cutoff),
                None => owners.push((owner, *cutoff)),
            }
        }
    }
    owners
}

async fn create_sessions_together(
    conn: &mut ap2_service::pg::PgAsyncConnection,
    items: &[NewSession],
) -> Result<Vec<Result<(), StoreError>>, tokio_postgres::Error> {
    let owners = capped_owners(items);
    let tx = conn.transaction().await?;
    let mut open: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    if !owners.is_empty() {
        let names: Vec<&str> = owners.iter().map(|(o, _)| *o).collect();
        let cutoffs: Vec<i64> = owners.iter().map(|(_, c)| *c).collect();
        let lock = tx.prepare_cached(LOCK_OWNERS).await?;
        tx.execute(&lock, &[&names]).await?;
        let count = tx.prepare_cached(COUNT_OPEN).await?;
        for row in tx.query(&count, &[&names, &cutoffs]).await? {
            open.insert(row.try_get(0)?, row.try_get(1)?);
        }
    }
    let mut outcomes = Vec::with_capacity(items.len());
    let mut insert: Vec<&SessionRow> = Vec::with_capacity(items.len());
    for (session, cap) in items {
        let counted = session.owner_jkt.as_ref().zip(*cap);
        if let Some((owner, (max, _))) = counted {
            let count = open.entry(owner.clone()).or_insert(0);
            if *count >= i64::from(max) {
                outcomes.push(Err(StoreError::TooManySessions));
                continue;
            }
            *count += 1;
        }
        outcomes.push(Ok(()));
        insert.push(session);
    }
    if !insert.is_empty() {
        let col = |f: fn(&SessionRow) -> &str| insert.iter().map(|s| f(s)).collect::<Vec<&str>>();
        let (ids, carts, hashes) = (col(|s| &s.id), col(|s| &s.cart), col(|s| &s.cart_hash));
        let statuses = col(|s| s.status.as_str());
        let created: Vec<i64> = insert.iter().map(|s| s.created_at).collect();
        let orders: Vec<Option<&str>> = insert.iter().map(|s| s.order_id.as_deref()).collect();
        let owners: Vec<Option<&str>> = insert.iter().map(|s| s.owner_jkt.as_deref()).collect();
        let statement = tx.prepare_cached(INSERT_SESSIONS).await?;
        let params: &Params<'_> = &[&ids, &carts, &hashes, &statuses, &created, &orders, &owners];
        tx.execute(&statement, params).await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// The sessions `ids`, read in one statement: one answer per id, in order.
async fn select_sessions(
    db: PgPool,
    ids: Vec<String>,
) -> Vec<Result<Option<SessionRow>, StoreError>> {
    let rows = async {
        let conn = db.get().await?;
        let select = conn
            .prepare_cached(SELECT_SESSIONS)
            .await
            .map_err(|e| ap2_service::describe(&e))?;
        let rows = conn
            .query(&select, &[&ids])
            .await
            .map_err(|e| ap2_service::describe(&e))?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let session = session_row(row).map_err(|e| ap2_service::describe(&e))?;
            found.insert(session.id.clone(), session);
        }
        Ok::<_, String>(found)
    }
    .await;
    match rows {
        Ok(found) => ids.iter().map(|id| Ok(found.get(id).cloned())).collect(),
        Err(why) => ids
            .iter()
            .map(|_| Err(StoreError::Backend(why.clone())))
            .collect(),
    }
}

/// The outcome of one order of a batch, from its row of `BEGIN_ORDERS`.
fn begun(row: &tokio_postgres::Row) -> Result<(), StoreError> {
    let status: Option<String> = row.try_get(0).map_err(backend)?;
    let inserted: bool = row.try_get(1).map_err(backend)?;
    match status.as_deref().map(SessionStatus::parse) {
        None => Err(StoreError::NotFound),
        Some(None) => Err(backend(format!("unknown status {status:?}"))),
        Some(Some(_)) if inserted => Ok(()),
        // Ready as the statement began, yet another completion took it first.
        Some(Some(SessionStatus::ReadyForComplete)) => {
            Err(StoreError::NotReady(SessionStatus::Charging))
        }
        Some(Some(other)) => Err(StoreError::NotReady(other)),
    }
}

async fn begin_orders(db: PgPool, orders: Vec<OrderRow>) -> Vec<Result<(), StoreError>> {
    let conn = match db.get().await {
        Ok(conn) => conn,
        Err(why) => return all_failed(why, orders.len()),
    };
    // Sent in session id order, so the update locks the sessions in that order; each keeps
    // its position in `orders`, where its answer goes.
    let mut sorted: Vec<(usize, &OrderRow)> = orders.iter().enumerate().collect();
    sorted.sort_unstable_by(|(_, a), (_, b)| a.session_id.cmp(&b.session_id));
    let in_order: Vec<&OrderRow> = sorted.iter().map(|(_, o)| *o).collect();
    match send_begins(&conn, &in_order).await {
        Ok(rows) if rows.len() == orders.len() => {
            let mut outcomes: Vec<(usize, Result<(), StoreError>)> = sorted
                .iter()
                .zip(&rows)
                .map(|((k, _), row)| (*k, begun(row)))
                .collect();
            outcomes.sort_unstable_by_key(|(k, _)| *k);
            outcomes.into_iter().map(|(_, outcome)| outcome).collect()
        }
        Ok(rows) => all_failed(
            format!("{} rows for {} orders", rows.len(), orders.len()),
            orders.len(),
        ),
        // The batch as a whole failed (a unique key already used, or a deadlock with another
        // instance's batch): each order again, alone, so one cannot fail the others.
        Err(e) if retry_alone(&e) => {
            tracing::warn!(error = %ap2_service::describe(&e), orders = orders.len(), "order batch failed; beginning each alone");
            let mut out = Vec::with_capacity(orders.len());
            for order in &orders {
                out.push(begin_order_alone(&conn, order).await);
            }
            out
        }
        Err(e) => all_failed(e, orders.len()),
    }
}

/// `BEGIN_ORDERS` for `orders`, in their order: one row each.
async fn send_begins(
    conn: &ap2_service::pg::PgAsyncConnection,
    orders: &[&OrderRow],
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let statement = conn.prepare_cached(BEGIN_ORDERS).await?;
    let col = |f: fn(&OrderRow) -> &str| orders.iter().map(|o| f(o)).collect::<Vec<&str>>();
    let (ids, sessions, currencies, mandates) = (
        col(|o| &o.id),
        col(|o| &o.session_id),
        col(|o| &o.currency),
        col(|o| &o.mandate),
    );
    let (claims, iss, jti, sub, kid, agents) = (
        col(|o| &o.claims),
        col(|o| &o.iss),
        col(|o| &o.jti),
        col(|o| &o.sub),
        col(|o| &o.kid),
        col(|o| &o.agent_id),
    );
    let amounts: Vec<i64> = orders.iter().map(|o| o.amount).collect();
    let created: Vec<i64> = orders.iter().map(|o| o.created_at).collect();
    let jkts: Vec<Option<&str>> = orders.iter().map(|o| o.agent_jkt.as_deref()).collect();
    let params: &Params<'_> = &[
        &ids,
        &sessions,
        &amounts,
        &currencies,
        &mandates,
        &claims,
        &iss,
        &jti,
        &sub,
        &kid,
        &agents,
        &created,
        &jkts,
    ];
    conn.query(&statement, params).await
}

/// One order begun by the batch statement on its own: a unique key it breaks is this order's
/// (`MandateUsed`: its `(iss, jti)` paid an order already), and a session another completion
/// took is `NotReady`, as in a batch.
async fn begin_order_alone(
    conn: &ap2_service::pg::PgAsyncConnection,
    order: &OrderRow,
) -> Result<(), StoreError> {
    match send_begins(conn, &[order]).await {
        Ok(rows) => match rows.as_slice() {
            [row] => begun(row),
            _ => Err(backend(format!("{} rows for one order", rows.len()))),
        },
        Err(e) if is_unique_violation(&e) => Err(StoreError::MandateUsed),
        Err(e) => Err(backend(e)),
    }
}

async fn finish_orders(db: PgPool, charges: Vec<Charged>) -> Vec<Result<(), StoreError>> {
    let n = charges.len();
    // Sent in session id order, the order the update locks them in; each answer goes to its
    // charge's place in `charges`.
    let mut sorted: Vec<&Charged> = charges.iter().collect();
    sorted.sort_unstable_by(|a, b| a.session_id.cmp(&b.session_id));
    let result = async {
        let conn = db.get().await.map_err(StoreError::Backend)?;
        let statement = conn.prepare_cached(FINISH_ORDERS).await.map_err(backend)?;
        let col = |f: fn(&Charged) -> &str| sorted.iter().map(|c| f(c)).collect::<Vec<&str>>();
        let sessions = col(|c| &c.session_id);
        let orders = col(|c| &c.order_id);
        let charge_ids = col(|c| &c.charge_id);
        match conn
            .query(&statement, &[&sessions, &orders, &charge_ids])
            .await
        {
            Ok(rows) => rows
                .iter()
                .map(|row| row.try_get::<_, String>(0).map_err(backend))
                .collect::<Result<std::collections::HashSet<String>, _>>(),
            Err(e) if retry_alone(&e) => {
                tracing::warn!(error = %ap2_service::describe(&e), orders = n, "charge batch failed; recording each alone");
                let alone = conn.prepare_cached(FINISH_ORDER).await.map_err(backend)?;
                let mut recorded = std::collections::HashSet::new();
                for c in &sorted {
                    let changed = conn
                        .execute(&alone, &[&c.session_id, &c.order_id, &c.charge_id])
                        .await
                        .map_err(backend)?;
                    if changed > 0 {
                        recorded.insert(c.order_id.clone());
                    }
                }
                Ok(recorded)
            }
            Err(e) => Err(backend(e)),
        }
    }
    .await;
    match result {
        Ok(recorded) => charges
            .iter()
            .map(|c| {
                if recorded.contains(&c.order_id) {
                    Ok(())
                } else {
                    Err(StoreError::OrderNotHeld)
                }
            })
            .collect(),
        Err(e) => all_failed(e, n),
    }
}

#[async_trait::async_trait]
impl MerchantStore for PgStore {
    async fn create_session(
        &self,
        s: &SessionRow,
        cap: Option<(u32, i64)>,
    ) -> Result<(), StoreError> {
        batched(&self.creates, (s.clone(), cap)).await
    }

    async fn delete_expired_sessions(&self, opened_before: i64) -> Result<usize, StoreError> {
        let conn = self.conn().await?;
        let n = conn
            .execute(DELETE_EXPIRED, &[&opened_before])
            .await
            .map_err(backend)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn session(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        batched(&self.sessions, id.to_owned()).await
    }

    async fn begin_order(&self, o: &OrderRow) -> Result<(), StoreError> {
        batched(&self.begins, o.clone()).await
    }

    async fn finish_order(
        &self,
        session_id: &str,
        order_id: &str,
        charge_id: &str,
    ) -> Result<(), StoreError> {
        let charged = Charged {
            session_id: session_id.to_owned(),
            order_id: order_id.to_owned(),
            charge_id: charge_id.to_owned(),
        };
        batched(&self.finishes, charged).await
    }

    async fn abort_order(&self, order_id: &str) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        let abort = conn.prepare_cached(ABORT_ORDER).await.map_err(backend)?;
        conn.execute(&abort, &[&order_id]).await.map_err(backend)?;
        Ok(())
    }

    async fn order(&self, id: &str) -> Result<Option<OrderRow>, StoreError> {
        let conn = self.conn().await?;
        let select = conn.prepare_cached(SELECT_ORDER).await.map_err(backend)?;
        conn.query_opt(&select, &[&id])
            .await
            .map_err(backend)?
            .as_ref()
            .map(order_row)
            .transpose()
    }

    async fn stuck_orders(&self, begun_before: i64) -> Result<Vec<OrderRow>, StoreError> {
        let conn = self.conn().await?;
        conn.query(STUCK_ORDERS, &[&begun_before])
            .await
            .map_err(backend)?
            .iter()
            .map(order_row)
            .collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.execute("SELECT 1", &[])
            .await
            .map_err(backend)
            .map(|_| ())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use ap2_service::pg::PgAsyncConnection;

    /// `sql`'s plan on `conn`, as prepared statements run it (`EXPLAIN EXECUTE`), with `args`.
    async fn plan(conn: &PgAsyncConnection, name: &str, sql: &str, args: &str) -> String {
        conn.batch_execute(&format!("PREPARE {name} AS {sql}"))
            .await
            .unwrap();
        let mut text = String::new();
        for message in conn
            .simple_query(&format!("EXPLAIN EXECUTE {name}({args})"))
            .await
            .unwrap()
        {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                text.push_str(row.get(0).unwrap_or(""));
                text.push('\n');
            }
        }
        text
    }

    fn ready(id: &str) -> SessionRow {
        SessionRow {
            id: id.to_owned(),
            cart: "{}".to_owned(),
            cart_hash: "h".to_owned(),
            status: SessionStatus::ReadyForComplete,
            created_at: 100,
            order_id: None,
            owner_jkt: None,
        }
    }

    fn order(id: &str, session: &str) -> OrderRow {
        OrderRow {
            id: id.to_owned(),
            session_id: session.to_owned(),
            amount: 100,
            currency: "USD".to_owned(),
            mandate: "m".to_owned(),
            claims: "{}".to_owned(),
            iss: "https://wallet.example".to_owned(),
            jti: format!("j-{id}"),
            sub: "u".to_owned(),
            kid: "k".to_owned(),
            agent_id: "a".to_owned(),
            charge_id: None,
            created_at: 100,
            agent_jkt: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spec11_one_batch_with_two_orders_for_one_session_begins_one_and_answers_in_order() {
        let db = ap2_testkit::PgDatabase::create();
        let store = PgStore::open(db.url(), 2).await.unwrap();
        for id in ["s1", "s2"] {
            store.create_session(&ready(id), None).await.unwrap();
        }
        // Not in session id order, so the batch is sent sorted and answered back in this order.
        let batch = vec![
            order("o-s2", "s2"),
            order("o-a", "s1"),
            order("o-none", "s0"),
            order("o-b", "s1"),
        ];
        let out = begin_orders(store.db.clone(), batch).await;
        assert!(matches!(out[0], Ok(())), "{:?}", out[0]);
        assert!(matches!(out[2], Err(StoreError::NotFound)), "{:?}", out[2]);
        let (a, b) = (&out[1], &out[3]);
        let charging = |r: &Result<(), StoreError>| {
            matches!(r, Err(StoreError::NotReady(SessionStatus::Charging)))
        };
        assert!(
            (a.is_ok() && charging(b)) || (charging(a) && b.is_ok()),
            "{a:?} {b:?}"
        );
        let winner = if a.is_ok() { "o-a" } else { "o-b" };
        let s1 = store.session("s1").await.unwrap().unwrap();
        assert_eq!(
            (s1.status, s1.order_id.as_deref()),
            (SessionStatus::Charging, Some(winner))
        );
        let loser = if a.is_ok() { "o-b" } else { "o-a" };
        assert!(store.order(loser).await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spec11_one_batch_of_charges_answers_each_in_order() {
        let db = ap2_testkit::PgDatabase::create();
        let store = PgStore::open(db.url(), 2).await.unwrap();
        for id in ["s1", "s2", "s3"] {
            store.create_session(&ready(id), None).await.unwrap();
        }
        for (o, s) in [("o1", "s1"), ("o2", "s2"), ("o3", "s3")] {
            store.begin_order(&order(o, s)).await.unwrap();
        }
        let charged = |session: &str, order: &str| Charged {
            session_id: session.to_owned(),
            order_id: order.to_owned(),
            charge_id: format!("ch-{order}"),
        };
        // Not in session id order; o9 holds no session, o1 comes twice.
        let batch = vec![
            charged("s3", "o3"),
            charged("s2", "o9"),
            charged("s1", "o1"),
            charged("s0", "o0"),
            charged("s1", "o1"),
        ];
        let out = finish_orders(store.db.clone(), batch).await;
        let held: Vec<bool> = out
            .iter()
            .map(|r| match r {
                Ok(()) => true,
                Err(StoreError::OrderNotHeld) => false,
                Err(e) => panic!("{e}"),
            })
            .collect();
        assert_eq!(held, [true, false, true, false, true]);
        let status = |id: &'static str| {
            let store = store.clone();
            async move { store.session(id).await.unwrap().unwrap().status }
        };
        assert_eq!(status("s1").await, SessionStatus::Completed);
        assert_eq!(status("s2").await, SessionStatus::Charging);
        assert_eq!(status("s3").await, SessionStatus::Completed);
        let paid = store.order("o3").await.unwrap().unwrap();
        assert_eq!(paid.charge_id.as_deref(), Some("ch-o3"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spec11_statements_prepared_on_empty_tables_read_them_by_index() {
        // A fresh deployment: the tables are empty when the statements are first prepared,
        // and the plans the connection keeps must still fit the tables once they are large.
        let db = ap2_testkit::PgDatabase::create();
        let store = PgStore::open(db.url(), 1).await.unwrap();
        let conn = store.conn().await.unwrap();
        let texts = "'{a,b}'";
        let statements = [
            (
                "begin_orders",
                BEGIN_ORDERS,
                format!(
                    "{texts}, {texts}, '{{1,2}}', {texts}, {texts}, {texts}, {texts}, {texts}, \
                     {texts}, {texts}, {texts}, '{{1,2}}', {texts}"
                ),
            ),
            (
                "finish_orders",
                FINISH_ORDERS,
                format!("{texts}, {texts}, {texts}"),
            ),
            ("select_sessions", SELECT_SESSIONS, texts.to_owned()),
            ("count_open", COUNT_OPEN, format!("{texts}, '{{1,2}}'")),
            ("select_order", SELECT_ORDER, "'a'".to_owned()),
            ("finish_order", FINISH_ORDER, "'a', 'b', 'c'".to_owned()),
            ("abort_order", ABORT_ORDER, "'a'".to_owned()),
            ("stuck_orders", STUCK_ORDERS, "1".to_owned()),
            ("delete_expired", DELETE_EXPIRED, "1".to_owned()),
        ];
        for (name, sql, args) in statements {
            let plan = plan(&conn, name, sql, &args).await;
            assert!(!plan.contains("Seq Scan"), "{name} scans a table:\n{plan}");
            for join in ["Hash Join", "Merge Join"] {
                assert!(!plan.contains(join), "{name} joins a whole table:\n{plan}");
            }
        }
    }
}
