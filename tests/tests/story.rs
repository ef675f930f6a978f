//! The whole story across the three real binaries as separate processes and a real
//! redis-server: the happy path, every attack refused with its code, and each service
//! restarted in the middle of a purchase with nothing lost.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use ap2_e2e::{RedisServer, Service};
use ap2_mandate::{Clock, LocalSigner, ProofRequest, SystemClock, make_proof};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ISSUER: &str = "https://wallet.e2e";
const DIRECTORY_TOKEN: &str = "e2e-directory-token-for-the-wallet";
const ADMIN_TOKEN: &str = "e2e-admin-token";
const AGENT: &str = "agent-7";
const AGENT_TOKEN: &str = "e2e-agent-7-token";
const OTHER_AGENT_TOKEN: &str = "e2e-agent-8-token";
// base64 of 32 bytes.
/// The merchants' backend token for `/v1/mandates/verify` (SPEC §9).
const BACKEND_TOKEN: &str = "e2e-backend-token";
const MASTER_KEY: &str = "ZTJlLW1hc3Rlci1rZXktMzItYnl0ZXMtbG9uZy4uLi4=";

struct World {
    redis: RedisServer,
    directory: Service,
    wallet: Service,
    merchant: Service,
    globex: Service,
    http: reqwest::Client,
    /// agent-7's key: every call it makes carries a DPoP proof of it (SPEC §8).
    agent: LocalSigner,
    _tmp: tempfile::TempDir,
}

/// How a call authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Bearer(&'a str),
    Dpop(&'a str),
}

/// A proof by `key` for `method url`, presenting `token` if given.
fn proof(key: &LocalSigner, method: &str, url: &str, token: Option<&str>) -> String {
    make_proof(
        key,
        &ProofRequest {
            htm: method,
            htu: url,
            iat: SystemClock.now_unix(),
            jti: None,
            token,
            nonce: None,
        },
    )
    .unwrap()
}

impl World {
    async fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = |name: &str| tmp.path().join(name).to_str().unwrap().to_owned();
        std::fs::create_dir_all(tmp.path().join("redis")).unwrap();
        let redis = RedisServer::start_persistent(&tmp.path().join("redis"));
        let directory = Service::start(
            "key-directory",
            &[
                "--db",
                &dir("keys.db"),
                "--issuer-token",
                &format!("{ISSUER}={DIRECTORY_TOKEN}"),
            ],
            &[],
            tmp.path(),
        )
        .await;
        let agents = format!("{AGENT}={AGENT_TOKEN},agent-8={OTHER_AGENT_TOKEN}");
        let wallet = Service::start(
            "wallet",
            &[],
            &[
                ("WALLET_ISSUER", ISSUER),
                ("WALLET_DATA_DIR", &dir("wallet")),
                ("KEY_DIRECTORY_URL", &directory.url()),
                ("KEY_DIRECTORY_TOKEN", DIRECTORY_TOKEN),
                ("WALLET_ADMIN_TOKEN", ADMIN_TOKEN),
                ("WALLET_AGENT_TOKENS", &agents),
                ("WALLET_MASTER_KEY", MASTER_KEY),
            ],
            tmp.path(),
        )
        .await;
        // The test Redis fsyncs every write (`appendfsync always`) on a disk the parallel tests
        // share: a second, not 250 ms, before a command counts as failed (fail closed all the
        // same).
        let merchant_env = [
            ("KEY_CACHE_SECS", "1"),
            ("MANDATE_LEEWAY_SECS", "1"),
            ("REDIS_TIMEOUT_MS", "1000"),
            ("MERCHANT_BACKEND_TOKENS", "e2e-backend=e2e-backend-token"),
        ];
        let merchant = Service::start(
            "merchant",
            &[
                "--merchant-id",
                "acme-corp",
                "--data-dir",
                &dir("acme"),
                "--key-directory-url",
                &directory.url(),
                "--redis-url",
                &redis.url(),
            ],
            &merchant_env,
            tmp.path(),
        )
        .await;
        let globex_dir = dir("globex");
        let globex = Service::start(
            "merchant",
            &[
                "--merchant-id",
                "globex",
                "--data-dir",
                &globex_dir,
                "--key-directory-url",
                &directory.url(),
                "--redis-url",
                &redis.url(),
            ],
            &merchant_env,
            tmp.path(),
        )
        .await;
        for service in [&directory, &wallet, &merchant, &globex] {
            service.wait_ready().await;
        }
        Self {
            redis,
            directory,
            wallet,
            merchant,
            globex,
            http: reqwest::Client::new(),
            agent: LocalSigner::generate().unwrap(),
            _tmp: tmp,
        }
    }

    /// A call; with `signer`, it carries that key's proof for it (and the token's `ath`).
    async fn call(
        &self,
        method: reqwest::Method,
        url: String,
        auth: Auth<'_>,
        agent: Option<&str>,
        signer: Option<&LocalSigner>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method.clone(), &url);
        match auth {
            Auth::None => {}
            Auth::Bearer(token) => req = req.bearer_auth(token),
            Auth::Dpop(token) => req = req.header("Authorization", format!("DPoP {token}")),
        }
        if let Some(key) = signer {
            let presented = match auth {
                Auth::Dpop(token) => Some(token),
                _ => None,
            };
            req = req.header("DPoP", proof(key, method.as_str(), &url, presented));
        }
        if let Some(agent) = agent {
            req = req.header("AP2-Agent-Id", agent);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }

    /// Creates `user`; returns their token and kid.
    async fn create_user(&self, user: &str) -> (String, String) {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                format!("{}/v1/users", self.wallet.url()),
                Auth::Bearer(ADMIN_TOKEN),
                None,
                None,
                Some(json!({"user_id": user})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["user_token"].as_str().unwrap().to_owned(),
            body["kid"].as_str().unwrap().to_owned(),
        )
    }

    async fn checkout(&self, merchant: &Service, items: Value) -> (String, Value) {
        self.checkout_as(&self.agent, merchant, items).await
    }

    async fn checkout_as(
        &self,
        key: &LocalSigner,
        merchant: &Service,
        items: Value,
    ) -> (String, Value) {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                format!("{}/v1/checkout-sessions", merchant.url()),
                Auth::None,
                None,
                Some(key),
                Some(json!({"line_items": items})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["id"].as_str().unwrap().to_owned(),
            body["cart"].clone(),
        )
    }

    async fn request(&self, user: &str, cart: &Value, ttl: u32) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                format!("{}/v1/mandate-requests", self.wallet.url()),
                Auth::Bearer(AGENT_TOKEN),
                None,
                Some(&self.agent),
                Some(json!({"user_id": user, "merchant_id": cart["merchant_id"], "cart": cart, "ttl_seconds": ttl})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    async fn otp(&self, user: &str, user_token: &str, request: &str) -> String {
        let (_, body) = self
            .call(
                reqwest::Method::GET,
                format!("{}/v1/users/{user}/notifications", self.wallet.url()),
                Auth::Bearer(user_token),
                None,
                None,
                None,
            )
            .await;
        body["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["request_id"] == request)
            .unwrap_or_else(|| panic!("no notification for {request}: {body}"))["otp"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn approve(&self, user_token: &str, request: &str, otp: &str) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                format!(
                    "{}/v1/mandate-requests/{request}/approve",
                    self.wallet.url()
                ),
                Auth::Bearer(user_token),
                None,
                None,
                Some(json!({"otp": otp})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, body) = self
            .call(
                reqwest::Method::GET,
                format!("{}/v1/mandate-requests/{request}", self.wallet.url()),
                Auth::Bearer(AGENT_TOKEN),
                None,
                None,
                None,
            )
            .await;
        body["mandate"].as_str().unwrap().to_owned()
    }

    async fn mandate_for(&self, user: &str, user_token: &str, cart: &Value, ttl: u32) -> String {
        let request = self.request(user, cart, ttl).await;
        let otp = self.otp(user, user_token, &request).await;
        self.approve(user_token, &request, &otp).await
    }

    async fn complete(
        &self,
        merchant: &Service,
        session: &str,
        mandate: &str,
        agent: &str,
    ) -> (StatusCode, Value) {
        self.complete_as(&self.agent, merchant, session, mandate, agent)
            .await
    }

    /// `key`'s holder presents `mandate` in `agent`'s name.
    async fn complete_as(
        &self,
        key: &LocalSigner,
        merchant: &Service,
        session: &str,
        mandate: &str,
        agent: &str,
    ) -> (StatusCode, Value) {
        self.call(
            reqwest::Method::POST,
            format!("{}/v1/checkout-sessions/{session}/complete", merchant.url()),
            Auth::Dpop(mandate),
            Some(agent),
            Some(key),
            None,
        )
        .await
    }

    /// The agent reads its session.
    async fn session(&self, merchant: &Service, session: &str) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                format!("{}/v1/checkout-sessions/{session}", merchant.url()),
                Auth::None,
                None,
                Some(&self.agent),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn refused(
        &self,
        merchant: &Service,
        session: &str,
        mandate: &str,
        agent: &str,
        code: &str,
    ) {
        let (status, body) = self.complete(merchant, session, mandate, agent).await;
        assert_eq!(
            (status, body["code"].as_str().unwrap_or("-")),
            (StatusCode::UNAUTHORIZED, code),
            "{body}"
        );
    }

    fn all_logs(&self) -> String {
        [&self.directory, &self.wallet, &self.merchant, &self.globex]
            .iter()
            .map(|s| s.logs())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn shoes() -> Value {
    json!([{"id": "shoe-001", "quantity": 1}, {"id": "sock-10", "quantity": 3}])
}

#[tokio::test]
async fn the_whole_story_and_every_attack_across_processes() {
    let w = World::start().await;
    let (alice, kid) = w.create_user("alice").await;
    let (session, cart) = w.checkout(&w.merchant, shoes()).await;
    assert_eq!(cart["total"], 10349);
    let mandate = w.mandate_for("alice", &alice, &cart, 120).await;
    let (status, paid) = w.complete(&w.merchant, &session, &mandate, AGENT).await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    assert_eq!(paid["amount"], 10349);
    assert_eq!(paid["mandate"]["sub"], "alice");

    // The same mandate replayed.
    let (second, _) = w.checkout(&w.merchant, shoes()).await;
    w.refused(&w.merchant, &second, &mandate, AGENT, "mandate_replayed")
        .await;
    // The cart swapped after approval.
    let fresh = w.mandate_for("alice", &alice, &cart, 120).await;
    let (dearer, _) = w
        .checkout(&w.merchant, json!([{"id": "shoe-001", "quantity": 2}]))
        .await;
    w.refused(&w.merchant, &dearer, &fresh, AGENT, "mandate_cart_mismatch")
        .await;
    // Another agent, with its own key and session, presenting it.
    let other_agent = LocalSigner::generate().unwrap();
    let (theirs, _) = w.checkout_as(&other_agent, &w.merchant, shoes()).await;
    let (status, body) = w
        .complete_as(&other_agent, &w.merchant, &theirs, &fresh, "agent-8")
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("mandate_agent_mismatch"))
    );
    // ... or completing agent-7's session: it does not exist for that key.
    let (status, body) = w
        .complete_as(&other_agent, &w.merchant, &second, &fresh, "agent-8")
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("session_not_found"))
    );
    // A thief with the copied mandate and a key of its own, at its own session.
    let thief = LocalSigner::generate().unwrap();
    let (thiefs, _) = w.checkout_as(&thief, &w.merchant, shoes()).await;
    let (status, body) = w
        .complete_as(&thief, &w.merchant, &thiefs, &fresh, AGENT)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("dpop_key_mismatch"))
    );
    // The bound mandate presented as a bearer token, with the agent's proof.
    let (status, body) = w
        .call(
            reqwest::Method::POST,
            format!(
                "{}/v1/checkout-sessions/{second}/complete",
                w.merchant.url()
            ),
            Auth::Bearer(&fresh),
            Some(AGENT),
            Some(&w.agent),
            None,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("dpop_proof_required"))
    );
    // A captured proof sent again.
    let url = format!("{}/v1/checkout-sessions", w.merchant.url());
    let captured = proof(&w.agent, "POST", &url, None);
    for expected in [StatusCode::CREATED, StatusCode::UNAUTHORIZED] {
        let r = w
            .http
            .post(&url)
            .header("DPoP", &captured)
            .json(&json!({"line_items": shoes()}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected);
    }
    // Another merchant receiving it.
    let (elsewhere, _) = w.checkout(&w.globex, shoes()).await;
    w.refused(
        &w.globex,
        &elsewhere,
        &fresh,
        AGENT,
        "mandate_audience_mismatch",
    )
    .await;
    // An expired mandate: 1 s of life and 1 s of leeway at this merchant.
    let short = w.mandate_for("alice", &alice, &cart, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    w.refused(&w.merchant, &second, &short, AGENT, "mandate_expired")
        .await;
    // A revoked key: the wallet's issuer revokes alice's key; the merchant's key cache is 1 s.
    let (status, _) = w
        .call(
            reqwest::Method::POST,
            format!("{}/v1/keys/{kid}/revoke", w.directory.url()),
            Auth::Bearer(DIRECTORY_TOKEN),
            None,
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    w.refused(&w.merchant, &second, &fresh, AGENT, "mandate_key_revoked")
        .await;

    // Nothing was charged by the attacks.
    let s = w.session(&w.merchant, &second).await;
    assert_eq!(s["status"], "ready_for_complete");
    // No secret reached a log.
    let logs = w.all_logs();
    for secret in [
        DIRECTORY_TOKEN,
        ADMIN_TOKEN,
        AGENT_TOKEN,
        OTHER_AGENT_TOKEN,
        MASTER_KEY,
        &alice,
        &mandate,
        "PRIVATE KEY",
    ] {
        assert!(!logs.contains(secret), "a secret was logged: {secret}");
    }
    assert!(logs.contains("order paid"), "{logs}");
}

#[tokio::test]
async fn nothing_is_lost_when_each_service_restarts_in_the_middle() {
    let mut w = World::start().await;
    let (alice, kid) = w.create_user("alice").await;
    let (session, cart) = w.checkout(&w.merchant, shoes()).await;
    let request = w.request("alice", &cart, 120).await;
    let otp = w.otp("alice", &alice, &request).await;

    // The wallet restarts with a pending request: the user, her token, her key and the request
    // with its code are all still there.
    w.wallet.restart().await;
    w.wallet.wait_ready().await;
    assert_eq!(w.otp("alice", &alice, &request).await, otp);

    // The key directory restarts: the key is still registered and active.
    w.directory.restart().await;
    let (status, key) = w
        .call(
            reqwest::Method::GET,
            format!("{}/v1/keys/{kid}", w.directory.url()),
            Auth::None,
            None,
            None,
            None,
        )
        .await;
    assert_eq!(
        (status, key["status"].as_str()),
        (StatusCode::OK, Some("active"))
    );
    let mandate = w.approve(&alice, &request, &otp).await;

    // The merchant restarts with an open session: it is still there and completes.
    w.merchant.restart().await;
    w.merchant.wait_ready().await;
    let (status, paid) = w.complete(&w.merchant, &session, &mandate, AGENT).await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    // SPEC §12: the order keeps how the user approved (here, by the code).
    assert_eq!(paid["mandate"]["amr"], serde_json::json!(["otp"]), "{paid}");
    let order = paid["order_id"].as_str().unwrap().to_owned();

    // The merchant and Redis (AOF) restart after the order: the order is kept and the spent
    // mandate is still refused.
    w.merchant.restart().await;
    w.redis.restart();
    w.merchant.wait_ready().await;
    let s = w.session(&w.merchant, &session).await;
    assert_eq!(
        (s["status"].as_str(), s["order_id"].as_str()),
        (Some("completed"), Some(order.as_str()))
    );
    let (other, _) = w.checkout(&w.merchant, shoes()).await;
    w.refused(&w.merchant, &other, &mandate, AGENT, "mandate_replayed")
        .await;
    // And the wallet, after all this, still approves and mints for alice.
    let fresh = w.mandate_for("alice", &alice, &cart, 120).await;
    let (status, _) = w.complete(&w.merchant, &other, &fresh, AGENT).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_demo_agent_plays_the_story_against_running_services() {
    let w = World::start().await;
    // Configured only by environment, as the compose file's demo-agent is.
    let out = tokio::process::Command::new(ap2_e2e::binary("ap2"))
        .arg("demo")
        .env("AP2_KEY_DIRECTORY_URL", w.directory.url())
        .env("AP2_WALLET_URL", w.wallet.url())
        .env("AP2_MERCHANT_URL", w.merchant.url())
        .env("AP2_OTHER_MERCHANT_URL", w.globex.url())
        .env("AP2_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("AP2_AGENT_TOKEN", AGENT_TOKEN)
        .env("AP2_DIRECTORY_TOKEN", DIRECTORY_TOKEN)
        .env("AP2_BACKEND_TOKEN", BACKEND_TOKEN)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Every step behaved as expected."), "{text}");
    assert!(!text.contains('✗'), "{text}");
}

#[tokio::test]
async fn spec9_refusals_are_counted_every_time_but_logged_at_a_bounded_rate() {
    let w = World::start().await;
    let (_, cart) = w.checkout(&w.merchant, shoes()).await;
    let url = format!("{}/v1/mandates/verify", w.merchant.url());
    let started = std::time::Instant::now();
    for i in 0..300 {
        let r = w
            .http
            .post(&url)
            .bearer_auth(BACKEND_TOKEN)
            .json(&json!({"mandate": format!("not.a.mandate{i}"), "agent_id": AGENT, "cart": cart}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let metrics = w
        .http
        .get(format!("{}/metrics", w.merchant.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("ap2_mandate_verifications_total") && l.contains("mandate_malformed")
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, 300.0);
    let logged = w.merchant.logs().matches("mandate refused").count() as f64;
    // The default: 20 lines a second, 20 at once.
    assert!(
        logged <= 20.0 + 20.0 * elapsed + 1.0,
        "{logged} refusal lines in {elapsed:.1} s"
    );
    assert!(logged >= 1.0);
}

/// The `kid` in a mandate's header.
fn kid_of(mandate: &str) -> String {
    use base64::Engine;
    let header = mandate.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn spec10_the_wallet_rotates_a_key_and_never_signs_with_a_revoked_one() {
    let w = World::start().await;
    let (carol, first_kid) = w.create_user("carol").await;
    let (dave, _) = w.create_user("dave").await;
    let (_, cart) = w.checkout(&w.merchant, shoes()).await;
    let before = w.mandate_for("carol", &carol, &cart, 120).await;
    assert_eq!(kid_of(&before), first_kid);
    let url = format!("{}/v1/users/carol/keys/rotate", w.wallet.url());
    // Another user may not; the user may.
    let (status, body) = w
        .call(
            reqwest::Method::POST,
            url.clone(),
            Auth::Bearer(&dave),
            None,
            None,
            None,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (status, body) = w
        .call(
            reqwest::Method::POST,
            url.clone(),
            Auth::Bearer(&carol),
            None,
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let second_kid = body["kid"].as_str().unwrap().to_owned();
    assert_ne!(second_kid, first_kid);
    assert_eq!(body["previous_kid"], first_kid.as_str());
    assert_eq!(body["previous_revoked"], true);
    // The directory: the old key revoked, the new one active.
    for (kid, status) in [(&first_kid, "revoked"), (&second_kid, "active")] {
        let key: Value = w
            .http
            .get(format!("{}/v1/keys/{kid}", w.directory.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(key["status"], status);
    }
    // A mandate signed before the rotation is refused; the next one is signed with the new key.
    let (session, _) = w.checkout(&w.merchant, shoes()).await;
    w.refused(&w.merchant, &session, &before, AGENT, "mandate_key_revoked")
        .await;
    let after = w.mandate_for("carol", &carol, &cart, 120).await;
    assert_eq!(kid_of(&after), second_kid);
    let (status, body) = w.complete(&w.merchant, &session, &after, AGENT).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The key is revoked at the directory behind the wallet's back: the wallet hears of it
    // from the event stream and refuses to sign with it.
    let revoked = w
        .http
        .post(format!("{}/v1/keys/{second_kid}/revoke", w.directory.url()))
        .bearer_auth(DIRECTORY_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let (request, otp) = loop {
        let request = w.request("carol", &cart, 120).await;
        let otp = w.otp("carol", &carol, &request).await;
        let (status, body) = w
            .call(
                reqwest::Method::POST,
                format!("{}/v1/mandate-requests/{request}/approve", w.wallet.url()),
                Auth::Bearer(&carol),
                None,
                None,
                Some(json!({"otp": otp})),
            )
            .await;
        if status == StatusCode::CONFLICT {
            assert_eq!(body["code"], "user_key_revoked");
            break (request, otp);
        }
        // Approved before the event came: try with a new request.
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "the wallet still signs with a key revoked 2 s ago"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The admin gives carol a new key; the same request is then approved with it.
    let (status, body) = w
        .call(
            reqwest::Method::POST,
            url,
            Auth::Bearer(ADMIN_TOKEN),
            None,
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let third_kid = body["kid"].as_str().unwrap().to_owned();
    let minted = w.approve(&carol, &request, &otp).await;
    assert_eq!(kid_of(&minted), third_kid);
}

#[tokio::test]
async fn spec9_the_caps_hold_at_their_defaults_on_the_binaries() {
    let w = World::start().await;
    // 1000 open sessions per agent key: the next is 429, another key is still served.
    let url = format!("{}/v1/checkout-sessions", w.merchant.url());
    let hoarder = LocalSigner::generate().unwrap();
    for i in 0..1000 {
        let (status, body) = open_session(&w, &url, &hoarder).await;
        assert_eq!(status, StatusCode::CREATED, "session {i}: {body}");
    }
    let (status, body) = open_session(&w, &url, &hoarder).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("too_many_sessions"))
    );
    let other = LocalSigner::generate().unwrap();
    assert_eq!(open_session(&w, &url, &other).await.0, StatusCode::CREATED);

    // 20 pending requests per user: the next is 429; the notifications list them all.
    let (token, _) = w.create_user("erin").await;
    let (_, cart) = w.checkout(&w.merchant, shoes()).await;
    for _ in 0..20 {
        w.request("erin", &cart, 120).await;
    }
    let (status, body) = w
        .call(
            reqwest::Method::POST,
            format!("{}/v1/mandate-requests", w.wallet.url()),
            Auth::Bearer(AGENT_TOKEN),
            None,
            Some(&w.agent),
            Some(json!({"user_id": "erin", "merchant_id": "acme-corp", "cart": cart})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (
            StatusCode::TOO_MANY_REQUESTS,
            Some("too_many_pending_requests")
        )
    );
    let (_, page) = w
        .call(
            reqwest::Method::GET,
            format!("{}/v1/users/erin/notifications?limit=15", w.wallet.url()),
            Auth::Bearer(&token),
            None,
            None,
            None,
        )
        .await;
    assert_eq!(page["notifications"].as_array().unwrap().len(), 15);
    assert!(page["next_cursor"].is_string());

    // The wallet's database: the owner's only, and no code in plain text.
    use std::os::unix::fs::PermissionsExt;
    let db = w._tmp.path().join("wallet").join("wallet.db");
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let otp = page["notifications"][0]["otp"].as_str().unwrap().to_owned();
    for file in ["wallet.db", "wallet.db-wal"] {
        let path = w._tmp.path().join("wallet").join(file);
        if let Ok(bytes) = std::fs::read(&path) {
            assert!(
                !bytes.windows(otp.len()).any(|win| win == otp.as_bytes()),
                "{file} holds a code in plain text"
            );
        }
    }
}

/// `key`'s holder opens a session for shoes at `url`.
async fn open_session(w: &World, url: &str, key: &LocalSigner) -> (StatusCode, Value) {
    w.call(
        reqwest::Method::POST,
        url.to_owned(),
        Auth::None,
        None,
        Some(key),
        Some(json!({"line_items": shoes()})),
    )
    .await
}
