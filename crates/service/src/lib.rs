//! What the three AP2 services share: configuration helpers, telemetry, problem+json errors,
//! the HTTP layers every router gets, and graceful shutdown.
#![forbid(unsafe_code)]

pub mod auth;
pub mod dpop;
pub mod http;
pub mod problem;
pub mod telemetry;

pub use auth::{NamedToken, TokenSet, bearer_token};
pub use problem::{ApiJson, ApiPath, Problem};

/// The one SQLite connection a service keeps its state in, shared by its handlers.
#[derive(Debug)]
pub struct SqliteDb(std::sync::Mutex<rusqlite::Connection>);

/// The connection's lock was poisoned by a panic while it was held.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the database connection lock is poisoned")]
pub struct DbPoisoned;

impl SqliteDb {
    /// Opens (or creates) the database the way every service keeps its state: WAL, so readers
    /// do not wait for the writer; `synchronous=FULL`, so an acknowledged write survives a
    /// power cut; foreign keys enforced; a 5 s busy timeout. Creates the file's directory, then
    /// runs `schema` (idempotent `CREATE … IF NOT EXISTS` statements).
    pub fn open(path: &std::path::Path, schema: &str) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(schema)?;
        Ok(Self(std::sync::Mutex::new(conn)))
    }

    /// Adds `column` (with its SQL declaration) to `table` unless it is there: how a schema
    /// of `CREATE … IF NOT EXISTS` statements grows a column on a database made before it.
    pub fn add_column(&self, table: &str, column: &str, declaration: &str) -> anyhow::Result<()> {
        self.with(|conn| -> anyhow::Result<()> {
            let present = conn
                .prepare(&format!(
                    "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
                ))?
                .exists([column])?;
            if !present {
                conn.execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN {column} {declaration}"
                ))?;
            }
            Ok(())
        })
    }

    /// Runs `f` with the connection held; the store's error type says what a poisoned lock is.
    pub fn with<T, E: From<DbPoisoned>>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.0.lock().map_err(|_| DbPoisoned)?;
        f(&mut conn)
    }
}

/// Formats a Unix time as RFC 3339 UTC (`2026-11-23T11:26:19Z`).
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
