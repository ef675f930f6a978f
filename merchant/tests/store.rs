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

/// A session's owner and its cap.
type Owner = Option<(&'static str, u32)>;

/// `n` sessions created at once, the `i`th with `make(i)`'s id and owner with its cap (created
/// at 1000, counting the owner's sessions after 50); how many were created, by `i % 4`. A
/// refusal is `TooManySessions` for an owned session, a backend error (a duplicate id) for an
/// unowned one.
async fn create_together(
    store: &Arc<dyn MerchantStore>,
    n: usize,
    make: fn(usize) -> (String, Owner),
) -> [usize; 4] {
    let creates: Vec<_> = (0..n)
        .map(|i| {
            let store = store.clone();
            let (id, owner) = make(i);
            tokio::spawn(async move {
                let row = session(&id, owner.map(|(jkt, _)| jkt), 1000);
                (
                    i,
                    owner,
                    store
                        .create_session(&row, owner.map(|(_, max)| (max, 50)))
                        .await,
                )
            })
        })
        .collect();
    let mut created = [0; 4];
    for create in creates {
        match create.await.unwrap() {
            (i, _, Ok(())) => created[i % 4] += 1,
            (_, Some(_), Err(StoreError::TooManySessions))
            | (_, None, Err(StoreError::Backend(_))) => {}
            (i, _, Err(e)) => panic!("{i}: {e}"),
        }
    }
    created
}

/// The rules, on `store`.
async fn contract(store: Arc<dyn MerchantStore>) {
    store.ping().await.unwrap();
    // Sessions and the per-owner cap (open, unexpired sessions only).
    for i in 0..3 {
        store
            .create_session(
                &session(&format!("s{i}"), Some("jkt-a"), 100),
                Some((3, 50)),
            )
            .await
            .unwrap();
    }
    assert!(matches!(
        store
            .create_session(&session("s3", Some("jkt-a"), 100), Some((3, 50)))
            .await,
        Err(StoreError::TooManySessions)
    ));
    // Sessions created before `opened_after` do not count; other owners are not affected.
    store
        .create_session(&session("s4", Some("jkt-a"), 100), Some((3, 100)))
        .await
        .unwrap();
    store
        .create_session(&session("s5", Some("jkt-b"), 100), Some((3, 50)))
        .await
        .unwrap();
    // Many at once (one transaction on PostgreSQL): an owner's cap holds across them, and
    // other owners and unowned sessions are not affected.
    let created = create_together(&store, 40, |i| match i % 4 {
        0 | 1 => (format!("c{i}"), Some(("jkt-c", 5))),
        2 => (format!("d{i}"), Some(("jkt-d", 20))),
        _ => (format!("u{i}"), None),
    })
    .await;
    assert_eq!(created[0] + created[1], 5, "jkt-c's cap of 5");
    assert_eq!((created[2], created[3]), (10, 10));
    // An id drawn twice is stored once (the batch it failed is tried one by one).
    let created = create_together(&store, 12, |i| match i % 4 {
        0 | 1 => ("dup".to_owned(), None),
        _ => (format!("e{i}"), Some(("jkt-e", 20))),
    })
    .await;
    assert_eq!((created[0] + created[1], created[2] + created[3]), (1, 6));
    let got = store.session("s0").await.unwrap().unwrap();
    assert_eq!(
        (got.status, got.owner_jkt.as_deref()),
        (SessionStatus::ReadyForComplete, Some("jkt-a"))
    );
    assert!(store.session("nope").await.unwrap().is_none());
    // Many reads at once (one statement on PostgreSQL): each gets its own session, or none.
    let ids = ["s0", "nope", "s2", "s0", "s5", "missing", "s1"];
    let reads: Vec<_> = (0..40)
        .map(|n| {
            let (store, id) = (store.clone(), ids[n % ids.len()]);
            tokio::spawn(async move { (id, store.session(id).await.unwrap()) })
        })
        .collect();
    for read in reads {
        let (id, got) = read.await.unwrap();
        let expected = id.starts_with('s').then_some(id);
        assert_eq!(got.as_ref().map(|s| s.id.as_str()), expected);
    }

    // One order per session, one session per (iss, jti).
    store
        .begin_order(&order("o1", "s0", "j1", 200))
        .await
        .unwrap();
    assert!(matches!(
        store.begin_order(&order("o2", "s0", "j2", 200)).await,
        Err(StoreError::NotReady(SessionStatus::Charging))
    ));
    assert!(matches!(
        store.begin_order(&order("o3", "s1", "j1", 200)).await,
        Err(StoreError::MandateUsed)
    ));
    assert!(matches!(
        store.begin_order(&order("o4", "nope", "j4", 200)).await,
        Err(StoreError::NotFound)
    ));
    store.finish_order("s0", "o1", "ch_1").await.unwrap();
    assert_eq!(
        store.session("s0").await.unwrap().unwrap().status,
        SessionStatus::Completed
    );
    let paid = store.order("o1").await.unwrap().unwrap();
    assert_eq!(
        (paid.charge_id.as_deref(), paid.amount),
        (Some("ch_1"), 8999)
    );

    // A failed charge reopens the session and frees the jti.
    store
        .begin_order(&order("o5", "s1", "j5", 200))
        .await
        .unwrap();
    store.abort_order("o5").await.unwrap();
    assert!(store.order("o5").await.unwrap().is_none());
    let reopened = store.session("s1").await.unwrap().unwrap();
    assert_eq!(
        (reopened.status, reopened.order_id),
        (SessionStatus::ReadyForComplete, None)
    );
    store
        .begin_order(&order("o6", "s1", "j5", 200))
        .await
        .unwrap();
    // The aborted order's charge recorded late (a sweep's, say) does not complete the session
    // another order now holds, and says so.
    assert!(matches!(
        store.finish_order("s1", "o5", "ch_5").await,
        Err(StoreError::OrderNotHeld)
    ));
    let held = store.session("s1").await.unwrap().unwrap();
    assert_eq!(
        (held.status, held.order_id.as_deref()),
        (SessionStatus::Charging, Some("o6"))
    );
    assert!(
        store
            .order("o6")
            .await
            .unwrap()
            .unwrap()
            .charge_id
            .is_none()
    );
    // Nor does a charge for a session that has no such order, or does not exist.
    assert!(matches!(
        store.finish_order("nope", "o1", "ch_1").await,
        Err(StoreError::OrderNotHeld)
    ));
    // A paid order's charge recorded again (the sweep and the completion both) is no error.
    store.finish_order("s0", "o1", "ch_1").await.unwrap();
    assert_eq!(
        store.session("s0").await.unwrap().unwrap().status,
        SessionStatus::Completed
    );

    // Racing completions of one session, all submitted at once (one group commit or several):
    // exactly one begins, the others see it charging.
    store
        .create_session(&session("race", None, 300), None)
        .await
        .unwrap();
    let racers: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .begin_order(&order(&format!("r{i}"), "race", &format!("rj{i}"), 300))
                    .await
            })
        })
        .collect();
    let mut winners = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(()) => winners += 1,
            Err(StoreError::NotReady(SessionStatus::Charging)) => {}
            Err(e) => panic!("a racing completion failed with {e}"),
        }
    }
    assert_eq!(winners, 1);

    // Many completions at once, each with its own answer: fresh sessions with fresh mandates
    // begin; a mandate presented for two sessions pays one of them; an unknown session is
    // not found; a paid session is not ready.
    for i in 0..40 {
        store
            .create_session(&session(&format!("m{i}"), None, 300), None)
            .await
            .unwrap();
    }
    let calls: Vec<_> = (0..60)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let (session, jti) = match i {
                    0..40 => (format!("m{i}"), format!("mj{i}")),
                    // The mandates of m0..m9 again, for m10..m19 (which also have their own).
                    40..50 => (format!("m{}", i - 30), format!("mj{}", i - 40)),
                    50..55 => (format!("missing{i}"), format!("mj{i}")),
                    _ => ("s0".to_owned(), format!("mj{i}")),
                };
                (
                    i,
                    store
                        .begin_order(&order(&format!("mo{i}"), &session, &jti, 300))
                        .await,
                )
            })
        })
        .collect();
    let (mut begun, mut refused) = (Vec::new(), 0);
    for call in calls {
        let (i, result) = call.await.unwrap();
        match (i, result) {
            (0..50, Ok(())) => begun.push(i),
            (0..50, Err(StoreError::MandateUsed)) => refused += 1,
            (10..20 | 40..50, Err(StoreError::NotReady(SessionStatus::Charging))) => refused += 1,
            (50..55, Err(StoreError::NotFound)) => {}
            (55.., Err(StoreError::NotReady(SessionStatus::Completed))) => {}
            (i, other) => panic!("completion {i}: {other:?}"),
        }
    }
    // m10..m19 each had two orders and m0..m9's mandates two sessions: of each such trio one
    // or two began, never three; every other session began.
    assert_eq!(begun.len() + refused, 50);
    assert!((30..=40).contains(&begun.len()), "{} began", begun.len());
    // What was answered is what is stored: an order for each that began, none for the others.
    for i in 0..50 {
        let stored = store.order(&format!("mo{i}")).await.unwrap();
        assert_eq!(stored.is_some(), begun.contains(&i), "order mo{i}");
    }
    for i in &begun {
        let order = store.order(&format!("mo{i}")).await.unwrap().unwrap();
        let session = store.session(&order.session_id).await.unwrap().unwrap();
        assert_eq!(
            (session.status, session.order_id.as_deref()),
            (SessionStatus::Charging, Some(order.id.as_str()))
        );
    }

    // Expired open sessions go; charging and completed ones stay.
    let deleted = store.delete_expired_sessions(150).await.unwrap();
    // s2, s4, s5 (s3 was refused; s0 is completed, s1 charging).
    assert_eq!(deleted, 3);
    assert!(store.session("s2").await.unwrap().is_none());
    assert!(store.session("s0").await.unwrap().is_some());
    assert!(store.session("s1").await.unwrap().is_some());
}

/// How many of the contract's concurrent orders began (all still charging).
async fn begun_in_contract(store: &Arc<dyn MerchantStore>) -> usize {
    let mut n = 0;
    for i in 0..50 {
        n += usize::from(store.order(&format!("mo{i}")).await.unwrap().is_some());
    }
    n
}

/// After [`contract`]: orders whose charge never finished, found by age.
async fn stuck_orders(store: Arc<dyn MerchantStore>) {
    // An order whose charge never finished is found once it is old enough, not before.
    store
        .create_session(&session("stuck", None, 1000), None)
        .await
        .unwrap();
    store
        .begin_order(&order("os", "stuck", "js", 1000))
        .await
        .unwrap();
    let stuck = async |before| -> Vec<String> {
        store
            .stuck_orders(before)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.id)
            .collect()
    };
    // Before 1000: the contract's charges (begun at 200 and 300); this one too after it.
    assert_eq!(stuck(1000).await.len(), 2 + begun_in_contract(&store).await);
    assert!(stuck(1001).await.contains(&"os".to_owned()));
    store.finish_order("stuck", "os", "ch_late").await.unwrap();
    assert!(!stuck(1001).await.contains(&"os".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec11_the_sqlite_store_keeps_the_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn MerchantStore> = Arc::new(SqliteStore::open(tmp.path()).unwrap());
    contract(store.clone()).await;
    stuck_orders(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec11_the_postgres_store_keeps_the_rules() {
    let db = PgDatabase::create();
    let store = Arc::new(PgStore::open(db.url(), 8).await.unwrap());
    contract(store.clone()).await;
    stuck_orders(store.clone()).await;
    // Opening again (another instance starting) migrates nothing twice.
    let again = PgStore::open(db.url(), 2).await.unwrap();
    assert_eq!(
        again.session("stuck").await.unwrap().unwrap().status,
        SessionStatus::Completed
    );
    let versions: i64 = db.with_client(|c| {
        c.query_one("SELECT COUNT(*) FROM merchant.schema_migrations", &[])
            .unwrap()
            .get(0)
    });
    assert_eq!(versions, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec11_an_order_paid_before_migration_2_keeps_its_charge_id() {
    let db = PgDatabase::create();
    let store = PgStore::open(db.url(), 2).await.unwrap();
    store
        .create_session(&session("old", None, 100), None)
        .await
        .unwrap();
    store
        .begin_order(&order("o_old", "old", "j_old", 100))
        .await
        .unwrap();
    store
        .finish_order("old", "o_old", "ch_session")
        .await
        .unwrap();
    // As migration 2 left an order paid before it: the charge id on the order's row, none on
    // its session.
    db.with_client(|c| {
        c.batch_execute(
            "UPDATE merchant.orders SET charge_id = 'ch_order' WHERE id = 'o_old';
             UPDATE merchant.sessions SET charge_id = NULL WHERE id = 'old';",
        )
        .unwrap();
    });
    let paid = store.order("o_old").await.unwrap().unwrap();
    assert_eq!(paid.charge_id.as_deref(), Some("ch_order"));
    // A session's own charge id is the one read when both are there.
    db.with_client(|c| {
        c.batch_execute("UPDATE merchant.sessions SET charge_id = 'ch_session' WHERE id = 'old'")
            .unwrap();
    });
    let paid = store.order("o_old").await.unwrap().unwrap();
    assert_eq!(paid.charge_id.as_deref(), Some("ch_session"));
}
