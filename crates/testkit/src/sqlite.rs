//! What SQLite makes of a store's statements and schema.

/// `sql`'s plan on `conn` (`EXPLAIN QUERY PLAN`, its `args` parameters bound to NULL), one line
/// per step, e.g. `SEARCH requests USING INDEX requests_pending_by_user (user_id=?)`. The
/// schema is read first: `EXPLAIN` does not check that the connection's copy of it is current,
/// so a connection that read it before another one changed it would show a plan for the old
/// schema (a statement that runs is prepared again when the schema changed; its plan is not).
///
/// # Panics
/// When `sql` does not prepare.
#[allow(clippy::panic)]
pub fn plan(conn: &rusqlite::Connection, sql: &str, args: usize) -> String {
    let steps = (|| {
        conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |_| Ok(()))?;
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        let nulls = vec![rusqlite::types::Value::Null; args];
        stmt.query_map(rusqlite::params_from_iter(nulls), |row| {
            row.get::<_, String>(3)
        })?
        .collect::<Result<Vec<_>, _>>()
    })()
    .unwrap_or_else(|e| panic!("EXPLAIN QUERY PLAN {sql}: {e}"));
    steps.join("\n")
}

/// The indexes made on `table` by a `CREATE INDEX` (not a key's own), by name.
///
/// # Panics
/// When the schema cannot be read.
#[allow(clippy::panic)]
pub fn indexes(conn: &rusqlite::Connection, table: &str) -> Vec<String> {
    (|| {
        conn.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 \
             AND sql IS NOT NULL ORDER BY name",
        )?
        .query_map([table], |row| row.get(0))?
        .collect::<Result<Vec<String>, _>>()
    })()
    .unwrap_or_else(|e| panic!("the indexes of {table}: {e}"))
}
