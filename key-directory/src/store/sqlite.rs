//! The default store: one SQLite file, WAL, synchronous commits.

use std::path::Path;

use ap2_service::{DbPoisoned, SqliteDb};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{KeyEntry, KeyStore, Registered, Revocation, StoreError};

/// Keys in a SQLite database file.
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

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS keys (
    kid        TEXT PRIMARY KEY NOT NULL,
    issuer     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    thumbprint TEXT NOT NULL UNIQUE,
    jwk        TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS revocations (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kid        TEXT NOT NULL UNIQUE REFERENCES keys (kid),
    revoked_at INTEGER NOT NULL
) STRICT;
-- Keys revoked before the stream existed get their event once.
INSERT OR IGNORE INTO revocations (kid, revoked_at)
    SELECT kid, revoked_at FROM keys WHERE revoked_at IS NOT NULL ORDER BY revoked_at, kid;
";

const COLUMNS: &str = "kid, issuer, subject, thumbprint, jwk, created_at, revoked_at";

impl SqliteStore {
    /// Opens (or creates) the database at `path`, creating its directory.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let db = SqliteDb::open(path, SCHEMA)?;
        Ok(Self { db })
    }
}

fn row_to_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<(KeyEntry, String)> {
    let jwk_text: String = row.get(4)?;
    Ok((
        KeyEntry {
            kid: row.get(0)?,
            issuer: row.get(1)?,
            subject: row.get(2)?,
            thumbprint: row.get(3)?,
            jwk: serde_json::Value::Null,
            created_at: row.get(5)?,
            revoked_at: row.get(6)?,
        },
        jwk_text,
    ))
}

fn finish((mut entry, jwk_text): (KeyEntry, String)) -> Result<KeyEntry, StoreError> {
    entry.jwk = serde_json::from_str(&jwk_text).map_err(backend)?;
    Ok(entry)
}

fn select_by(conn: &Connection, column: &str, value: &str) -> Result<Option<KeyEntry>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM keys WHERE {column} = ?1");
    conn.query_row(&sql, params![value], row_to_entry)
        .optional()
        .map_err(backend)?
        .map(finish)
        .transpose()
}

impl KeyStore for SqliteStore {
    fn register(&self, entry: KeyEntry) -> Result<Registered, StoreError> {
        self.db.with(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            if let Some(existing) = select_by(&tx, "kid", &entry.kid)? {
                if !existing.same_registration(&entry) {
                    return Err(StoreError::KidTaken);
                }
                if existing.revoked_at.is_some() {
                    return Err(StoreError::Revoked);
                }
                return Ok(Registered::Existing(existing));
            }
            if select_by(&tx, "thumbprint", &entry.thumbprint)?.is_some() {
                return Err(StoreError::KeyTaken);
            }
            tx.execute(
                "INSERT INTO keys (kid, issuer, subject, thumbprint, jwk, created_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)",
                params![
                    entry.kid,
                    entry.issuer,
                    entry.subject,
                    entry.thumbprint,
                    entry.jwk.to_string(),
                    entry.created_at
                ],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(Registered::Created(entry))
        })
    }

    fn get(&self, kid: &str) -> Result<Option<KeyEntry>, StoreError> {
        self.db.with(|conn| select_by(conn, "kid", kid))
    }

    fn revoke(&self, kid: &str, issuer: &str, now: i64) -> Result<KeyEntry, StoreError> {
        self.db.with(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let entry = select_by(&tx, "kid", kid)?.ok_or(StoreError::NotFound)?;
            if entry.issuer != issuer {
                return Err(StoreError::NotYours);
            }
            if entry.revoked_at.is_some() {
                return Ok(entry);
            }
            tx.execute(
                "UPDATE keys SET revoked_at = ?2 WHERE kid = ?1 AND revoked_at IS NULL",
                params![kid, now],
            )
            .map_err(backend)?;
            tx.execute(
                "INSERT INTO revocations (kid, revoked_at) VALUES (?1, ?2)",
                params![kid, now],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(KeyEntry {
                revoked_at: Some(now),
                ..entry
            })
        })
    }

    fn active(&self) -> Result<Vec<KeyEntry>, StoreError> {
        self.db.with(|conn| {
            let sql = format!(
                "SELECT {COLUMNS} FROM keys WHERE revoked_at IS NULL ORDER BY created_at, kid"
            );
            let mut stmt = conn.prepare(&sql).map_err(backend)?;
            let rows = stmt.query_map([], row_to_entry).map_err(backend)?;
            rows.map(|row| row.map_err(backend).and_then(finish))
                .collect()
        })
    }

    fn revocations_after(&self, seq: i64, limit: usize) -> Result<Vec<Revocation>, StoreError> {
        self.db.with(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, kid, revoked_at FROM revocations WHERE seq > ?1
                     ORDER BY seq LIMIT ?2",
                )
                .map_err(backend)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt
                .query_map(params![seq, limit], |row| {
                    Ok(Revocation {
                        seq: row.get(0)?,
                        kid: row.get(1)?,
                        revoked_at: row.get(2)?,
                    })
                })
                .map_err(backend)?;
            rows.map(|row| row.map_err(backend)).collect()
        })
    }

    fn last_revocation(&self) -> Result<i64, StoreError> {
        self.db.with(|conn| {
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM revocations", [], |row| {
                row.get(0)
            })
            .map_err(backend)
        })
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.db
            .with(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
    }
}
