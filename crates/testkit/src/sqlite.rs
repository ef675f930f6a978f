//! What SQLite makes of a store's statements and schema, read on one of its connections.

/// `sql`'s plan on `db` (`EXPLAIN QUERY PLAN`, its `args` parameters bound to NULL), one line
/// per step, e.g. `SEARCH requests USING INDEX requests_pending_by_user (user_id=?)`. The
/// schema is read first: `EXPLAIN` does not check that the connection's copy of it is current,
/// so a connection that read it before another one changed it would show a plan for the old
/// schema (a statement that runs is prepared again when the schema changed; its plan is not).
///
/// # Panics
/// When `sql` does not prepare.
#[allow(clippy::panic)]
pub fn plan(db: &ap2_service::SqliteDb, sql: &str, args: usize) -> String {
    let steps = in_db(db, |conn| {
        conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |_| Ok(()))?;
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        let nulls = vec![rusqlite::types::Value::Null; args];
        stmt.query_map(rusqlite::params_from_iter(nulls), |row| {
            row.get::<_, String>(3)
        })?
        .collect::<Result<Vec<_>, _>>()
    })
    .unwrap_or_else(|e| panic!("EXPLAIN QUERY PLAN {sql}: {e}"));
    steps.join("\n")
}

/// The indexes made on `table` by a `CREATE INDEX` (not a key's own), by name.
///
/// # Panics
/// When the schema cannot be read.
#[allow(clippy::panic)]
pub fn indexes(db: &ap2_service::SqliteDb, table: &str) -> Vec<String> {
    in_db(db, |conn| {
        conn.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 \
             AND sql IS NOT NULL ORDER BY name",
        )?
        .query_map([table], |row| row.get(0))?
        .collect::<Result<Vec<String>, _>>()
    })
    .unwrap_or_else(|e| panic!("the indexes of {table}: {e}"))
}

/// Runs `sql` (statements separated by `;`) on `db`: a schema as an older version left it.
///
/// # Panics
/// When a statement fails.
#[allow(clippy::panic)]
pub fn execute(db: &ap2_service::SqliteDb, sql: &str) {
    in_db(db, |conn| conn.execute_batch(sql)).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// `f` on one of `db`'s connections; a poisoned lock is an error like the statement's.
fn in_db<T>(
    db: &ap2_service::SqliteDb,
    f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
) -> Result<T, String> {
    db.with(|conn| f(conn).map_err(|e| e.to_string()).map_err(Failed::Sql))
        .map_err(|e| match e {
            Failed::Sql(e) => e,
            Failed::Poisoned(e) => e.to_string(),
        })
}

/// Why [`in_db`] failed.
enum Failed {
    Sql(String),
    Poisoned(ap2_service::DbPoisoned),
}

impl From<ap2_service::DbPoisoned> for Failed {
    fn from(e: ap2_service::DbPoisoned) -> Self {
        Self::Poisoned(e)
    }
}
