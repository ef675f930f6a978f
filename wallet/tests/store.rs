//! One suite, both stores (SPEC §11): SQLite in a temporary directory and PostgreSQL in a fresh
//! database of a real server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use ap2_testkit::PgDatabase;
use wallet::store::{
    Approval, Attempt, PgStore, RequestRow, SqliteStore, Status, StoreError, UserRow, WalletStore,
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

async fn contract(store: Arc<dyn WalletStore>) {
    store.ping().await.unwrap();
    store.create_user(user("alice", "k1")).await.unwrap();
    assert!(matches!(
        store.create_user(user("alice", "k9")).await,
        Err(StoreError::UserExists)
    ));
    assert_eq!(store.unregistered_users().await.unwrap().len(), 1);
    store.mark_registered("alice").await.unwrap();
    assert!(store.unregistered_users().await.unwrap().is_empty());
    assert_eq!(
        store
            .user_by_token_hash("hash-alice")
            .await
            .unwrap()
            .as_deref(),
        Some("alice")
    );
    store.create_user(user("ghost", "k0")).await.unwrap();
    store.delete_unregistered_user("ghost").await.unwrap();
    assert!(store.user("ghost").await.unwrap().is_none());

    // The pending cap, and a DPoP proof accepted once.
    let proof = || Some(("p1".to_owned(), 1100));
    store
        .create_request(request("r1", "alice", 1000), proof(), 2)
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_request(request("r2", "alice", 1000), proof(), 2)
            .await,
        Err(StoreError::ProofReplayed)
    ));
    store
        .create_request(request("r2", "alice", 1001), None, 2)
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_request(request("r3", "alice", 1002), None, 2)
            .await,
        Err(StoreError::TooManyPending)
    ));
    let page = store
        .pending_for_user("alice", 1002, None, 1)
        .await
        .unwrap();
    assert_eq!(page[0].id, "r1");
    let next = store
        .pending_for_user("alice", 1002, Some((page[0].created_at, "r1")), 10)
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, "r2");

    // A wrong code, then the right one: one mandate stored; ended requests lose their code.
    let attempt =
        |user: &str, right: bool, now, mandate: Option<&str>, evidence: Option<&str>| Attempt {
            id: "r1".into(),
            user_id: user.into(),
            code_matches: Box::new(move |code| right && code == "sealed-code"),
            now,
            max_attempts: 3,
            mandate: mandate.map(|m| (m.to_owned(), 2000)),
            evidence: evidence.map(str::to_owned),
        };
    assert!(matches!(
        store
            .approve(attempt("alice", false, 1003, None, None))
            .await
            .unwrap(),
        Approval::WrongCode { remaining: 2 }
    ));
    assert!(matches!(
        store
            .approve(attempt("bob", true, 1003, Some("m"), None))
            .await,
        Err(StoreError::NotYours)
    ));
    // A right code without a mandate changes nothing.
    assert!(matches!(
        store
            .approve(attempt("alice", true, 1003, None, None))
            .await,
        Err(StoreError::Mint(_))
    ));
    assert_eq!(store.request("r1").await.unwrap().unwrap().attempts, 1);
    // Eight at once, each with its own mandate: one is stored and answered, the others find
    // the request approved.
    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let store = store.clone();
            let attempt = attempt(
                "alice",
                true,
                1004,
                Some(&format!("mandate-{n}")),
                Some(r#"{"evidence":1}"#),
            );
            tokio::spawn(async move { store.approve(attempt).await.unwrap() })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    let winners: Vec<String> = outcomes
        .iter()
        .filter_map(|o| match o {
            Approval::Approved(row) => row.mandate.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| matches!(
        o,
        Approval::Approved(_) | Approval::NotPending(Status::Approved)
    )));
    let approved = store.request("r1").await.unwrap().unwrap();
    assert_eq!(
        (
            approved.status,
            approved.otp.as_str(),
            approved.mandate.as_deref()
        ),
        (Status::Approved, "", winners.first().map(String::as_str))
    );
    // The evidence went in with the approval, once (SPEC §12).
    assert_eq!(
        store.evidence("r1").await.unwrap().as_deref(),
        Some(r#"{"evidence":1}"#)
    );
    assert_eq!(store.evidence("r2").await.unwrap(), None);

    // Passkeys: per user, oldest first, one credential id once for anyone.
    store
        .add_passkey("alice", "c1", "{\"n\":1}", 1010)
        .await
        .unwrap();
    store
        .add_passkey("alice", "c2", "{\"n\":2}", 1011)
        .await
        .unwrap();
    assert!(matches!(
        store.add_passkey("alice", "c1", "{}", 1012).await,
        Err(StoreError::CredentialExists)
    ));
    store.update_passkey("c1", "{\"n\":3}").await.unwrap();
    assert_eq!(
        store.passkeys("alice").await.unwrap(),
        ["{\"n\":3}", "{\"n\":2}"]
    );
    assert!(store.passkeys("nobody").await.unwrap().is_empty());
    let denied = store.deny("r2", "alice", 1005).await.unwrap().unwrap();
    assert_eq!(denied.status, Status::Denied);
    assert_eq!(
        store.deny("r2", "alice", 1005).await.unwrap().unwrap_err(),
        Status::Denied
    );

    // Rotation: the old kid is retired until the directory revokes it.
    assert_eq!(
        store.rotate_key("alice", "k2", &[9], 1100).await.unwrap(),
        "k1"
    );
    assert_eq!(store.user("alice").await.unwrap().unwrap().kid, "k2");
    assert_eq!(store.retired_unrevoked().await.unwrap(), ["k1"]);
    assert_eq!(store.key_revoked("k1", 1101).await.unwrap(), None);
    assert!(store.retired_unrevoked().await.unwrap().is_empty());
    assert_eq!(
        store.key_revoked("k2", 1102).await.unwrap().as_deref(),
        Some("alice")
    );
    assert_eq!(
        store.user("alice").await.unwrap().unwrap().key_revoked_at,
        Some(1102)
    );
    assert!(matches!(
        store.rotate_key("nobody", "k3", &[9], 1103).await,
        Err(StoreError::NotFound)
    ));

    // The sweep (SPEC §9). r1 is approved (deadline 1300), r2 denied (1301); three more wait,
    // with deadlines 2300, 2301 and 3300.
    for (id, created_at) in [("r4", 2000), ("r5", 2001), ("r6", 3000)] {
        store
            .create_request(request(id, "alice", created_at), None, 10)
            .await
            .unwrap();
    }
    // Pending past the deadline ends, oldest first, `limit` at a time; nothing is deleted
    // before `delete_before`.
    assert_eq!(store.sweep_requests(2301, 0, 1).await.unwrap(), (1, 0));
    let r4 = store.request("r4").await.unwrap().unwrap();
    assert_eq!((r4.status, r4.otp.as_str()), (Status::Expired, ""));
    assert_eq!(
        store.request("r5").await.unwrap().unwrap().status,
        Status::PendingApproval
    );
    assert_eq!(store.sweep_requests(2301, 0, 10).await.unwrap(), (1, 0));
    assert_eq!(store.sweep_requests(2301, 0, 10).await.unwrap(), (0, 0));
    // Ended without a mandate by `delete_before`: deleted, `limit` at a time; approved stays.
    assert_eq!(store.sweep_requests(2301, 2300, 1).await.unwrap(), (0, 1));
    assert!(store.request("r2").await.unwrap().is_none());
    assert!(store.request("r4").await.unwrap().is_some());
    assert_eq!(store.sweep_requests(2301, 2300, 10).await.unwrap(), (0, 1));
    assert!(store.request("r4").await.unwrap().is_none());
    let r1 = store.request("r1").await.unwrap().unwrap();
    assert_eq!(r1.status, Status::Approved);
    assert!(r1.mandate.is_some());
    assert!(store.evidence("r1").await.unwrap().is_some());
    let r5 = store.request("r5").await.unwrap().unwrap();
    assert_eq!((r5.status, r5.otp.as_str()), (Status::Expired, ""));
    let r6 = store.request("r6").await.unwrap().unwrap();
    assert_eq!(
        (r6.status, r6.otp.as_str()),
        (Status::PendingApproval, "sealed-code")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spec11_the_sqlite_store_keeps_the_rules() {
    let tmp = tempfile::tempdir().unwrap();
    contract(Arc::new(SqliteStore::open(tmp.path()).unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spec11_the_postgres_store_keeps_the_rules() {
    let db = PgDatabase::create();
    let url = db.url().to_owned();
    let store = tokio::task::spawn_blocking(move || PgStore::open(&url, 8))
        .await
        .unwrap()
        .unwrap();
    contract(Arc::new(store)).await;
}
