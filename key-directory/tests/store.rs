//! One suite, both stores (SPEC §11): SQLite in a temporary file and PostgreSQL in a fresh
//! database of a real server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use ap2_testkit::PgDatabase;
use key_directory::store::{KeyEntry, KeyStore, PgStore, Registered, SqliteStore, StoreError};

fn key(kid: &str, thumbprint: &str, subject: &str) -> KeyEntry {
    KeyEntry {
        kid: kid.into(),
        issuer: "https://wallet.example".into(),
        subject: subject.into(),
        thumbprint: thumbprint.into(),
        jwk: serde_json::json!({"kty": "EC", "kid": kid}),
        created_at: 100,
        revoked_at: None,
    }
}

fn contract(store: Arc<dyn KeyStore>) {
    store.ping().unwrap();
    assert_eq!(store.last_revocation().unwrap(), 0);
    assert!(matches!(
        store.register(key("k1", "t1", "alice")).unwrap(),
        Registered::Created(_)
    ));
    assert!(matches!(
        store.register(key("k1", "t1", "alice")).unwrap(),
        Registered::Existing(_)
    ));
    assert!(matches!(
        store.register(key("k1", "t1", "bob")),
        Err(StoreError::KidTaken)
    ));
    assert!(matches!(
        store.register(key("k2", "t1", "alice")),
        Err(StoreError::KeyTaken)
    ));
    store.register(key("k2", "t2", "alice")).unwrap();
    store.register(key("k3", "t3", "carol")).unwrap();
    assert_eq!(store.get("k1").unwrap().unwrap().jwk["kid"], "k1");
    assert!(store.get("nope").unwrap().is_none());

    // Revocation: the issuer's only, the first time kept, an event each.
    assert!(matches!(
        store.revoke("k1", "https://other.example", 200),
        Err(StoreError::NotYours)
    ));
    assert!(matches!(
        store.revoke("nope", "https://wallet.example", 200),
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        store
            .revoke("k1", "https://wallet.example", 200)
            .unwrap()
            .revoked_at,
        Some(200)
    );
    assert_eq!(
        store
            .revoke("k1", "https://wallet.example", 300)
            .unwrap()
            .revoked_at,
        Some(200)
    );
    store.revoke("k3", "https://wallet.example", 400).unwrap();
    assert!(matches!(
        store.register(key("k1", "t1", "alice")),
        Err(StoreError::Revoked)
    ));
    let events = store.revocations_after(0, 10).unwrap();
    let kids: Vec<&str> = events.iter().map(|e| e.kid.as_str()).collect();
    assert_eq!(kids, ["k1", "k3"]);
    assert!(events[0].seq < events[1].seq);
    assert_eq!(store.last_revocation().unwrap(), events[1].seq);
    assert_eq!(store.revocations_after(events[0].seq, 10).unwrap().len(), 1);
    assert_eq!(store.revocations_after(0, 1).unwrap().len(), 1);
    let active: Vec<String> = store.active().unwrap().into_iter().map(|e| e.kid).collect();
    assert_eq!(active, ["k2"]);

    // Concurrent registrations of one kid with different keys: one winner.
    let created: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let store = store.clone();
                scope.spawn(move || {
                    matches!(
                        store.register(key("race", &format!("rt{i}"), "dave")),
                        Ok(Registered::Created(_))
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| usize::from(h.join().unwrap()))
            .sum()
    });
    assert_eq!(created, 1);
}

#[test]
fn spec11_the_sqlite_store_keeps_the_rules() {
    let tmp = tempfile::tempdir().unwrap();
    contract(Arc::new(
        SqliteStore::open(&tmp.path().join("keys.db")).unwrap(),
    ));
}

#[test]
fn spec11_the_postgres_store_keeps_the_rules() {
    let db = PgDatabase::create();
    contract(Arc::new(PgStore::open(db.url(), 8).unwrap()));
}

/// A database that cannot be used says why, in the server's words: the client's own errors
/// say only `db error`.
#[test]
fn spec11_a_database_that_cannot_be_opened_is_named_with_the_servers_reason() {
    let db = PgDatabase::create();
    let missing = format!("{}_missing", db.url());
    let err = PgStore::open(&missing, 1).expect_err("a database that does not exist");
    let text = format!("{err:#}");
    assert!(
        text.contains("does not exist") && text.contains("_missing"),
        "{text}"
    );
}
