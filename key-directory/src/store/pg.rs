//! The key directory on PostgreSQL (SPEC §11): every instance serves the same registry.

use ap2_service::pg::{PgDb, is_unique_violation};

use super::{KeyEntry, KeyStore, Registered, Revocation, StoreError};

/// The versioned schema: migration `i` is version `i + 1`; never edit one that shipped.
const MIGRATIONS: &[&str] = &["
CREATE TABLE keys (
    kid        TEXT PRIMARY KEY,
    issuer     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    thumbprint TEXT NOT NULL UNIQUE,
    jwk        TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE TABLE revocations (
    seq        BIGSERIAL PRIMARY KEY,
    kid        TEXT NOT NULL UNIQUE REFERENCES keys (kid),
    revoked_at BIGINT NOT NULL
);
"];

const COLUMNS: &str = "kid, issuer, subject, thumbprint, jwk, created_at, revoked_at";

/// Keys in PostgreSQL, schema `key_directory`.
#[derive(Debug, Clone)]
pub struct PgStore {
    db: PgDb,
}

/// A failure as the store reports it, with the server's own message (`describe`).
fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::Backend(ap2_service::describe(&*e.into()))
}

fn entry(row: &postgres::Row) -> Result<KeyEntry, StoreError> {
    let jwk: String = row.try_get(4).map_err(backend)?;
    Ok(KeyEntry {
        kid: row.try_get(0).map_err(backend)?,
        issuer: row.try_get(1).map_err(backend)?,
        subject: row.try_get(2).map_err(backend)?,
        thumbprint: row.try_get(3).map_err(backend)?,
        jwk: serde_json::from_str(&jwk).map_err(backend)?,
        created_at: row.try_get(5).map_err(backend)?,
        revoked_at: row.try_get(6).map_err(backend)?,
    })
}

fn select_by(
    conn: &mut impl postgres::GenericClient,
    column: &str,
    value: &str,
    lock: bool,
) -> Result<Option<KeyEntry>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM keys WHERE {column} = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    conn.query_opt(&sql, &[&value])
        .map_err(backend)?
        .as_ref()
        .map(entry)
        .transpose()
}

impl PgStore {
    /// Connects (at most `max_connections`) and migrates the `key_directory` schema.
    pub fn open(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        Ok(Self {
            db: PgDb::open(url, "key_directory", MIGRATIONS, max_connections)?,
        })
    }
}

impl KeyStore for PgStore {
    fn register(&self, new: KeyEntry) -> Result<Registered, StoreError> {
        let mut conn = self.db.get().map_err(StoreError::Backend)?;
        let mut tx = conn.transaction().map_err(backend)?;
        // One registration of a kid at a time, across instances.
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&new.kid])
            .map_err(backend)?;
        if let Some(existing) = select_by(&mut tx, "kid", &new.kid, false)? {
            if !existing.same_registration(&new) {
                return Err(StoreError::KidTaken);
            }
            if existing.revoked_at.is_some() {
                return Err(StoreError::Revoked);
            }
            return Ok(Registered::Existing(existing));
        }
        if select_by(&mut tx, "thumbprint", &new.thumbprint, false)?.is_some() {
            return Err(StoreError::KeyTaken);
        }
        let inserted = tx.execute(
            "INSERT INTO keys (kid, issuer, subject, thumbprint, jwk, created_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, NULL)",
            &[
                &new.kid,
                &new.issuer,
                &new.subject,
                &new.thumbprint,
                &new.jwk.to_string(),
                &new.created_at,
            ],
        );
        match inserted {
            Ok(_) => {}
            // The same key under another kid, registered by another instance just now.
            Err(e) if is_unique_violation(&e) => return Err(StoreError::KeyTaken),
            Err(e) => return Err(backend(e)),
        }
        tx.commit().map_err(backend)?;
        Ok(Registered::Created(new))
    }

    fn get(&self, kid: &str) -> Result<Option<KeyEntry>, StoreError> {
        let mut conn = self.db.get().map_err(StoreError::Backend)?;
        select_by(&mut **conn, "kid", kid, false)
    }

    fn revoke(&self, kid: &str, issuer: &str, now: i64) -> Result<KeyEntry, StoreError> {
        let mut conn = self.db.get().map_err(StoreError::Backend)?;
        let mut tx = conn.transaction().map_err(backend)?;
        let found = select_by(&mut tx, "kid", kid, true)?.ok_or(StoreError::NotFound)?;
        if found.issuer != issuer {
            return Err(StoreError::NotYours);
        }
        if found.revoked_at.is_some() {
            return Ok(found);
        }
        tx.execute(
            "UPDATE keys SET revoked_at = $2 WHERE kid = $1 AND revoked_at IS NULL",
            &[&kid, &now],
        )
        .map_err(backend)?;
        tx.execute(
            "INSERT INTO revocations (kid, revoked_at) VALUES ($1, $2)",
            &[&kid, &now],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(KeyEntry {
            revoked_at: Some(now),
            ..found
        })
    }

    fn revocations_after(&self, seq: i64, limit: usize) -> Result<Vec<Revocation>, StoreError> {
        let mut conn = self.db.get().map_err(StoreError::Backend)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        conn.query(
            "SELECT seq, kid, revoked_at FROM revocations WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&seq, &limit],
        )
        .map_err(backend)?
        .iter()
        .map(|row| {
            Ok(Revocation {
                seq: row.try_get(0).map_err(backend)?,
                kid: row.try_get(1).map_err(backend)?,
                revoked_at: row.try_get(2).map_err(backend)?,
            })
        })
        .collect()
    }

    fn last_revocation(&self) -> Result<i64, StoreError> {
        let mut conn = self.db.get().map_err(StoreError::Backend)?;
        conn.query_one("SELECT COALESCE(MAX(seq), 0)::BIGINT FROM revocations", &[])
            .map_err(backend)?
            .try_get(0)
            .map_err(backend)
    }

    fn active(&self) -> Result<Vec<KeyEntry>, StoreError> {
        let mut conn = self.db.get().map_err(StoreError::Backend)?;
        conn.query(
            &format!(
                "SELECT {COLUMNS} FROM keys WHERE revoked_at IS NULL ORDER BY created_at, kid"
            ),
            &[],
        )
        .map_err(backend)?
        .iter()
        .map(entry)
        .collect()
    }

    fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.db.get().map_err(StoreError::Backend)?;
        conn.execute("SELECT 1", &[]).map_err(backend).map(|_| ())
    }
}
