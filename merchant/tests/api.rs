//! The merchant over real HTTP, with a real key directory and a real redis-server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use ap2_directory_client::{DirectoryClient, DirectoryClientConfig};
use ap2_mandate::{AgentId, Ap2Scope, Cart, IntentMandate, Jti, LocalSigner, MerchantId, Signer};
use ap2_testkit::RedisServer;
use base64::Engine;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

const ISSUER: &str = "https://wallet.example";
const AGENT: &str = "agent-7";
/// The merchant's backend token for `/v1/mandates/verify` (SPEC §9).
const BACKEND_TOKEN: &str = "backend-secret";

struct World {
    redis: RedisServer,
    directory: key_directory::Running,
    directory_client: DirectoryClient,
    merchant: Option<merchant::Running>,
    merchant_dir: std::path::PathBuf,
    user: LocalSigner,
    http: reqwest::Client,
    _tmp: tempfile::TempDir,
}

fn now() -> i64 {
    ap2_mandate::Clock::now_unix(&ap2_mandate::SystemClock)
}

impl World {
    async fn new() -> Self {
        Self::with_redis(RedisServer::start()).await
    }

    async fn with_redis(redis: RedisServer) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let directory = key_directory::spawn(key_directory::Config::local(
            tmp.path().join("keys.db"),
            vec![format!("{ISSUER}=tok").parse().unwrap()],
        ))
        .await
        .unwrap();
        let directory_client =
            DirectoryClient::new(&directory.url(), DirectoryClientConfig::default()).unwrap();
        let user = LocalSigner::generate().unwrap();
        directory_client
            .register(
                &SecretString::from("tok"),
                "alice",
                &user.public_key().to_jwk(user.kid()),
            )
            .await
            .unwrap();
        let merchant_dir = tmp.path().join("merchant");
        let mut w = Self {
            redis,
            directory,
            directory_client,
            merchant: None,
            merchant_dir,
            user,
            http: reqwest::Client::new(),
            _tmp: tmp,
        };
        w.start_merchant(60).await;
        w
    }

    async fn start_merchant(&mut self, key_cache_secs: u64) {
        let mut config = merchant::Config::local(
            "acme-corp",
            self.merchant_dir.clone(),
            &self.directory.url(),
            Some(self.redis.url()),
        );
        config.key_cache_secs = key_cache_secs;
        config.backend_tokens = vec![format!("backend={BACKEND_TOKEN}").parse().unwrap()];
        // These tests are SPEC §4 alone (unbound Bearer mandates); tests/dpop.rs has §8.
        config.require_agent_binding = false;
        self.merchant = Some(
            merchant::spawn(config, merchant::Parts::default())
                .await
                .unwrap(),
        );
    }

    async fn restart_merchant(&mut self) {
        self.merchant.take().unwrap().stop().await.unwrap();
        self.start_merchant(60).await;
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.merchant.as_ref().unwrap().url())
    }

    /// POSTs `body`; the verify endpoint gets the backend's token (SPEC §9).
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let mut request = self.http.post(self.url(path)).json(&body);
        if path == "/v1/mandates/verify" {
            request = request.bearer_auth(BACKEND_TOKEN);
        }
        let r = request.send().await.unwrap();
        (r.status(), r.json().await.unwrap())
    }

    async fn session(&self, items: Value) -> (String, Cart) {
        let (status, body) = self
            .post("/v1/checkout-sessions", json!({"line_items": items}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let cart = Cart::from_json(body["cart"].to_string().as_bytes()).unwrap();
        assert_eq!(body["cart_hash"], cart.hash().as_str());
        (body["id"].as_str().unwrap().to_owned(), cart)
    }

    async fn shoe_session(&self) -> (String, Cart) {
        self.session(json!([{"id": "shoe-001", "quantity": 1}]))
            .await
    }

    fn claims(&self, cart: &Cart) -> IntentMandate {
        let now = now();
        IntentMandate {
            iss: ISSUER.into(),
            sub: "alice".into(),
            aud: MerchantId::parse("acme-corp").unwrap(),
            iat: now,
            nbf: None,
            exp: now + 120,
            jti: Jti::random().unwrap(),
            scope: Ap2Scope {
                max_amount: cart.total(),
                cart_hash: cart.hash().clone(),
                allow_agent_id: AgentId::parse(AGENT).unwrap(),
            },
            cnf: None,
            amr: None,
        }
    }

    fn mint(&self, claims: &IntentMandate) -> String {
        ap2_mandate::mint(&self.user, claims).unwrap()
    }

    /// Signs raw header and payload JSON with the user's key.
    fn sign_raw(&self, header: &Value, payload: &Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(payload.to_string())
        );
        format!(
            "{input}.{}",
            b64.encode(self.user.sign_es256(input.as_bytes()).unwrap())
        )
    }

    async fn complete(
        &self,
        session: &str,
        token: Option<&str>,
        agent: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.url(&format!("/v1/checkout-sessions/{session}/complete")));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(agent) = agent {
            req = req.header("AP2-Agent-Id", agent);
        }
        req.send().await.unwrap()
    }

    /// Completes a fresh shoe session with `token` and returns (status, code or "ok").
    async fn code_for(&self, session: &str, token: &str, agent: &str) -> (StatusCode, String) {
        let r = self.complete(session, Some(token), Some(agent)).await;
        let status = r.status();
        let www = r
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        let ctype = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = r.json().await.unwrap();
        if status == StatusCode::OK {
            return (status, "ok".into());
        }
        assert_eq!(ctype.as_deref(), Some("application/problem+json"));
        if status == StatusCode::UNAUTHORIZED {
            let www = www.expect("401 carries WWW-Authenticate");
            assert!(
                www.starts_with(r#"Bearer error="invalid_token", error_description=""#),
                "{www}"
            );
        }
        (status, body["code"].as_str().unwrap().to_owned())
    }
}

#[tokio::test]
async fn spec5_sessions_are_priced_from_the_catalog() {
    let w = World::new().await;
    let products: Value = w
        .http
        .get(w.url("/v1/products"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        products["products"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == "shoe-001" && p["unit_price"] == 8999)
    );
    let (id, cart) = w
        .session(json!([{"id": "sock-10", "quantity": 3}, {"id": "hat-7", "quantity": 1}]))
        .await;
    assert_eq!(cart.total().minor_units(), 3250);
    assert_eq!(cart.merchant_id().as_str(), "acme-corp");
    // The SPEC vector V2 is exactly this cart.
    assert_eq!(
        cart.hash().as_str(),
        "sha256-70Q5DwcBM8J01fuhUKRxwLXAgjCMHE2UIcHuJHq_i1o"
    );
    let got: Value = w
        .http
        .get(w.url(&format!("/v1/checkout-sessions/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["status"], "ready_for_complete");
    for (items, status, code) in [
        (
            json!([]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "line_items_empty",
        ),
        (
            json!([{"id": "nope", "quantity": 1}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "product_unknown",
        ),
        (
            json!([{"id": "shoe-001", "quantity": 0}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "quantity_invalid",
        ),
        (
            json!([{"id": "shoe-001", "quantity": 10001}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "quantity_invalid",
        ),
        (
            json!([{"id": "shoe-001", "quantity": -1}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "quantity_invalid",
        ),
        (
            json!([{"id": "shoe-001", "quantity": 1}, {"id": "shoe-001", "quantity": 1}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "line_item_duplicate",
        ),
        (
            json!([{"id": "shoe-001", "quantity": 1, "unit_price": 1}]),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (json!("shoe"), StatusCode::BAD_REQUEST, "invalid_body"),
    ] {
        let (got, body) = w
            .post("/v1/checkout-sessions", json!({"line_items": items}))
            .await;
        assert_eq!(
            (got, body["code"].as_str().unwrap()),
            (status, code),
            "{items}"
        );
    }
    let r = w
        .http
        .get(w.url("/v1/checkout-sessions/cs_nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn spec4_a_mandate_completes_its_session_once_and_only_once() {
    let w = World::new().await;
    let (id, cart) = w.shoe_session().await;
    let token = w.mint(&w.claims(&cart));
    let r = w.complete(&id, Some(&token), Some(AGENT)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "completed");
    assert_eq!(body["amount"], 8999, "exactly the cart's total");
    assert_eq!(body["currency"], "USD");
    assert_eq!(body["mandate"]["sub"], "alice");
    assert_eq!(body["mandate"]["kid"], w.user.kid().as_str());
    let order_id = body["order_id"].as_str().unwrap().to_owned();
    let got: Value = w
        .http
        .get(w.url(&format!("/v1/checkout-sessions/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["status"], "completed");
    assert_eq!(got["order_id"], order_id.as_str());
    // The session does not complete again, even with a fresh mandate; the fresh one is not spent.
    let fresh = w.mint(&w.claims(&cart));
    let r = w.complete(&id, Some(&fresh), Some(AGENT)).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "session_completed"
    );
    // The spent mandate does not pay for another session with the same cart.
    let (other, _) = w.shoe_session().await;
    assert_eq!(
        w.code_for(&other, &token, AGENT).await,
        (StatusCode::UNAUTHORIZED, "mandate_replayed".into())
    );
    // The fresh one does.
    assert_eq!(w.code_for(&other, &fresh, AGENT).await.1, "ok");
}

#[tokio::test]
async fn spec4_every_refusal_is_reachable_over_http() {
    let w = World::new().await;
    let (_, cart) = w.shoe_session().await;
    let kid = w.user.kid().to_string();
    let header = json!({"alg": "ES256", "typ": "ap2-intent+jwt", "kid": kid});
    let claims = serde_json::to_value(w.claims(&cart)).unwrap();
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        c["jti"] = json!(Jti::random().unwrap().as_str());
        edit(&mut c);
        c
    };
    let other_cart = {
        let mut c = serde_json::to_value(&cart).unwrap();
        c["line_items"][0]["title"] = json!("Trail Runner (used)");
        Cart::from_json(c.to_string().as_bytes()).unwrap()
    };
    let mut cases: Vec<(String, &str)> = vec![
        ("not-a-jwt".into(), "mandate_malformed"),
        (format!("{}.{}", "a".repeat(9000), "b.c"), "mandate_malformed"),
        (w.sign_raw(&json!({"alg": "ES256", "typ": "ap2-intent+jwt", "kid": kid, "jku": "https://evil"}), &with(&|_| {})), "mandate_header_rejected"),
        (w.sign_raw(&json!({"alg": "HS256", "typ": "ap2-intent+jwt", "kid": kid}), &with(&|_| {})), "mandate_algorithm_unsupported"),
        (w.sign_raw(&json!({"alg": "ES256", "typ": "ap2-intent+jwt", "kid": "unknown-kid"}), &with(&|_| {})), "mandate_key_unknown"),
        (w.sign_raw(&header, &with(&|c| c["iss"] = json!("https://evil.example"))), "mandate_issuer_mismatch"),
        (w.sign_raw(&header, &with(&|c| c["aud"] = json!("other-corp"))), "mandate_audience_mismatch"),
        (w.sign_raw(&header, &with(&|c| { c["iat"] = json!(now() - 400); c["exp"] = json!(now() - 100); })), "mandate_expired"),
        (w.sign_raw(&header, &with(&|c| c["nbf"] = json!(now() + 100))), "mandate_not_yet_valid"),
        (w.sign_raw(&header, &with(&|c| c["exp"] = json!(now() + 1000))), "mandate_lifetime_too_long"),
        (w.sign_raw(&header, &with(&|c| c["ap2_intent"] = json!("SUBSCRIBE_V1"))), "mandate_intent_unsupported"),
        (w.sign_raw(&header, &with(&|c| c["ap2_scope"]["max_amount"] = json!(89.99))), "mandate_scope_invalid"),
        (w.sign_raw(&header, &with(&|c| c["ap2_scope"]["allow_agent_id"] = json!("agent-8"))), "mandate_agent_mismatch"),
        (w.sign_raw(&header, &with(&|c| c["ap2_scope"]["cart_hash"] = json!(other_cart.hash().as_str()))), "mandate_cart_mismatch"),
        (w.sign_raw(&header, &with(&|c| c["ap2_scope"]["currency"] = json!("EUR"))), "mandate_currency_mismatch"),
        (w.sign_raw(&header, &with(&|c| c["ap2_scope"]["max_amount"] = json!("89.98"))), "mandate_amount_exceeded"),
    ];
    let valid = w.sign_raw(&header, &with(&|_| {}));
    let (input, _) = valid.rsplit_once('.').unwrap();
    cases.push((
        format!(
            "{input}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0u8; 64])
        ),
        "mandate_signature_invalid",
    ));
    for (token, code) in &cases {
        let (session, _) = w.shoe_session().await;
        assert_eq!(
            w.code_for(&session, token, AGENT).await,
            (StatusCode::UNAUTHORIZED, (*code).to_owned()),
            "{code}"
        );
    }
    // A refused mandate is not spent: the valid one still works, once.
    let (session, _) = w.shoe_session().await;
    assert_eq!(w.code_for(&session, &valid, AGENT).await.1, "ok");
    let (session, _) = w.shoe_session().await;
    assert_eq!(
        w.code_for(&session, &valid, AGENT).await,
        (StatusCode::UNAUTHORIZED, "mandate_replayed".into())
    );

    // No Authorization header, a non-Bearer one, no agent header.
    let (session, _) = w.shoe_session().await;
    let r = w.complete(&session, None, Some(AGENT)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "mandate_required");
    let r = w
        .http
        .post(w.url(&format!("/v1/checkout-sessions/{session}/complete")))
        .header("authorization", "Basic YWxpY2U6c2VjcmV0")
        .header("AP2-Agent-Id", AGENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "mandate_malformed"
    );
    let fresh = w.mint(&w.claims(&cart));
    let r = w.complete(&session, Some(&fresh), None).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "agent_id_required"
    );
    // Present but not an agent id: said so, not "missing".
    for bad in ["", "agent 7", "agent/7", "agënt-7"] {
        let r = w
            .http
            .post(w.url(&format!("/v1/checkout-sessions/{session}/complete")))
            .bearer_auth(&fresh)
            .header("AP2-Agent-Id", bad.as_bytes())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["code"],
            "agent_id_invalid",
            "{bad:?}"
        );
    }
    assert_eq!(
        w.code_for(&session, &fresh, AGENT).await.1,
        "ok",
        "the mandate was not spent by the bad requests"
    );
}

#[tokio::test]
async fn spec4_a_revoked_key_is_refused() {
    let mut w = World::new().await;
    // A short key cache: the revocation is seen within its max age.
    w.merchant.take().unwrap().stop().await.unwrap();
    w.start_merchant(1).await;
    let (session, cart) = w.shoe_session().await;
    let token = w.mint(&w.claims(&cart));
    let verify = json!({"mandate": token, "agent_id": AGENT, "cart": cart, "consume": false});
    let (status, _) = w.post("/v1/mandates/verify", verify.clone()).await;
    assert_eq!(status, StatusCode::OK, "the key is cached now");
    w.directory_client
        .revoke(&SecretString::from("tok"), w.user.kid())
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        w.code_for(&session, &token, AGENT).await,
        (StatusCode::UNAUTHORIZED, "mandate_key_revoked".into())
    );
}

#[tokio::test]
async fn spec4_fifty_concurrent_presentations_accept_exactly_one() {
    let w = Arc::new(World::new().await);
    let (_, cart) = w.shoe_session().await;
    let token = w.mint(&w.claims(&cart));
    let body = json!({"mandate": token, "agent_id": AGENT, "cart": cart});
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (w, body) = (w.clone(), body.clone());
            tokio::spawn(async move { w.post("/v1/mandates/verify", body).await })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        if status == StatusCode::OK {
            ok += 1;
        } else {
            assert_eq!(body["code"], "mandate_replayed");
        }
    }
    assert_eq!(ok, 1);
    // Two agents' mandates racing for one session: one order.
    let (session, cart) = w.shoe_session().await;
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let w = w.clone();
            let token = w.mint(&w.claims(&cart));
            let session = session.clone();
            tokio::spawn(async move { w.code_for(&session, &token, AGENT).await })
        })
        .collect();
    let mut completed = 0;
    for task in tasks {
        let (status, code) = task.await.unwrap();
        if code == "ok" {
            completed += 1;
        } else {
            assert_eq!(
                (status, code.as_str()),
                (StatusCode::CONFLICT, "session_completed")
            );
        }
    }
    assert_eq!(completed, 1);
}

#[tokio::test]
async fn the_verify_endpoint_consumes_only_when_asked() {
    let w = World::new().await;
    let (_, cart) = w.shoe_session().await;
    let token = w.mint(&w.claims(&cart));
    let dry = json!({"mandate": token, "agent_id": AGENT, "cart": cart, "consume": false});
    for _ in 0..3 {
        let (status, body) = w.post("/v1/mandates/verify", dry.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["consumed"], false);
        assert_eq!(body["claims"]["sub"], "alice");
    }
    let spend = json!({"mandate": token, "agent_id": AGENT, "cart": cart});
    assert_eq!(
        w.post("/v1/mandates/verify", spend.clone()).await.0,
        StatusCode::OK
    );
    let (status, body) = w.post("/v1/mandates/verify", spend).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("mandate_replayed"))
    );
    let (status, body) = w
        .post(
            "/v1/mandates/verify",
            json!({"mandate": token, "agent_id": AGENT, "cart": {"total": 1}}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("cart_invalid"))
    );
}

#[tokio::test]
async fn redis_down_fails_closed_and_the_merchant_recovers_when_it_returns() {
    let mut w = World::new().await;
    let (session, cart) = w.shoe_session().await;
    let token = w.mint(&w.claims(&cart));
    w.redis.stop();
    for _ in 0..3 {
        let (status, code) = w.code_for(&session, &token, AGENT).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "replay_store_unavailable")
        );
    }
    let r = w.http.get(w.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let got: Value = w
        .http
        .get(w.url(&format!("/v1/checkout-sessions/{session}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["status"], "ready_for_complete", "nothing was charged");
    w.redis.restart();
    // The same merchant process, no restart: the connection comes back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, code) = w.code_for(&session, &token, AGENT).await;
        if code == "ok" {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{code}");
        assert!(
            std::time::Instant::now() < deadline,
            "the merchant did not recover"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let metrics = w
        .http
        .get(w.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ap2_replay_store_errors_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ap2_mandate_verifications_total{result="replay_store_unavailable"}"#)
    );
    assert!(metrics.contains("ap2_key_cache_hits_total"));
}

#[tokio::test]
async fn orders_survive_a_restart_and_a_persisted_replay_set_still_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::with_redis(RedisServer::start_persistent(dir.path())).await;
    let (session, cart) = w.shoe_session().await;
    let token = w.mint(&w.claims(&cart));
    assert_eq!(w.code_for(&session, &token, AGENT).await.1, "ok");
    w.restart_merchant().await;
    w.redis.restart();
    let got: Value = w
        .http
        .get(w.url(&format!("/v1/checkout-sessions/{session}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["status"], "completed");
    assert!(got["order_id"].as_str().unwrap().starts_with("ord_"));
    let (other, _) = w.shoe_session().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, code) = w.code_for(&other, &token, AGENT).await;
        if status != StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(code, "mandate_replayed");
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A processor that declines every charge.
struct Declining;

impl merchant::payment::PaymentProcessor for Declining {
    fn charge<'a>(
        &'a self,
        _order_id: &'a str,
        _amount: ap2_mandate::Money,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<merchant::payment::Charge, merchant::payment::PaymentError>,
                > + Send
                + 'a,
        >,
    > {
        Box::pin(async { Err(merchant::payment::PaymentError("card declined".into())) })
    }
}

#[tokio::test]
async fn a_declined_charge_leaves_the_session_open_and_no_order() {
    let mut w = World::new().await;
    w.merchant.take().unwrap().stop().await.unwrap();
    let mut config = merchant::Config::local(
        "acme-corp",
        w.merchant_dir.clone(),
        &w.directory.url(),
        Some(w.redis.url()),
    );
    config.require_agent_binding = false;
    w.merchant = Some(
        merchant::spawn(
            config,
            merchant::Parts {
                payments: Arc::new(Declining),
                ..merchant::Parts::default()
            },
        )
        .await
        .unwrap(),
    );
    let (session, cart) = w.shoe_session().await;
    let token = w.mint(&w.claims(&cart));
    let r = w.complete(&session, Some(&token), Some(AGENT)).await;
    assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "payment_failed");
    let got: Value = w
        .http
        .get(w.url(&format!("/v1/checkout-sessions/{session}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["status"], "ready_for_complete");
    assert!(got.get("order_id").is_none());
}
