//! The client and its cache against the real key directory on a loopback port.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::Duration;

use ap2_directory_client::{ClientError, DirectoryClient, DirectoryClientConfig};
use ap2_mandate::{KeyResolver, KeyStatus, Kid, LocalSigner, ResolveError, Signer};
use secrecy::SecretString;

const ISSUER: &str = "https://wallet.example";

struct Setup {
    directory: key_directory::Running,
    token: SecretString,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = key_directory::Config::local(
        dir.path().join("keys.db"),
        vec![format!("{ISSUER}=tok").parse().unwrap()],
    );
    Setup {
        directory: key_directory::spawn(config).await.unwrap(),
        token: SecretString::from("tok"),
        _dir: dir,
    }
}

fn client(url: &str, fresh: Duration, unknown: Duration) -> DirectoryClient {
    DirectoryClient::new(
        url,
        DirectoryClientConfig {
            fresh_for: fresh,
            unknown_for: unknown,
            timeout: Duration::from_millis(500),
            ..Default::default()
        },
    )
    .unwrap()
}

async fn registered(s: &Setup, c: &DirectoryClient, subject: &str) -> LocalSigner {
    let key = LocalSigner::generate().unwrap();
    let (view, created) = c
        .register(&s.token, subject, &key.public_key().to_jwk(key.kid()))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(view.kid, key.kid().as_str());
    key
}

#[tokio::test]
async fn resolves_a_key_with_its_issuer_subject_and_a_working_verification_key() {
    let s = setup().await;
    let c = client(
        &s.directory.url(),
        Duration::from_secs(60),
        Duration::from_secs(5),
    );
    let key = registered(&s, &c, "alice").await;
    let record = c.resolve(key.kid()).await.unwrap();
    assert_eq!(record.issuer, ISSUER);
    assert_eq!(record.subject, "alice");
    assert_eq!(record.status, KeyStatus::Active);
    let sig = key.sign_es256(b"msg").unwrap();
    assert!(record.key.verify_es256(b"msg", &sig));
}

#[tokio::test]
async fn fresh_entries_are_served_from_memory_even_with_the_directory_gone() {
    let s = setup().await;
    let c = client(
        &s.directory.url(),
        Duration::from_secs(60),
        Duration::from_secs(5),
    );
    let key = registered(&s, &c, "alice").await;
    c.resolve(key.kid()).await.unwrap();
    s.directory.stop().await.unwrap();
    for _ in 0..10 {
        assert!(c.resolve(key.kid()).await.is_ok());
    }
    assert_eq!(c.upstream_fetches(), 1);
}

#[tokio::test]
async fn concurrent_misses_for_one_kid_make_one_upstream_request() {
    let s = setup().await;
    let c = client(
        &s.directory.url(),
        Duration::from_secs(60),
        Duration::from_secs(5),
    );
    let key = registered(&s, &c, "alice").await;
    let kid = Arc::new(key.kid().clone());
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (c, kid) = (c.clone(), kid.clone());
            tokio::spawn(async move { c.resolve(&kid).await.map(|r| r.subject.clone()) })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "alice");
    }
    assert_eq!(c.upstream_fetches(), 1);
}

#[tokio::test]
async fn unknown_kids_are_remembered_briefly() {
    let s = setup().await;
    let c = client(
        &s.directory.url(),
        Duration::from_secs(60),
        Duration::from_millis(300),
    );
    let kid = Kid::parse("not-registered-yet").unwrap();
    assert_eq!(c.resolve(&kid).await.unwrap_err(), ResolveError::Unknown);
    assert_eq!(c.resolve(&kid).await.unwrap_err(), ResolveError::Unknown);
    assert_eq!(c.upstream_fetches(), 1);
    // Once the negative entry has expired, the directory is asked again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(c.resolve(&kid).await.unwrap_err(), ResolveError::Unknown);
    assert_eq!(c.upstream_fetches(), 2);
}

#[tokio::test]
async fn a_stale_entry_with_the_directory_unreachable_is_unavailable_never_an_accept() {
    let s = setup().await;
    let c = client(
        &s.directory.url(),
        Duration::from_millis(300),
        Duration::from_secs(5),
    );
    let key = registered(&s, &c, "alice").await;
    assert!(c.resolve(key.kid()).await.is_ok());
    s.directory.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(
        c.resolve(key.kid()).await.unwrap_err(),
        ResolveError::Unavailable(_)
    ));
    let never = client(
        "http://127.0.0.1:1",
        Duration::from_secs(60),
        Duration::from_secs(5),
    );
    // Unavailable says why, down to the socket: reqwest's own text names only the URL.
    match never.resolve(key.kid()).await.unwrap_err() {
        ResolveError::Unavailable(why) => {
            assert!(why.contains("Connection refused"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    match never
        .register(&s.token, "bob", &serde_json::json!({}))
        .await
    {
        Err(ClientError::Unavailable(why)) => {
            assert!(why.contains("Connection refused"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_revoked_key_is_seen_within_the_cache_max_age() {
    let s = setup().await;
    let reader = client(
        &s.directory.url(),
        Duration::from_millis(300),
        Duration::from_secs(5),
    );
    let writer = client(
        &s.directory.url(),
        Duration::from_secs(60),
        Duration::from_secs(5),
    );
    let key = registered(&s, &writer, "alice").await;
    assert_eq!(
        reader.resolve(key.kid()).await.unwrap().status,
        KeyStatus::Active
    );
    let view = writer.revoke(&s.token, key.kid()).await.unwrap();
    assert_eq!(view.status, "revoked");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        reader.resolve(key.kid()).await.unwrap().status,
        KeyStatus::Revoked
    );
}

#[tokio::test]
async fn refusals_carry_the_directory_problem_code() {
    let s = setup().await;
    let c = client(
        &s.directory.url(),
        Duration::from_secs(60),
        Duration::from_secs(5),
    );
    let key = LocalSigner::generate().unwrap();
    let mut jwk = key.public_key().to_jwk(key.kid());
    jwk["d"] = serde_json::json!("AAAA");
    let err = c.register(&s.token, "alice", &jwk).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused { status: 422, code, .. } if code == "jwk_private_member"),
        "{err:?}"
    );
    let err = c
        .register(
            &SecretString::from("wrong"),
            "alice",
            &key.public_key().to_jwk(key.kid()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused { status: 401, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn spec9_lookups_of_uncached_kids_are_rate_limited_and_cached_kids_are_not() {
    let s = setup().await;
    let c = DirectoryClient::new(
        &s.directory.url(),
        DirectoryClientConfig {
            fetch_rate: Some(10.0),
            fetch_burst: 20.0,
            ..Default::default()
        },
    )
    .unwrap();
    let key = registered(&s, &c, "alice").await;
    c.resolve(key.kid()).await.unwrap();
    let started = std::time::Instant::now();
    let (mut unknown, mut throttled) = (0, 0);
    for _ in 0..300 {
        let stranger = LocalSigner::generate().unwrap();
        match c.resolve(stranger.kid()).await {
            Err(ResolveError::Unknown) => unknown += 1,
            Err(ResolveError::Unavailable(_)) => throttled += 1,
            Ok(_) => panic!("an unregistered kid resolved"),
        }
        // The cached kid is served every time, flood or not.
        assert!(c.resolve(key.kid()).await.is_ok());
    }
    let allowed = 20.0 + 10.0 * started.elapsed().as_secs_f64() + 1.0;
    let fetched = c.upstream_fetches() - 1;
    assert!(
        (fetched as f64) <= allowed,
        "{fetched} fetches, at most {allowed:.0} allowed"
    );
    assert_eq!(unknown + throttled, 300);
    assert_eq!(unknown, fetched);
    assert!(throttled > 0);
}
