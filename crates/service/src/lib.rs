//! What the three AP2 services share: configuration helpers, telemetry, problem+json errors,
//! the HTTP layers every router gets, and graceful shutdown.
#![forbid(unsafe_code)]

pub mod auth;
pub mod conn;
pub mod dpop;
pub mod http;
pub mod pg;
pub mod problem;
pub mod rate;
pub mod telemetry;

pub use auth::{NamedToken, TokenSet, bearer_token};
pub use conn::ConnectionLimits;
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
    /// runs `schema` (idempotent `CREATE … IF NOT EXISTS` statements). The file is readable by
    /// its owner only (0600, SPEC §9), and so are SQLite's `-wal` and `-shm` files, which it
    /// creates with the database file's mode.
    pub fn open(path: &std::path::Path, schema: &str) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        owner_only(path)?;
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

/// Creates `path` with mode 0600 if it is missing, and narrows it (and SQLite's side files,
/// if there) to 0600 if it was made wider before.
fn owner_only(path: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn spec9_database_files_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let db = SqliteDb::open(&path, "CREATE TABLE IF NOT EXISTS t (x INTEGER) STRICT;").unwrap();
        db.with(|c| {
            c.execute("INSERT INTO t VALUES (1)", [])
                .map_err(|_| DbPoisoned)
        })
        .unwrap();
        for file in ["state.db", "state.db-wal", "state.db-shm"] {
            assert_eq!(mode(&dir.path().join(file)), 0o600, "{file}");
        }
        // A file made wider before is narrowed at the next open.
        drop(db);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        SqliteDb::open(&path, "").unwrap();
        assert_eq!(mode(&path), 0o600);
    }
}
