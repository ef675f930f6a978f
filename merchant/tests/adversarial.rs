//! The forged mandates of `ap2_testkit::forge` presented through the merchant's HTTP API, with a
//! real key directory and a real redis-server: each gets exactly its SPEC §4 code. The library
//! runs the same cases in `crates/mandate/tests/adversarial.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use ap2_directory_client::{DirectoryClient, DirectoryClientConfig};
use ap2_mandate::{Clock, LocalSigner, Signer, SystemClock};
use ap2_testkit::RedisServer;
use ap2_testkit::forge::{self, CartChoice, Keys};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

const OTHER_ISSUER: &str = "https://other-wallet.example";
/// The merchant's backend token for `/v1/mandates/verify` (SPEC §9).
const BACKEND_TOKEN: &str = "backend-secret";

struct World {
    _redis: RedisServer,
    _directory: key_directory::Running,
    merchant: merchant::Running,
    keys: Keys,
    other_issuer_key: LocalSigner,
    http: reqwest::Client,
    _tmp: tempfile::TempDir,
}

async fn world() -> World {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let directory = key_directory::spawn(key_directory::Config::local(
        tmp.path().join("keys.db"),
        vec![
            format!("{}=tok", forge::ISSUER).parse().unwrap(),
            format!("{OTHER_ISSUER}=tok2").parse().unwrap(),
        ],
    ))
    .await
    .unwrap();
    let client = DirectoryClient::new(&directory.url(), DirectoryClientConfig::default()).unwrap();
    let keys = Keys::generate().unwrap();
    let tok = SecretString::from("tok");
    for (key, subject) in [
        (&keys.victim, forge::SUBJECT),
        (&keys.mallory, forge::MALLORY),
        (&keys.revoked, forge::SUBJECT),
    ] {
        client
            .register(&tok, subject, &key.public_key().to_jwk(key.kid()))
            .await
            .unwrap();
    }
    client.revoke(&tok, keys.revoked.kid()).await.unwrap();
    let other_issuer_key = LocalSigner::generate().unwrap();
    client
        .register(
            &SecretString::from("tok2"),
            forge::SUBJECT,
            &other_issuer_key.public_key().to_jwk(other_issuer_key.kid()),
        )
        .await
        .unwrap();
    // SPEC §4 alone: the forged mandates are unbound Bearer tokens, each with its own code.
    let mut config = merchant::Config::local(
        forge::MERCHANT,
        tmp.path().join("merchant"),
        &directory.url(),
        Some(redis.url()),
    );
    config.require_agent_binding = false;
    config.backend_tokens = vec![format!("backend={BACKEND_TOKEN}").parse().unwrap()];
    let merchant = merchant::spawn(config, merchant::Parts::default())
        .await
        .unwrap();
    World {
        _redis: redis,
        _directory: directory,
        merchant,
        keys,
        other_issuer_key,
        http: reqwest::Client::new(),
        _tmp: tmp,
    }
}

impl World {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.merchant.url())
    }

    async fn session(&self, choice: CartChoice) -> String {
        // Ask for the items in the order opposite to the cart the mandate was hashed over.
        let items = match choice {
            CartChoice::Shoe => json!([{"id": "shoe-001", "quantity": 1}]),
            CartChoice::PairReordered => {
                json!([{"id": "sock-10", "quantity": 3}, {"id": "hat-7", "quantity": 1}])
            }
        };
        let r = self
            .http
            .post(self.url("/v1/checkout-sessions"))
            .json(&json!({"line_items": items}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["cart_hash"], forge::cart_hash(choice).as_str());
        body["id"].as_str().unwrap().to_owned()
    }

    /// Presents `token` at a fresh session; returns the status and the code (or "ok").
    async fn present(&self, token: &str, agent: &str, cart: CartChoice) -> (StatusCode, String) {
        let session = self.session(cart).await;
        let header_safe =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).is_ok();
        let r = if header_safe {
            self.http
                .post(self.url(&format!("/v1/checkout-sessions/{session}/complete")))
                .bearer_auth(token)
                .header("AP2-Agent-Id", agent)
                .send()
                .await
                .unwrap()
        } else {
            // Not expressible in a header (control characters): the backend's verify endpoint.
            self.http
                .post(self.url("/v1/mandates/verify"))
                .bearer_auth(BACKEND_TOKEN)
                .json(&json!({"mandate": token, "agent_id": agent, "cart": forge::cart_json(cart)}))
                .send()
                .await
                .unwrap()
        };
        let status = r.status();
        let www = r.headers().get("www-authenticate").cloned();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status == StatusCode::UNAUTHORIZED {
            let www = www.expect("a 401 carries WWW-Authenticate");
            assert!(
                www.to_str()
                    .unwrap()
                    .starts_with("Bearer error=\"invalid_token\""),
                "{www:?}"
            );
        }
        let code = if status.is_success() {
            "ok".to_owned()
        } else {
            body["code"].as_str().unwrap_or("-").to_owned()
        };
        (status, code)
    }
}

#[tokio::test]
async fn every_forged_mandate_gets_its_exact_code_over_http() {
    let w = world().await;
    let cases = forge::cases(&w.keys, SystemClock.now_unix());
    let mut failures = Vec::new();
    for case in &cases {
        let (status, code) = w.present(&case.token, case.agent, case.cart).await;
        let status_ok = if case.expected == "ok" {
            status == StatusCode::OK
        } else {
            status == StatusCode::UNAUTHORIZED
        };
        if code != case.expected || !status_ok {
            failures.push(format!(
                "[{}] {}: expected {}, got {status} {code}",
                case.family, case.name, case.expected
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn a_ten_megabyte_token_is_refused_at_the_door() {
    let w = world().await;
    let huge = "e".repeat(10 << 20);
    // In a header, the HTTP server refuses it before any handler runs.
    let session = w.session(CartChoice::Shoe).await;
    let r = w
        .http
        .post(w.url(&format!("/v1/checkout-sessions/{session}/complete")))
        .bearer_auth(&huge)
        .header("AP2-Agent-Id", forge::AGENT)
        .send()
        .await;
    match r {
        Ok(r) => assert!(r.status().is_client_error(), "{}", r.status()),
        Err(e) => assert!(e.is_request() || e.is_connect() || e.is_body(), "{e}"),
    }
    // In a body, the body limit refuses it.
    let r = w
        .http
        .post(w.url("/v1/mandates/verify"))
        .bearer_auth(BACKEND_TOKEN)
        .json(&json!({"mandate": huge, "agent_id": forge::AGENT, "cart": forge::cart_json(CartChoice::Shoe)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "body_too_large");
    // The service is still fine.
    assert_eq!(
        w.http.get(w.url("/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
}

fn claims(iss: &str, jti: &str) -> Value {
    let now = SystemClock.now_unix();
    json!({"iss": iss, "sub": forge::SUBJECT, "aud": forge::MERCHANT, "iat": now, "exp": now + 120, "jti": jti,
           "ap2_intent": "CART_PURCHASE_V1",
           "ap2_scope": {"max_amount": "89.99", "currency": "USD", "cart_hash": forge::cart_hash(CartChoice::Shoe), "allow_agent_id": forge::AGENT}})
}

fn sign(key: &LocalSigner, claims: &Value) -> String {
    let header = json!({"alg": "ES256", "typ": "ap2-intent+jwt", "kid": key.kid().as_str()});
    let input = format!(
        "{}.{}",
        forge::b64(header.to_string()),
        forge::b64(claims.to_string())
    );
    format!(
        "{input}.{}",
        forge::b64(key.sign_es256(input.as_bytes()).unwrap())
    )
}

#[tokio::test]
async fn a_hundred_concurrent_presentations_accept_exactly_one() {
    let w = Arc::new(world().await);
    let token = Arc::new(sign(&w.keys.victim, &claims(forge::ISSUER, "concurrent-1")));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (w, token) = (w.clone(), token.clone());
            tokio::spawn(async move {
                let r = w
                    .http
                    .post(w.url("/v1/mandates/verify"))
        .bearer_auth(BACKEND_TOKEN)
                    .json(&json!({"mandate": *token, "agent_id": forge::AGENT, "cart": forge::cart_json(CartChoice::Shoe)}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                (status, r.json::<Value>().await.unwrap()["code"].as_str().map(str::to_owned))
            })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        match task.await.unwrap() {
            (StatusCode::OK, _) => accepted += 1,
            (status, code) => assert_eq!(
                (status, code.as_deref()),
                (StatusCode::UNAUTHORIZED, Some("mandate_replayed"))
            ),
        }
    }
    assert_eq!(accepted, 1);
}

#[tokio::test]
async fn the_same_jti_under_another_issuer_is_independent() {
    let w = world().await;
    let ours = sign(&w.keys.victim, &claims(forge::ISSUER, "shared-jti"));
    let theirs = sign(&w.other_issuer_key, &claims(OTHER_ISSUER, "shared-jti"));
    assert_eq!(
        w.present(&ours, forge::AGENT, CartChoice::Shoe).await.1,
        "ok"
    );
    assert_eq!(
        w.present(&theirs, forge::AGENT, CartChoice::Shoe).await.1,
        "ok"
    );
    assert_eq!(
        w.present(&theirs, forge::AGENT, CartChoice::Shoe).await.1,
        "mandate_replayed"
    );
    assert_eq!(
        w.present(&ours, forge::AGENT, CartChoice::Shoe).await.1,
        "mandate_replayed"
    );
}
