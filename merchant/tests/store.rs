//! One suite, both stores (SPEC §11): SQLite in a temporary directory and PostgreSQL in a fresh
//! database of a real server. Every rule the handlers rely on holds the same on each.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use ap2_testkit::PgDatabase;
use merchant::store::{
    MerchantStore, OrderRow, PgStore, SessionRow, SessionStatus, SqliteStore, StoreError,
};

fn session(id: &str, owner: Option<&str>, created_at: i64) -> SessionRow {
    SessionRow {
        id: id.into(),
        cart: r#"{"total":1}"#.into(),
        cart_hash: "sha256-x".into(),
        status: SessionStatus::ReadyForComplete,
        created_at,
        order_id: None,
        owner_jkt: owner.map(Into::into),
    }
}

fn order(id: &str, session_id: &str, jti: &str, created_at: i64) -> OrderRow {
    OrderRow {
        id: id.into(),
        session_id: session_id.into(),
        amount: 8999,
        currency: "USD".into(),
        mandate: "m".into(),
        claims: "{}".into(),
        iss: "https://wallet.example".into(),
        jti: jti.into(),
        sub: "alice".into(),
        kid: "k".into(),
        agent_id: "agent-7".into(),
        charge_id: None,
        created_at,
        agent_jkt: None,
    }
}

/// The rules, on `store`.
fn contract(store: Arc<dyn MerchantStore>) {
    store.ping().unwrap();
    // Sessions and the per-owner cap (open, unexpired sessions only).
    for i in 0..3 {
        store
            .create_session(
                &session(&format!("s{i}"), Some("jkt-a"), 100),
                Some((3, 50)),
            )
            .unwrap();
    }
    assert!(matches!(
        store.create_session(&session("s3", Some("jkt-a"), 100), Some((3, 50))),
        Err(StoreError::TooManySessions)
    ));
    // Sessions created before `opened_after` do not count; other owners are not affected.
    store
        .create_session(&session("s4", Some("jkt-a"), 100), Some((3, 100)))
        .unwrap();
    store
        .create_session(&session("s5", Some("jkt-b"), 100), Some((3, 50)))
        .unwrap();
    let got = store.session("s0").unwrap().unwrap();
    assert_eq!(
        (got.status, got.owner_jkt.as_deref()),
        (SessionStatus::ReadyForComplete, Some("jkt-a"))
    );
    assert!(store.session("nope").unwrap().is_none());

    // One order per session, one session per (iss, jti).
    store.begin_order(&order("o1", "s0", "j1", 200)).unwrap();
    assert!(matches!(
        store.begin_order(&order("o2", "s0", "j2", 200)),
        Err(StoreError::NotReady(SessionStatus::Charging))
    ));
    assert!(matches!(
        store.begin_order(&order("o3", "s1", "j1", 200)),
        Err(StoreError::MandateUsed)
    ));
    assert!(matches!(
        store.begin_order(&order("o4", "nope", "j4", 200)),
        Err(StoreError::NotFound)
    ));
    store.finish_order("o1", "ch_1").unwrap();
    assert_eq!(
        store.session("s0").unwrap().unwrap().status,
        SessionStatus::Completed
    );
    let paid = store.order("o1").unwrap().unwrap();
    assert_eq!(
        (paid.charge_id.as_deref(), paid.amount),
        (Some("ch_1"), 8999)
    );

    // A failed charge reopens the session and frees the jti.
    store.begin_order(&order("o5", "s1", "j5", 200)).unwrap();
    store.abort_order("o5").unwrap();
    assert!(store.order("o5").unwrap().is_none());
    let reopened = store.session("s1").unwrap().unwrap();
    assert_eq!(
        (reopened.status, reopened.order_id),
        (SessionStatus::ReadyForComplete, None)
    );
    store.begin_order(&order("o6", "s1", "j5", 200)).unwrap();

    // Racing completions of one session: exactly one begins.
    store
        .create_session(&session("race", None, 300), None)
        .unwrap();
    let winners: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                scope.spawn(move || {
                    store
                        .begin_order(&order(&format!("r{i}"), "race", &format!("rj{i}"), 300))
                        .is_ok()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| usize::from(h.join().unwrap()))
            .sum()
    });
    assert_eq!(winners, 1);

    // Expired open sessions go; charging and completed ones stay.
    let deleted = store.delete_expired_sessions(150).unwrap();
    // s2, s4, s5 (s3 was refused; s0 is completed, s1 charging).
    assert_eq!(deleted, 3);
    assert!(store.session("s2").unwrap().is_none());
    assert!(store.session("s0").unwrap().is_some());
    assert!(store.session("s1").unwrap().is_some());
}

/// After [`contract`]: orders whose charge never finished, found by age.
fn stuck_orders(store: Arc<dyn MerchantStore>) {
    // An order whose charge never finished is found once it is old enough, not before.
    store
        .create_session(&session("stuck", None, 1000), None)
        .unwrap();
    store
        .begin_order(&order("os", "stuck", "js", 1000))
        .unwrap();
    let stuck = |before| -> Vec<String> {
        store
            .stuck_orders(before)
            .unwrap()
            .into_iter()
            .map(|o| o.id)
            .collect()
    };
    // Before 1000: the contract's two charges (begun at 200 and 300); this one too after it.
    assert_eq!(stuck(1000).len(), 2);
    assert!(stuck(1001).contains(&"os".to_owned()));
    store.finish_order("os", "ch_late").unwrap();
    assert!(!stuck(1001).contains(&"os".to_owned()));
}

#[test]
fn spec11_the_sqlite_store_keeps_the_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn MerchantStore> = Arc::new(SqliteStore::open(tmp.path()).unwrap());
    contract(store.clone());
    stuck_orders(store);
}

#[test]
fn spec11_the_postgres_store_keeps_the_rules() {
    let db = PgDatabase::create();
    let store = Arc::new(PgStore::open(db.url(), 8).unwrap());
    contract(store.clone());
    stuck_orders(store.clone());
    // Opening again (another instance starting) migrates nothing twice.
    let again = PgStore::open(db.url(), 2).unwrap();
    assert_eq!(
        again.session("stuck").unwrap().unwrap().status,
        SessionStatus::Completed
    );
    let versions: i64 = db.with_client(|c| {
        c.query_one("SELECT COUNT(*) FROM merchant.schema_migrations", &[])
            .unwrap()
            .get(0)
    });
    assert_eq!(versions, 1);
}
