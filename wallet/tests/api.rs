//! The wallet over real HTTP, with a real key directory on loopback.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use ap2_directory_client::{DirectoryClient, DirectoryClientConfig};
use ap2_mandate::memory::MemoryReplayGuard;
use ap2_mandate::{Cart, Clock, Consume, MerchantId, Presentation, Verifier, VerifierConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ISSUER: &str = "https://wallet.example";
const DIRECTORY_TOKEN: &str = "directory-token";
const ADMIN: &str = "admin-token";
const AGENT: &str = "agent-7";
const AGENT_TOKEN: &str = "agent-7-token";
const OTHER_AGENT_TOKEN: &str = "agent-8-token";

/// A clock the test moves.
#[derive(Clone)]
struct TestClock(Arc<AtomicI64>);

impl Clock for TestClock {
    fn now_unix(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl TestClock {
    fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

struct World {
    directory: Option<key_directory::Running>,
    directory_db: PathBuf,
    wallet: Option<wallet::Running>,
    wallet_dir: PathBuf,
    clock: TestClock,
    http: reqwest::Client,
    _tmp: tempfile::TempDir,
}

/// These tests are about users, codes and minting, with unbound mandates; tests/dpop.rs has
/// SPEC §8's binding.
fn wallet_config(wallet_dir: PathBuf, directory_url: &str) -> wallet::Config {
    let mut config = wallet::Config::local(
        ISSUER,
        wallet_dir,
        directory_url,
        DIRECTORY_TOKEN,
        ADMIN,
        vec![
            format!("{AGENT}={AGENT_TOKEN}").parse().unwrap(),
            format!("agent-8={OTHER_AGENT_TOKEN}").parse().unwrap(),
        ],
    );
    config.allow_unbound_mandates = true;
    config
}

async fn start_directory(db: PathBuf) -> key_directory::Running {
    key_directory::spawn(key_directory::Config::local(
        db,
        vec![format!("{ISSUER}={DIRECTORY_TOKEN}").parse().unwrap()],
    ))
    .await
    .unwrap()
}

impl World {
    async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// A world whose wallet's configuration `change` adjusts.
    async fn with(change: impl FnOnce(&mut wallet::Config)) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let directory_db = tmp.path().join("keys.db");
        let wallet_dir = tmp.path().join("wallet");
        let directory = start_directory(directory_db.clone()).await;
        let clock = TestClock(Arc::new(AtomicI64::new(1_800_000_000)));
        let mut config = wallet_config(wallet_dir.clone(), &directory.url());
        change(&mut config);
        let wallet = wallet::spawn_with_clock(config, Arc::new(clock.clone()))
            .await
            .unwrap();
        Self {
            directory: Some(directory),
            directory_db,
            wallet: Some(wallet),
            wallet_dir,
            clock,
            http: reqwest::Client::new(),
            _tmp: tmp,
        }
    }

    fn wallet_url(&self, path: &str) -> String {
        format!("{}{path}", self.wallet.as_ref().unwrap().url())
    }

    fn directory_url(&self) -> String {
        self.directory.as_ref().unwrap().url()
    }

    async fn restart_wallet(&mut self) {
        self.wallet.take().unwrap().stop().await.unwrap();
        let config = wallet_config(self.wallet_dir.clone(), &self.directory_url());
        self.wallet = Some(
            wallet::spawn_with_clock(config, Arc::new(self.clock.clone()))
                .await
                .unwrap(),
        );
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), self.wallet_url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn create_user(&self, user_id: &str) -> (String, String) {
        let (status, body) = self
            .call(
                "POST",
                "/v1/users",
                Some(ADMIN),
                Some(json!({"user_id": user_id})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["kid"].as_str().unwrap().to_owned(),
            body["user_token"].as_str().unwrap().to_owned(),
        )
    }

    async fn request_mandate(&self, user_id: &str, extra: Value) -> (StatusCode, Value) {
        let mut body = json!({"user_id": user_id, "merchant_id": "acme-corp", "cart": cart_json()});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        self.call(
            "POST",
            "/v1/mandate-requests",
            Some(AGENT_TOKEN),
            Some(body),
        )
        .await
    }

    async fn code_for(&self, user_id: &str, user_token: &str, request_id: &str) -> String {
        let (status, body) = self
            .call(
                "GET",
                &format!("/v1/users/{user_id}/notifications"),
                Some(user_token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let n = body["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["request_id"] == request_id)
            .unwrap_or_else(|| panic!("no notification for {request_id}: {body}"));
        n["otp"].as_str().unwrap().to_owned()
    }

    async fn approve(&self, user_token: &str, id: &str, otp: &str) -> (StatusCode, Value) {
        self.call(
            "POST",
            &format!("/v1/mandate-requests/{id}/approve"),
            Some(user_token),
            Some(json!({"otp": otp})),
        )
        .await
    }
}

fn cart_json() -> Value {
    json!({"merchant_id": "acme-corp", "currency": "USD", "total": 8999,
           "line_items": [{"id": "shoe-001", "title": "Trail Runner", "quantity": 1, "unit_price": 8999}]})
}

fn cart() -> Cart {
    Cart::from_json(cart_json().to_string().as_bytes()).unwrap()
}

/// Verifies a mandate the way a merchant does: keys from the real directory.
async fn verify_at_merchant(
    directory_url: &str,
    token: &str,
    now: i64,
) -> Result<ap2_mandate::VerifiedMandate, ap2_mandate::VerifyError> {
    let keys = DirectoryClient::new(directory_url, DirectoryClientConfig::default()).unwrap();
    let verifier = Verifier::new(
        VerifierConfig::without_binding(MerchantId::parse("acme-corp").unwrap()),
        keys,
        MemoryReplayGuard::new(),
        ap2_mandate::FixedClock(now),
    );
    let cart = cart();
    verifier
        .verify(&Presentation::bearer(token, AGENT, &cart), Consume::Yes)
        .await
}

#[tokio::test]
async fn a_created_user_has_a_key_registered_at_the_directory() {
    let w = World::new().await;
    let (kid, token) = w.create_user("alice").await;
    assert_eq!(token.len(), 43, "256 random bits");
    let key: Value = w
        .http
        .get(format!("{}/v1/keys/{kid}", w.directory_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(key["issuer"], ISSUER);
    assert_eq!(key["subject"], "alice");
    assert_eq!(key["status"], "active");
    assert!(key["jwk"].get("d").is_none());
    // The data directory holds a master key only its owner can read, and no plaintext key.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(w.wallet_dir.join("master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let db = std::fs::read(w.wallet_dir.join("wallet.db")).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&db).contains("PRIVATE KEY"));
    let (status, body) = w
        .call(
            "POST",
            "/v1/users",
            Some(ADMIN),
            Some(json!({"user_id": "alice"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("user_exists"))
    );
}

#[tokio::test]
async fn approved_with_the_right_code_yields_a_mandate_that_verifies_against_the_directory() {
    let w = World::new().await;
    let (kid, user_token) = w.create_user("alice").await;
    let (status, created) = w
        .request_mandate("alice", json!({"max_amount": "100.00", "ttl_seconds": 120}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["status"], "pending_approval");
    assert_eq!(created["cart_hash"], cart().hash().as_str());
    let id = created["id"].as_str().unwrap().to_owned();

    // Nothing is minted before approval.
    let (_, before) = w
        .call(
            "GET",
            &format!("/v1/mandate-requests/{id}"),
            Some(AGENT_TOKEN),
            None,
        )
        .await;
    assert_eq!(before["status"], "pending_approval");
    assert!(before.get("mandate").is_none());

    let otp = w.code_for("alice", &user_token, &id).await;
    assert_eq!(otp.len(), 6);
    let (status, approved) = w.approve(&user_token, &id, &otp).await;
    assert_eq!(status, StatusCode::OK, "{approved}");
    assert_eq!(approved["status"], "approved");

    let (_, after) = w
        .call(
            "GET",
            &format!("/v1/mandate-requests/{id}"),
            Some(AGENT_TOKEN),
            None,
        )
        .await;
    let token = after["mandate"].as_str().unwrap().to_owned();
    // SPEC §2 exactly: header, integer times, 128-bit jti, the scope.
    let parts: Vec<&str> = token.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(
        header,
        json!({"alg": "ES256", "typ": "ap2-intent+jwt", "kid": kid})
    );
    let claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    let now = w.clock.now_unix();
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], "acme-corp");
    assert_eq!(claims["iat"], now);
    assert_eq!(claims["exp"], now + 120);
    assert_eq!(claims["jti"].as_str().unwrap().len(), 22);
    assert_eq!(claims["ap2_intent"], "CART_PURCHASE_V1");
    assert_eq!(
        claims["ap2_scope"],
        json!({"max_amount": "100.00", "currency": "USD", "cart_hash": cart().hash().as_str(), "allow_agent_id": AGENT})
    );

    // It verifies with our verifier against the directory's key...
    let verified = verify_at_merchant(&w.directory_url(), &token, now + 1)
        .await
        .unwrap();
    assert_eq!(verified.claims.sub, "alice");
    // ...and with josekit against the JWK the directory serves.
    let key: Value = w
        .http
        .get(format!("{}/v1/keys/{kid}", w.directory_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk = josekit::jwk::Jwk::from_bytes(key["jwk"].to_string()).unwrap();
    let verifier = josekit::jws::ES256.verifier_from_jwk(&jwk).unwrap();
    let (payload, _) = josekit::jwt::decode_with_verifier(&token, &verifier).unwrap();
    assert_eq!(Value::Object(payload.claims_set().clone()), claims);

    // Approving again does not mint again.
    let (status, body) = w.approve(&user_token, &id, &otp).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("request_not_pending"))
    );
    let (_, again) = w
        .call(
            "GET",
            &format!("/v1/mandate-requests/{id}"),
            Some(&user_token),
            None,
        )
        .await;
    assert_eq!(again["mandate"].as_str(), Some(token.as_str()));
}

#[tokio::test]
async fn three_wrong_codes_lock_the_request_and_nothing_is_minted() {
    let w = World::new().await;
    let (_, user_token) = w.create_user("alice").await;
    let (_, created) = w.request_mandate("alice", json!({})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let otp = w.code_for("alice", &user_token, &id).await;
    let wrong = if otp == "000000" { "111111" } else { "000000" };
    let (status, body) = w.approve(&user_token, &id, wrong).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("otp_invalid"))
    );
    assert!(body["detail"].as_str().unwrap().contains("2 tries left"));
    let (status, _) = w.approve(&user_token, &id, "12345").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, body) = w.approve(&user_token, &id, wrong).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::LOCKED, Some("request_locked"))
    );
    let (status, body) = w.approve(&user_token, &id, &otp).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::LOCKED, Some("request_locked")),
        "the right code after the lock"
    );
    let (_, view) = w
        .call(
            "GET",
            &format!("/v1/mandate-requests/{id}"),
            Some(AGENT_TOKEN),
            None,
        )
        .await;
    assert_eq!(view["status"], "locked");
    assert!(view.get("mandate").is_none());
    // A locked request is no longer offered to the user.
    let (_, n) = w
        .call(
            "GET",
            "/v1/users/alice/notifications",
            Some(&user_token),
            None,
        )
        .await;
    assert_eq!(n["notifications"], json!([]));
}

/// SPEC §9: the wallet's sweep deletes the requests that ended without a mandate once their
/// deadline is `--ended-request-retention-secs` past, untouched pending ones included, and
/// keeps the approved ones.
#[tokio::test]
async fn spec9_requests_that_ended_without_a_mandate_are_deleted_after_the_retention() {
    let w = World::with(|c| {
        c.ended_request_retention_secs = 60;
        c.sweep_every = std::time::Duration::from_millis(10);
    })
    .await;
    let (_, user_token) = w.create_user("alice").await;
    let new_request = || async {
        let (status, created) = w.request_mandate("alice", json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created["id"].as_str().unwrap().to_owned()
    };
    let deny = |id: String| {
        let (w, user_token) = (&w, &user_token);
        async move {
            let path = format!("/v1/mandate-requests/{id}/deny");
            let (status, body) = w.call("POST", &path, Some(user_token), None).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    let status_of = |id: String| {
        let w = &w;
        async move {
            let path = format!("/v1/mandate-requests/{id}");
            let (status, body) = w.call("GET", &path, Some(AGENT_TOKEN), None).await;
            match status {
                StatusCode::OK => body["status"].as_str().unwrap().to_owned(),
                _ => body["code"].as_str().unwrap_or("?").to_owned(),
            }
        }
    };
    let gone_soon = |id: String| {
        let status_of = &status_of;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while status_of(id.clone()).await != "request_not_found" {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{id} is still there after 20 s of sweeps"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    };
    // t0: one denied. t0 + 200: one approved, one denied, one left alone.
    let old = new_request().await;
    deny(old.clone()).await;
    w.clock.advance(200);
    let approved = new_request().await;
    let otp = w.code_for("alice", &user_token, &approved).await;
    let (status, body) = w.approve(&user_token, &approved, &otp).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let denied = new_request().await;
    deny(denied.clone()).await;
    let untouched = new_request().await;
    // t0 + 520: the first one is past its deadline (t0 + 300) by more than the retention, the
    // others (t0 + 500) by less. The sweep that deletes the first saw the others too.
    w.clock.advance(320);
    gone_soon(old).await;
    assert_eq!(status_of(denied.clone()).await, "denied");
    assert_eq!(status_of(untouched.clone()).await, "expired");
    // t0 + 600: the others' turn; the approved one stays, with its mandate.
    w.clock.advance(80);
    gone_soon(denied).await;
    gone_soon(untouched).await;
    let (status, view) = w
        .call(
            "GET",
            &format!("/v1/mandate-requests/{approved}"),
            Some(AGENT_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        (status, view["status"].as_str()),
        (StatusCode::OK, Some("approved"))
    );
    assert!(view["mandate"].is_string(), "{view}");
}

#[tokio::test]
async fn an_expired_request_cannot_be_approved_and_a_denied_one_is_over() {
    let w = World::new().await;
    let (_, user_token) = w.create_user("alice").await;
    let (_, created) = w.request_mandate("alice", json!({})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let otp = w.code_for("alice", &user_token, &id).await;
    w.clock.advance(301);
    let (status, body) = w.approve(&user_token, &id, &otp).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::GONE, Some("request_expired"))
    );
    let (_, view) = w
        .call(
            "GET",
            &format!("/v1/mandate-requests/{id}"),
            Some(AGENT_TOKEN),
            None,
        )
        .await;
    assert_eq!(view["status"], "expired");

    let (_, created) = w.request_mandate("alice", json!({})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let otp = w.code_for("alice", &user_token, &id).await;
    let (status, denied) = w
        .call(
            "POST",
            &format!("/v1/mandate-requests/{id}/deny"),
            Some(&user_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(denied["status"], "denied");
    let (status, body) = w.approve(&user_token, &id, &otp).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("request_not_pending"))
    );
}

#[tokio::test]
async fn concurrent_approvals_mint_exactly_once() {
    let w = Arc::new(World::new().await);
    let (_, user_token) = w.create_user("alice").await;
    let (_, created) = w.request_mandate("alice", json!({})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let otp = w.code_for("alice", &user_token, &id).await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (w, t, id, otp) = (w.clone(), user_token.clone(), id.clone(), otp.clone());
            tokio::spawn(async move { w.approve(&t, &id, &otp).await })
        })
        .collect();
    let mut ok = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        if status == StatusCode::OK {
            ok.push(body);
        } else {
            assert_eq!(body["code"], "request_not_pending", "{body}");
        }
    }
    assert_eq!(ok.len(), 1);
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx() {
    let w = World::new().await;
    let (_, alice) = w.create_user("alice").await;
    let (_, bob) = w.create_user("bob").await;
    let mut bad_total = cart_json();
    bad_total["total"] = json!(1);
    let mut bad_currency = cart_json();
    bad_currency["currency"] = json!("ZZZ");
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({"user_id": "nobody"}),
            StatusCode::NOT_FOUND,
            "user_not_found",
        ),
        (
            json!({"cart": bad_total}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "cart_invalid",
        ),
        (
            json!({"cart": bad_currency}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "cart_invalid",
        ),
        (
            json!({"cart": {"merchant_id": "acme-corp"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "cart_invalid",
        ),
        (
            json!({"merchant_id": "other-corp"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "merchant_mismatch",
        ),
        (
            json!({"max_amount": "89.98"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "max_amount_below_total",
        ),
        (
            json!({"max_amount": "89.9"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "max_amount_invalid",
        ),
        (
            json!({"max_amount": 100}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"ttl_seconds": 301}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "ttl_invalid",
        ),
        (
            json!({"ttl_seconds": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "ttl_invalid",
        ),
        (
            json!({"allow_agent_id": "agent-8"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
    ];
    for (extra, status, code) in cases {
        let user = extra
            .get("user_id")
            .and_then(Value::as_str)
            .unwrap_or("alice")
            .to_owned();
        let mut extra = extra;
        extra.as_object_mut().unwrap().remove("user_id");
        let (got, body) = w.request_mandate(&user, extra.clone()).await;
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{extra}: {body}"
        );
    }
    // Tokens: none, wrong, a user's where an agent's is needed, another agent's request.
    let body = json!({"user_id": "alice", "merchant_id": "acme-corp", "cart": cart_json()});
    let (status, _) = w
        .call("POST", "/v1/mandate-requests", None, Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = w
        .call(
            "POST",
            "/v1/mandate-requests",
            Some("forged"),
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, b) = w
        .call(
            "POST",
            "/v1/mandate-requests",
            Some(&alice),
            Some(body.clone()),
        )
        .await;
    assert_eq!(
        (status, b["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (_, created) = w.request_mandate("alice", json!({})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, _) = w
        .call(
            "GET",
            &format!("/v1/mandate-requests/{id}"),
            Some(OTHER_AGENT_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another agent");
    let (status, _) = w
        .call(
            "GET",
            &format!("/v1/mandate-requests/{id}"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another user");
    let otp = w.code_for("alice", &alice, &id).await;
    let (status, _) = w.approve(&bob, &id, &otp).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "bob cannot approve alice's request"
    );
    let (status, _) = w.approve(AGENT_TOKEN, &id, &otp).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "an agent cannot approve");
    let (status, _) = w
        .call("GET", "/v1/users/alice/notifications", Some(&bob), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, b) = w
        .call("GET", "/v1/mandate-requests/nope", Some(AGENT_TOKEN), None)
        .await;
    assert_eq!(
        (status, b["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("request_not_found"))
    );
    let (status, _) = w
        .call(
            "POST",
            "/v1/users",
            Some(AGENT_TOKEN),
            Some(json!({"user_id": "eve"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "an agent is not the admin"
    );
    let (status, b) = w
        .call(
            "POST",
            "/v1/users",
            Some(ADMIN),
            Some(json!({"user_id": "bad user"})),
        )
        .await;
    assert_eq!(
        (status, b["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("user_id_invalid"))
    );
    // Oversized and malformed bodies.
    let huge = json!({"user_id": "alice", "merchant_id": "acme-corp", "cart": {"note": "x".repeat(70 * 1024)}});
    let (status, b) = w
        .call(
            "POST",
            "/v1/mandate-requests",
            Some(AGENT_TOKEN),
            Some(huge),
        )
        .await;
    assert_eq!(
        (status, b["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
    );
    let r = w
        .http
        .post(w.wallet_url("/v1/mandate-requests"))
        .bearer_auth(AGENT_TOKEN)
        .header("content-type", "application/json")
        .body("{\"user_id\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_body");
    let many: Vec<Value> = (0..101)
        .map(|i| json!({"id": format!("i{i}"), "title": "t", "quantity": 1, "unit_price": 1}))
        .collect();
    let big_cart =
        json!({"merchant_id": "acme-corp", "currency": "USD", "total": 101, "line_items": many});
    let (status, b) = w.request_mandate("alice", json!({"cart": big_cart})).await;
    assert_eq!(
        (status, b["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("cart_invalid"))
    );
    // The admin token is not a user's or an agent's.
    let (status, _) = w
        .call("GET", "/v1/users/alice/notifications", Some(ADMIN), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = w
        .call(
            "POST",
            "/v1/mandate-requests",
            Some(ADMIN),
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The bob/alice mix-ups above did not consume alice's tries.
    let (status, _) = w.approve(&alice, &id, &otp).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn users_keys_and_pending_requests_survive_a_restart() {
    let mut w = World::new().await;
    let (_, user_token) = w.create_user("alice").await;
    let (_, created) = w.request_mandate("alice", json!({})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let otp = w.code_for("alice", &user_token, &id).await;
    w.restart_wallet().await;
    // The user token still works, the request is still pending with the same code.
    assert_eq!(w.code_for("alice", &user_token, &id).await, otp);
    let (status, _) = w.approve(&user_token, &id, &otp).await;
    assert_eq!(status, StatusCode::OK);
    let (_, view) = w
        .call(
            "GET",
            &format!("/v1/mandate-requests/{id}"),
            Some(AGENT_TOKEN),
            None,
        )
        .await;
    // The key reopened from the sealed store signs mandates the directory's key verifies.
    let token = view["mandate"].as_str().unwrap();
    verify_at_merchant(&w.directory_url(), token, w.clock.now_unix())
        .await
        .unwrap();
}

#[tokio::test]
async fn with_the_directory_down_no_user_is_created_and_a_retry_succeeds() {
    let mut w = World::new().await;
    w.directory.take().unwrap().stop().await.unwrap();
    let (status, body) = w
        .call(
            "POST",
            "/v1/users",
            Some(ADMIN),
            Some(json!({"user_id": "carol"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("key_directory_unavailable")
        )
    );
    let (status, _) = w.call("GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The directory comes back (on another port): a wallet pointed at it creates carol.
    let directory = start_directory(w.directory_db.clone()).await;
    w.directory = Some(directory);
    w.restart_wallet().await;
    let (status, _) = w.call("GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    w.create_user("carol").await;
}

#[tokio::test]
async fn spec9_codes_are_sealed_at_rest_and_erased_when_the_request_ends() {
    let w = World::new().await;
    let (_, token) = w.create_user("alice").await;
    let stored = |id: &str| -> String {
        let db = rusqlite::Connection::open_with_flags(
            w.wallet_dir.join("wallet.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        db.query_row("SELECT otp FROM requests WHERE id = ?1", [id], |r| r.get(0))
            .unwrap()
    };
    let ask = || async {
        let (status, body) = w.request_mandate("alice", json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_owned()
    };
    // Pending: only the sealed form is stored, and the user's notification shows the code.
    let approved = ask().await;
    let code = w.code_for("alice", &token, &approved).await;
    let sealed = stored(&approved);
    assert!(!sealed.is_empty() && !sealed.contains(&code), "{sealed}");
    assert!(sealed.len() > 40, "a sealed code, not the code");
    // Approved, denied or locked: the code is gone.
    assert_eq!(w.approve(&token, &approved, &code).await.0, StatusCode::OK);
    assert_eq!(stored(&approved), "");
    let denied = ask().await;
    let (status, _) = w
        .call(
            "POST",
            &format!("/v1/mandate-requests/{denied}/deny"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stored(&denied), "");
    let locked = ask().await;
    for _ in 0..3 {
        w.approve(&token, &locked, "000000x").await;
    }
    assert_eq!(stored(&locked), "");
    // And the database file is its owner's only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(w.wallet_dir.join("wallet.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[tokio::test]
async fn spec9_a_user_has_at_most_20_pending_requests_and_notifications_come_in_pages() {
    let w = World::new().await;
    let (_, token) = w.create_user("alice").await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let (status, body) = w.request_mandate("alice", json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let (status, body) = w.request_mandate("alice", json!({})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "too_many_pending_requests");
    // The default page holds them all; pages of 7 walk them in order, each once.
    let page = |query: String| {
        let token = token.clone();
        let w = &w;
        async move {
            w.call(
                "GET",
                &format!("/v1/users/alice/notifications{query}"),
                Some(&token),
                None,
            )
            .await
        }
    };
    let (status, all) = page(String::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all["notifications"].as_array().unwrap().len(), 20);
    assert!(all.get("next_cursor").is_none());
    let mut seen = Vec::new();
    let mut query = "?limit=7".to_owned();
    loop {
        let (status, body) = page(query.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let notes = body["notifications"].as_array().unwrap();
        assert!(notes.len() <= 7);
        seen.extend(
            notes
                .iter()
                .map(|n| n["request_id"].as_str().unwrap().to_owned()),
        );
        match body["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=7&cursor={cursor}"),
            None => break,
        }
    }
    let mut expected = all["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["request_id"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(seen, expected);
    expected.sort();
    ids.sort();
    assert_eq!(expected, ids);
    for bad in [
        "?limit=0",
        "?limit=201",
        "?limit=x",
        "?cursor=%21%21",
        "?other=1",
    ] {
        let (status, body) = page(bad.to_owned()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["code"], "invalid_query", "{bad}");
    }
    // Approving one frees a place.
    let otp = w.code_for("alice", &token, &ids[0]).await;
    assert_eq!(w.approve(&token, &ids[0], &otp).await.0, StatusCode::OK);
    assert_eq!(
        w.request_mandate("alice", json!({})).await.0,
        StatusCode::CREATED
    );
}

/// A directory on a port of its own, so it can be stopped and started again at one URL.
async fn start_directory_on(db: PathBuf, port: u16) -> key_directory::Running {
    let mut config = key_directory::Config::local(
        db,
        vec![format!("{ISSUER}={DIRECTORY_TOKEN}").parse().unwrap()],
    );
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    key_directory::spawn(config).await.unwrap()
}

/// A user whose key registration was cut short (the wallet stopped between storing the user
/// and registering its key) gets the key registered by the wallet itself, even when the key
/// directory is down as the wallet starts: it retries until the directory takes the key,
/// without a restart. A key stored a moment ago is left to the call that is creating its user
/// (which registers it, or deletes the user) for a minute first.
#[tokio::test]
async fn a_pending_key_is_registered_once_the_directory_is_back() {
    use wallet::store::WalletStore;
    let mut w = World::new().await;
    let port = ap2_testkit::free_port();
    w.directory.take().unwrap().stop().await.unwrap();
    let directory_url = format!("http://127.0.0.1:{port}");
    w.wallet.take().unwrap().stop().await.unwrap();
    // What the crash left: the user stored, its key sealed, not registered.
    let master = wallet::crypto::MasterKey::load(None, &w.wallet_dir).unwrap();
    let store = wallet::store::SqliteStore::open(&w.wallet_dir).unwrap();
    let mut kids = Vec::new();
    for (user, age) in [("dana", 120), ("erin", 0)] {
        let signer = ap2_mandate::LocalSigner::generate().unwrap();
        kids.push(ap2_mandate::Signer::kid(&signer).to_string());
        store
            .create_user(wallet::store::UserRow {
                user_id: user.into(),
                kid: kids.last().unwrap().clone(),
                token_hash: format!("unused-{user}"),
                sealed_key: master.seal(user, &signer.to_pkcs8_der().unwrap()).unwrap(),
                registered: false,
                created_at: w.clock.now_unix() - age,
                key_revoked_at: None,
            })
            .await
            .unwrap();
    }
    drop(store);
    let registered = |kid: &str| {
        let r = w.http.get(format!("{directory_url}/v1/keys/{kid}")).send();
        async move {
            let status = r.await.unwrap().status();
            assert!(
                matches!(status, StatusCode::OK | StatusCode::NOT_FOUND),
                "{status}"
            );
            status == StatusCode::OK
        }
    };
    // The wallet starts while the directory is down, then the directory comes back.
    let config = wallet_config(w.wallet_dir.clone(), &directory_url);
    w.wallet = Some(
        wallet::spawn_with_clock(config, Arc::new(w.clock.clone()))
            .await
            .unwrap(),
    );
    w.directory = Some(start_directory_on(w.directory_db.clone(), port).await);
    let wait_for = |kid: String| async move {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !registered(&kid).await {
            assert!(
                std::time::Instant::now() < deadline,
                "the pending key was not registered within 30 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    wait_for(kids[0].clone()).await;
    assert!(
        !registered(&kids[1]).await,
        "a key stored a moment ago was taken over"
    );
    w.clock.0.fetch_add(61, Ordering::SeqCst);
    wait_for(kids[1].clone()).await;
}

/// A retired key is revoked at the directory in the end even when the wallet's store fails
/// while the wallet retries: a store that cannot list the retired keys once does not mean
/// none is left (the retries used to stop there, leaving the old key valid).
#[tokio::test]
async fn spec10_a_retired_key_is_revoked_in_the_end_though_the_store_failed_meanwhile() {
    use base64::Engine;
    use wallet::store::WalletStore;
    let mut pg = ap2_testkit::PgServer::start();
    let master = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let on_pg = |c: &mut wallet::Config| {
        c.database_url = Some(pg.url().into());
        c.master_key = Some(master.clone().into());
    };
    let mut w = World::with(on_pg).await;
    let (old_kid, _) = w.create_user("fay").await;
    // A rotation whose revocation did not reach the directory: the old key retired in the
    // store, not revoked.
    w.wallet.take().unwrap().stop().await.unwrap();
    let url = pg.url();
    let store = tokio::task::spawn_blocking(move || wallet::store::PgStore::open(&url, 2))
        .await
        .unwrap()
        .unwrap();
    let signer = ap2_mandate::LocalSigner::generate().unwrap();
    let sealed = wallet::crypto::MasterKey::load(Some(&master.clone().into()), &w.wallet_dir)
        .unwrap()
        .seal("fay", &signer.to_pkcs8_der().unwrap())
        .unwrap();
    let new_kid = ap2_mandate::Signer::kid(&signer).to_string();
    let retired = store
        .rotate_key("fay", &new_kid, &sealed, w.clock.now_unix())
        .await
        .unwrap();
    assert_eq!(retired, old_kid);
    drop(store);
    // The wallet starts with the directory down; its store goes down for its next retries.
    let port = ap2_testkit::free_port();
    w.directory.take().unwrap().stop().await.unwrap();
    let directory_url = format!("http://127.0.0.1:{port}");
    let mut config = wallet_config(w.wallet_dir.clone(), &directory_url);
    config.database_url = Some(pg.url().into());
    config.master_key = Some(master.clone().into());
    w.wallet = Some(
        wallet::spawn_with_clock(config, Arc::new(w.clock.clone()))
            .await
            .unwrap(),
    );
    pg.stop();
    // Down across the retries 1 s and 3 s after the first.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    pg.restart();
    w.directory = Some(start_directory_on(w.directory_db.clone(), port).await);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    loop {
        let r = w
            .http
            .get(format!("{directory_url}/v1/keys/{old_kid}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        if r.json::<Value>().await.unwrap()["status"] == "revoked" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the retired key was not revoked within 40 s of the store's and the directory's return"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
