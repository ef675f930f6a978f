//! One suite, both stores (SPEC §11): SQLite in a temporary directory and PostgreSQL in a fresh
//! database of a real server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ap2_testkit::PgDatabase;
use wallet::store::{
    Approval, PgStore, RequestRow, SqliteStore, Status, StoreError, UserRow, WalletStore,
};

fn user(id: &str, kid: &str) -> UserRow {
    UserRow {
        user_id: id.into(),
        kid: kid.into(),
        token_hash: format!("hash-{id}"),
        sealed_key: vec![1, 2, 3],
        registered: false,
        created_at: 100,
        key_revoked_at: None,
    }
}

fn request(id: &str, user_id: &str, created_at: i64) -> RequestRow {
    RequestRow {
        id: id.into(),
        user_id: user_id.into(),
        agent_id: "agent-7".into(),
        merchant_id: "acme-corp".into(),
        cart: "{}".into(),
        cart_hash: "sha256-x".into(),
        max_amount: "89.99".into(),
        currency: "USD".into(),
        ttl_secs: 120,
        otp: "sealed-code".into(),
        attempts: 0,
        status: Status::PendingApproval,
        created_at,
        expires_at: created_at + 300,
        cnf_jkt: None,
        mandate: None,
        mandate_exp: None,
    }
}

fn contract(store: Arc<dyn WalletStore>) {
    store.ping().unwrap();
    store.create_user(&user("alice", "k1")).unwrap();
    assert!(matches!(
        store.create_user(&user("alice", "k9")),
        Err(StoreError::UserExists)
    ));
    assert_eq!(store.unregistered_users().unwrap().len(), 1);
    store.mark_registered("alice").unwrap();
    assert!(store.unregistered_users().unwrap().is_empty());
    assert_eq!(
        store.user_by_token_hash("hash-alice").unwrap().as_deref(),
        Some("alice")
    );
    store.create_user(&user("ghost", "k0")).unwrap();
    store.delete_unregistered_user("ghost").unwrap();
    assert!(store.user("ghost").unwrap().is_none());

    // The pending cap, and a DPoP proof accepted once.
    store
        .create_request(&request("r1", "alice", 1000), Some(("p1", 1100)), 2)
        .unwrap();
    assert!(matches!(
        store.create_request(&request("r2", "alice", 1000), Some(("p1", 1100)), 2),
        Err(StoreError::ProofReplayed)
    ));
    store
        .create_request(&request("r2", "alice", 1001), None, 2)
        .unwrap();
    assert!(matches!(
        store.create_request(&request("r3", "alice", 1002), None, 2),
        Err(StoreError::TooManyPending)
    ));
    let page = store.pending_for_user("alice", 1002, None, 1).unwrap();
    assert_eq!(page[0].id, "r1");
    let next = store
        .pending_for_user("alice", 1002, Some((page[0].created_at, "r1")), 10)
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, "r2");

    // A wrong code, then the right one: minted once; ended requests lose their code.
    let mut mint = |_: &RequestRow| Ok(("mandate".to_owned(), 2000));
    assert!(matches!(
        store
            .approve("r1", "alice", &|_| false, 1003, 3, &mut mint, None)
            .unwrap(),
        Approval::WrongCode { remaining: 2 }
    ));
    assert!(matches!(
        store.approve("r1", "bob", &|_| true, 1003, 3, &mut mint, None),
        Err(StoreError::NotYours)
    ));
    let minted = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            let (store, minted) = (store.clone(), &minted);
            scope.spawn(move || {
                let mut mint = |_: &RequestRow| {
                    minted.fetch_add(1, Ordering::SeqCst);
                    Ok(("mandate".to_owned(), 2000))
                };
                let _ = store.approve(
                    "r1",
                    "alice",
                    &|code| code == "sealed-code",
                    1004,
                    3,
                    &mut mint,
                    Some(r#"{"evidence":1}"#),
                );
            });
        }
    });
    assert_eq!(minted.load(Ordering::SeqCst), 1);
    let approved = store.request("r1").unwrap().unwrap();
    assert_eq!(
        (
            approved.status,
            approved.otp.as_str(),
            approved.mandate.as_deref()
        ),
        (Status::Approved, "", Some("mandate"))
    );
    // The evidence went in with the approval, once (SPEC §12).
    assert_eq!(
        store.evidence("r1").unwrap().as_deref(),
        Some(r#"{"evidence":1}"#)
    );
    assert_eq!(store.evidence("r2").unwrap(), None);

    // Passkeys: per user, oldest first, one credential id once for anyone.
    store.add_passkey("alice", "c1", "{\"n\":1}", 1010).unwrap();
    store.add_passkey("alice", "c2", "{\"n\":2}", 1011).unwrap();
    assert!(matches!(
        store.add_passkey("alice", "c1", "{}", 1012),
        Err(StoreError::CredentialExists)
    ));
    store.update_passkey("c1", "{\"n\":3}").unwrap();
    assert_eq!(store.passkeys("alice").unwrap(), ["{\"n\":3}", "{\"n\":2}"]);
    assert!(store.passkeys("nobody").unwrap().is_empty());
    let denied = store.deny("r2", "alice", 1005).unwrap().unwrap();
    assert_eq!(denied.status, Status::Denied);
    assert_eq!(
        store.deny("r2", "alice", 1005).unwrap().unwrap_err(),
        Status::Denied
    );

    // Rotation: the old kid is retired until the directory revokes it.
    assert_eq!(store.rotate_key("alice", "k2", &[9], 1100).unwrap(), "k1");
    assert_eq!(store.user("alice").unwrap().unwrap().kid, "k2");
    assert_eq!(store.retired_unrevoked().unwrap(), ["k1"]);
    assert_eq!(store.key_revoked("k1", 1101).unwrap(), None);
    assert!(store.retired_unrevoked().unwrap().is_empty());
    assert_eq!(
        store.key_revoked("k2", 1102).unwrap().as_deref(),
        Some("alice")
    );
    assert_eq!(
        store.user("alice").unwrap().unwrap().key_revoked_at,
        Some(1102)
    );
    assert!(matches!(
        store.rotate_key("nobody", "k3", &[9], 1103),
        Err(StoreError::NotFound)
    ));
}

#[test]
fn spec11_the_sqlite_store_keeps_the_rules() {
    let tmp = tempfile::tempdir().unwrap();
    contract(Arc::new(SqliteStore::open(tmp.path()).unwrap()));
}

#[test]
fn spec11_the_postgres_store_keeps_the_rules() {
    let db = PgDatabase::create();
    contract(Arc::new(PgStore::open(db.url(), 8).unwrap()));
}
