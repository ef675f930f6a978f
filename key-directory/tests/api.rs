//! The key directory over real HTTP: every rule of SPEC §5 and of its issue.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use ap2_mandate::LocalSigner;
use key_directory::{Config, Running};
use reqwest::StatusCode;
use serde_json::{Value, json};

const WALLET: &str = "https://wallet.example";
const WALLET_TOKEN: &str = "wallet-token-123";
const OTHER: &str = "https://other-wallet.example";
const OTHER_TOKEN: &str = "other-token-456";

struct Directory {
    running: Running,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start() -> Directory {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::local(
        dir.path().join("keys.db"),
        vec![
            format!("{WALLET}={WALLET_TOKEN}").parse().unwrap(),
            format!("{OTHER}={OTHER_TOKEN}").parse().unwrap(),
        ],
    );
    Directory {
        running: key_directory::spawn(config).await.unwrap(),
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

impl Directory {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.url())
    }

    async fn register(&self, token: &str, body: &Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url("/v1/keys"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    async fn revoke(&self, token: &str, kid: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url(&format!("/v1/keys/{kid}/revoke")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }
}

fn new_jwk() -> (LocalSigner, Value) {
    let key = LocalSigner::generate().unwrap();
    let mut jwk = key.public_key().to_jwk(ap2_mandate::Signer::kid(&key));
    jwk.as_object_mut().unwrap().remove("kid");
    (key, jwk)
}

fn assert_problem(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], expected.as_u16());
}

#[tokio::test]
async fn spec5_registered_key_is_fetched_by_kid_and_listed_in_the_jwks() {
    let d = start().await;
    let (key, jwk) = new_jwk();
    let kid = ap2_mandate::Signer::kid(&key).to_string();
    let (status, body) = d
        .register(WALLET_TOKEN, &json!({"subject": "user-1", "jwk": jwk}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["kid"], kid, "kid defaults to the RFC 7638 thumbprint");
    assert_eq!(body["issuer"], WALLET, "the issuer is the token's");
    assert_eq!(body["status"], "active");

    let r = d.get(&format!("/v1/keys/{kid}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "public, max-age=60");
    let fetched: Value = r.json().await.unwrap();
    assert_eq!(fetched["subject"], "user-1");
    assert_eq!(fetched["jwk"]["x"], jwk["x"]);
    assert_eq!(fetched["jwk"]["kid"], kid);
    assert!(fetched["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(fetched.get("revoked_at").is_none());
    // The served JWK verifies a signature made with the private key.
    let (public, _) = ap2_mandate::EcPublicKey::from_jwk(&fetched["jwk"]).unwrap();
    let sig = ap2_mandate::Signer::sign_es256(&key, b"m").unwrap();
    assert!(public.verification_key().unwrap().verify_es256(b"m", &sig));

    let jwks: Value = d.get("/.well-known/jwks.json").await.json().await.unwrap();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid)
    );
}

#[tokio::test]
async fn spec5_explicit_kid_is_kept_and_the_same_key_again_is_idempotent() {
    let d = start().await;
    let (_, mut jwk) = new_jwk();
    jwk["kid"] = json!("user-2.key:1");
    let body = json!({"subject": "user-2", "jwk": jwk});
    let (status, first) = d.register(WALLET_TOKEN, &body).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(first["kid"], "user-2.key:1");
    let (status, again) = d.register(WALLET_TOKEN, &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, first);
}

#[tokio::test]
async fn spec5_the_same_kid_with_another_key_subject_or_issuer_is_a_conflict() {
    let d = start().await;
    let (_, mut jwk) = new_jwk();
    jwk["kid"] = json!("shared-kid");
    let (status, _) = d
        .register(WALLET_TOKEN, &json!({"subject": "u", "jwk": jwk}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, mut other) = new_jwk();
    other["kid"] = json!("shared-kid");
    let (status, body) = d
        .register(WALLET_TOKEN, &json!({"subject": "u", "jwk": other}))
        .await;
    assert_problem(status, &body, StatusCode::CONFLICT, "key_conflict");
    let (status, body) = d
        .register(WALLET_TOKEN, &json!({"subject": "v", "jwk": jwk}))
        .await;
    assert_problem(status, &body, StatusCode::CONFLICT, "key_conflict");
    let (status, body) = d
        .register(OTHER_TOKEN, &json!({"subject": "u", "jwk": jwk}))
        .await;
    assert_problem(status, &body, StatusCode::CONFLICT, "key_conflict");
    // One public key, one registration: the same key under another kid is refused too.
    jwk["kid"] = json!("second-kid");
    let (status, body) = d
        .register(WALLET_TOKEN, &json!({"subject": "u", "jwk": jwk}))
        .await;
    assert_problem(status, &body, StatusCode::CONFLICT, "key_conflict");
}

#[tokio::test]
async fn writes_need_a_valid_issuer_token() {
    let d = start().await;
    let (_, jwk) = new_jwk();
    let body = json!({"subject": "u", "jwk": jwk});
    let r = d
        .http
        .post(d.url("/v1/keys"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "unauthorized");

    for auth in [
        "Bearer wrong-token",
        "Basic d2FsbGV0",
        "Bearer",
        &format!("Bearer {WALLET_TOKEN}x"),
    ] {
        let r = d
            .http
            .post(d.url("/v1/keys"))
            .header("authorization", auth)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth}");
        assert_eq!(
            r.headers()["www-authenticate"],
            r#"Bearer error="invalid_token""#
        );
    }
    // Authentication is checked before the body: a bad body with no token is still 401.
    let r = d
        .http
        .post(d.url("/v1/keys"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn spec5_only_the_registering_issuer_may_revoke_and_the_key_stays_listed_as_revoked() {
    let d = start().await;
    let (key, jwk) = new_jwk();
    let kid = ap2_mandate::Signer::kid(&key).to_string();
    let body = json!({"subject": "u", "jwk": jwk});
    d.register(WALLET_TOKEN, &body).await;

    let (status, problem) = d.revoke(OTHER_TOKEN, &kid).await;
    assert_problem(status, &problem, StatusCode::FORBIDDEN, "forbidden");
    let r = d
        .http
        .post(d.url(&format!("/v1/keys/{kid}/revoke")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (status, problem) = d.revoke(WALLET_TOKEN, "no-such-kid").await;
    assert_problem(status, &problem, StatusCode::NOT_FOUND, "key_not_found");

    let (status, revoked) = d.revoke(WALLET_TOKEN, &kid).await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["status"], "revoked");
    let revoked_at = revoked["revoked_at"].as_str().unwrap().to_owned();
    let (status, again) = d.revoke(WALLET_TOKEN, &kid).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        again["revoked_at"],
        revoked_at.as_str(),
        "the first revocation time is kept"
    );

    let fetched: Value = d
        .get(&format!("/v1/keys/{kid}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["status"], "revoked");
    assert_eq!(fetched["revoked_at"], revoked_at.as_str());
    let jwks: Value = d.get("/.well-known/jwks.json").await.json().await.unwrap();
    assert!(
        !jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid)
    );
    let (status, problem) = d.register(WALLET_TOKEN, &body).await;
    assert_problem(status, &problem, StatusCode::CONFLICT, "key_revoked");
}

#[tokio::test]
async fn spec5_bad_registrations_each_get_their_own_code() {
    let d = start().await;
    let (_, good) = new_jwk();
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut jwk = good.clone();
        edit(&mut jwk);
        json!({"subject": "u", "jwk": jwk})
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            with(&|j| j["d"] = json!("zs0tk9lYDvVa8K8wuIhfee6YmgwhqcTttsenZh4AUAQ")),
            "jwk_private_member",
        ),
        (
            with(&|j| j["crv"] = json!("P-384")),
            "jwk_unsupported_curve",
        ),
        (
            with(&|j| j["crv"] = json!("secp256k1")),
            "jwk_unsupported_curve",
        ),
        (
            with(&|j| j["kty"] = json!("RSA")),
            "jwk_unsupported_key_type",
        ),
        (
            with(&|j| j["kty"] = json!("oct")),
            "jwk_unsupported_key_type",
        ),
        (with(&|j| j["x"] = json!("AAAA")), "jwk_invalid_coordinates"),
        (
            with(&|j| {
                let x = j["x"].as_str().unwrap().to_owned();
                j["x"] = json!(format!("{x}AA"));
            }),
            "jwk_invalid_coordinates",
        ),
        (with(&|j| j["y"] = j["x"].clone()), "jwk_not_on_curve"),
        (with(&|j| j["alg"] = json!("HS256")), "jwk_invalid_usage"),
        (with(&|j| j["use"] = json!("enc")), "jwk_invalid_usage"),
        (
            with(&|j| j["kid"] = json!("../../etc/passwd")),
            "kid_invalid",
        ),
        (with(&|j| j["kid"] = json!("")), "kid_invalid"),
        (with(&|j| j["kid"] = json!("k".repeat(129))), "kid_invalid"),
        (json!({"subject": "", "jwk": good}), "subject_invalid"),
        (
            json!({"subject": "a\u{0}b", "jwk": good}),
            "subject_invalid",
        ),
        (
            json!({"subject": "x".repeat(257), "jwk": good}),
            "subject_invalid",
        ),
        (
            json!({"subject": "u", "jwk": "not an object"}),
            "jwk_invalid",
        ),
    ];
    for (body, code) in cases {
        let (status, problem) = d.register(WALLET_TOKEN, &body).await;
        assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY, code);
    }
    for body in [
        json!({"jwk": good}),
        json!({"subject": "u"}),
        json!({"subject": "u", "jwk": good, "extra": 1}),
        json!([1]),
    ] {
        let (status, problem) = d.register(WALLET_TOKEN, &body).await;
        assert_problem(status, &problem, StatusCode::BAD_REQUEST, "invalid_body");
    }
    let r = d
        .http
        .post(d.url("/v1/keys"))
        .bearer_auth(WALLET_TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_body");
    let r = d
        .http
        .post(d.url("/v1/keys"))
        .bearer_auth(WALLET_TOKEN)
        .body(json!({"subject": "u", "jwk": good}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "unsupported_media_type"
    );
    let huge = json!({"subject": "x".repeat(64 * 1024), "jwk": good});
    let (status, problem) = d.register(WALLET_TOKEN, &huge).await;
    assert_problem(
        status,
        &problem,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    );
    // Nothing above was stored.
    let jwks: Value = d.get("/.well-known/jwks.json").await.json().await.unwrap();
    assert_eq!(jwks["keys"], json!([]));
}

#[tokio::test]
async fn spec5_unknown_kid_is_404_problem_json() {
    let d = start().await;
    let r = d.get("/v1/keys/no-such-kid").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "key_not_found");
    let r = d.get("/v1/keys/bad%20kid").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "kid_invalid");
    // A path that is not UTF-8 once decoded is a problem too, not axum's plain text.
    let r = d.get("/v1/keys/%FF").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_path");
}

#[tokio::test]
async fn concurrent_registrations_of_one_kid_end_with_one_winner() {
    let d = std::sync::Arc::new(start().await);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let d = d.clone();
            tokio::spawn(async move {
                let (_, mut jwk) = new_jwk();
                jwk["kid"] = json!("contested");
                d.register(WALLET_TOKEN, &json!({"subject": "u", "jwk": jwk}))
                    .await
                    .0
            })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            StatusCode::CREATED => created += 1,
            status => assert_eq!(status, StatusCode::CONFLICT),
        }
    }
    assert_eq!(created, 1);
    // The same key registered concurrently: one 201, the rest 200.
    let (_, jwk) = new_jwk();
    let body = json!({"subject": "u", "jwk": jwk});
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (d, body) = (d.clone(), body.clone());
            tokio::spawn(async move { d.register(WALLET_TOKEN, &body).await.0 })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        19
    );
}

#[tokio::test]
async fn health_readiness_metrics_fallbacks_and_request_ids() {
    let d = start().await;
    assert_eq!(d.get("/healthz").await.status(), StatusCode::OK);
    let r = d.get("/readyz").await;
    assert_eq!(r.status(), StatusCode::OK);
    let first = r.headers()["x-request-id"].clone();
    let second = d.get("/healthz").await.headers()["x-request-id"].clone();
    assert_ne!(first, second, "every request gets its own id");
    assert!(!first.is_empty());
    let r = d
        .http
        .get(d.url("/readyz"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-me-42");
    let r = d.get("/no/such/route").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = d.http.delete(d.url("/v1/keys")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "method_not_allowed"
    );
    let metrics = d.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    assert!(metrics.contains(r#"service="key-directory""#));
    assert!(metrics.contains(r#"route="/readyz""#));
    assert!(metrics.contains("http_request_duration_seconds_bucket"));
}
