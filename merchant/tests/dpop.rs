//! SPEC §8 over real HTTP, with a real key directory and a real redis-server: every agent call
//! with its proof, sessions owned by the key that opened them, bound mandates, the forged-proof
//! family, replays, nonces and the verify endpoint.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use ap2_directory_client::{DirectoryClient, DirectoryClientConfig};
use ap2_mandate::{
    AgentId, Ap2Scope, Cart, DpopProof, IntentMandate, Jkt, Jti, LocalSigner, MerchantId,
    ProofRequest, Signer, make_proof,
};
use ap2_testkit::{RedisServer, forge};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use secrecy::SecretString;
use serde_json::{Value, json};

const ISSUER: &str = "https://wallet.example";
const AGENT: &str = "agent-7";
const SESSIONS: &str = "/v1/checkout-sessions";
/// The merchant's backend token for `/v1/mandates/verify` (SPEC §9).
const BACKEND_TOKEN: &str = "backend-secret";
const BACKEND_AUTH: &str = "Bearer backend-secret";

fn system_now() -> i64 {
    ap2_mandate::Clock::now_unix(&ap2_mandate::SystemClock)
}

struct World {
    _redis: RedisServer,
    _directory: key_directory::Running,
    merchant: merchant::Running,
    user: LocalSigner,
    agent: LocalSigner,
    http: reqwest::Client,
    /// The merchant's clock, stopped (moved only by `advance`), so the proofs' time windows
    /// are exact; proofs and mandates are made at `now`.
    now: i64,
    clock: Arc<std::sync::atomic::AtomicI64>,
    data_dir: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

/// A clock the test moves.
struct TestClock(Arc<std::sync::atomic::AtomicI64>);

impl ap2_mandate::Clock for TestClock {
    fn now_unix(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("-")
    }

    fn challenge(&self) -> &str {
        self.headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl World {
    async fn new() -> Self {
        Self::with(|_| {}).await
    }

    async fn with(edit: impl FnOnce(&mut merchant::Config)) -> Self {
        let redis = RedisServer::start();
        let tmp = tempfile::tempdir().unwrap();
        let directory = key_directory::spawn(key_directory::Config::local(
            tmp.path().join("keys.db"),
            vec![format!("{ISSUER}=tok").parse().unwrap()],
        ))
        .await
        .unwrap();
        let client =
            DirectoryClient::new(&directory.url(), DirectoryClientConfig::default()).unwrap();
        let user = LocalSigner::generate().unwrap();
        client
            .register(
                &SecretString::from("tok"),
                "alice",
                &user.public_key().to_jwk(user.kid()),
            )
            .await
            .unwrap();
        let mut config = merchant::Config::local(
            "acme-corp",
            tmp.path().join("merchant"),
            &directory.url(),
            Some(redis.url()),
        );
        config.backend_tokens = vec![format!("backend={BACKEND_TOKEN}").parse().unwrap()];
        edit(&mut config);
        let now = system_now();
        let clock = Arc::new(std::sync::atomic::AtomicI64::new(now));
        let data_dir = config.data_dir.clone();
        let merchant = merchant::spawn(
            config,
            merchant::Parts {
                clock: Arc::new(TestClock(clock.clone())),
                ..merchant::Parts::default()
            },
        )
        .await
        .unwrap();
        Self {
            _redis: redis,
            _directory: directory,
            merchant,
            user,
            agent: LocalSigner::generate().unwrap(),
            http: reqwest::Client::new(),
            now,
            clock,
            data_dir,
            _tmp: tmp,
        }
    }

    /// Moves the merchant's clock on.
    fn advance(&self, secs: i64) {
        self.clock
            .fetch_add(secs, std::sync::atomic::Ordering::SeqCst);
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.merchant.url())
    }

    fn proof(&self, key: &LocalSigner, htm: &str, path: &str, token: Option<&str>) -> String {
        make_proof(
            key,
            &ProofRequest {
                htm,
                htu: &self.url(path),
                iat: self.now,
                jti: None,
                token,
                nonce: None,
            },
        )
        .unwrap()
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Answer {
        let mut request = self.http.request(method, self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        Answer {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.json().await.unwrap_or(Value::Null),
        }
    }

    /// Opens a shoe session as `key`.
    async fn session(&self, key: &LocalSigner) -> (String, Cart) {
        let proof = self.proof(key, "POST", SESSIONS, None);
        let got = self
            .send(
                reqwest::Method::POST,
                SESSIONS,
                &[("DPoP", &proof)],
                Some(json!({"line_items": [{"id": "shoe-001", "quantity": 1}]})),
            )
            .await;
        assert_eq!(got.status, StatusCode::CREATED, "{}", got.body);
        let cart = Cart::from_json(got.body["cart"].to_string().as_bytes()).unwrap();
        (got.body["id"].as_str().unwrap().to_owned(), cart)
    }

    fn mandate(&self, cart: &Cart, cnf: Option<&LocalSigner>) -> String {
        let claims = IntentMandate {
            cnf: cnf.map(|key| Jkt::of(key.public_key())),
            amr: None,
            ..claims_of(self, cart)
        };
        ap2_mandate::mint(&self.user, &claims).unwrap()
    }

    fn complete_path(session: &str) -> String {
        format!("{SESSIONS}/{session}/complete")
    }

    /// Completes `session` with `Authorization: <scheme> <mandate>` and the given proof.
    async fn complete(
        &self,
        session: &str,
        scheme: &str,
        mandate: &str,
        proof: Option<&str>,
    ) -> Answer {
        let authorization = format!("{scheme} {mandate}");
        let mut headers = vec![
            ("Authorization", authorization.as_str()),
            ("AP2-Agent-Id", AGENT),
        ];
        if let Some(proof) = proof {
            headers.push(("DPoP", proof));
        }
        self.send(
            reqwest::Method::POST,
            &Self::complete_path(session),
            &headers,
            None,
        )
        .await
    }

    /// Completes `session` the honest way, as `key`.
    async fn complete_as(&self, key: &LocalSigner, session: &str, mandate: &str) -> Answer {
        let proof = self.proof(key, "POST", &Self::complete_path(session), Some(mandate));
        self.complete(session, "DPoP", mandate, Some(&proof)).await
    }
}

fn assert_dpop_challenge(got: &Answer, error: &str) {
    let challenge = got.challenge();
    assert!(
        challenge.starts_with("DPoP ")
            && challenge.contains(&format!("error=\"{error}\""))
            && challenge.contains("algs=\"ES256\""),
        "{} {}: {challenge}",
        got.status,
        got.code()
    );
}

#[tokio::test]
async fn spec8_a_bound_mandate_completes_its_agents_session_once() {
    let w = World::new().await;
    let (session, cart) = w.session(&w.agent).await;
    let mandate = w.mandate(&cart, Some(&w.agent));
    let paid = w.complete_as(&w.agent, &session, &mandate).await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    assert_eq!(paid.body["status"], "completed");
    assert_eq!(paid.body["amount"], 8999);
    // The same mandate with a fresh proof on another of the agent's sessions.
    let (other, _) = w.session(&w.agent).await;
    let again = w.complete_as(&w.agent, &other, &mandate).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    assert_eq!(again.code(), "mandate_replayed");
    assert_dpop_challenge(&again, "invalid_token");
}

#[tokio::test]
async fn spec8_every_agent_call_needs_a_proof() {
    let w = World::new().await;
    let got = w
        .send(
            reqwest::Method::POST,
            SESSIONS,
            &[],
            Some(json!({"line_items": [{"id": "shoe-001", "quantity": 1}]})),
        )
        .await;
    assert_eq!(
        (got.status, got.code()),
        (StatusCode::UNAUTHORIZED, "dpop_proof_required")
    );
    assert_dpop_challenge(&got, "invalid_dpop_proof");
    assert_eq!(
        got.headers.get("content-type").unwrap(),
        "application/problem+json"
    );
    let (session, cart) = w.session(&w.agent).await;
    let got = w
        .send(
            reqwest::Method::GET,
            &format!("{SESSIONS}/{session}"),
            &[],
            None,
        )
        .await;
    assert_eq!(
        (got.status, got.code()),
        (StatusCode::UNAUTHORIZED, "dpop_proof_required")
    );
    let mandate = w.mandate(&cart, Some(&w.agent));
    let got = w.complete(&session, "DPoP", &mandate, None).await;
    assert_eq!(
        (got.status, got.code()),
        (StatusCode::UNAUTHORIZED, "dpop_proof_required")
    );
    // No Authorization at all: the mandate is what is missing, challenged as DPoP.
    let proof = w.proof(&w.agent, "POST", &World::complete_path(&session), None);
    let got = w
        .send(
            reqwest::Method::POST,
            &World::complete_path(&session),
            &[("DPoP", &proof), ("AP2-Agent-Id", AGENT)],
            None,
        )
        .await;
    assert_eq!(
        (got.status, got.code()),
        (StatusCode::UNAUTHORIZED, "mandate_required")
    );
    assert_eq!(got.challenge(), r#"DPoP algs="ES256""#);
}

#[tokio::test]
async fn spec8_a_session_belongs_to_the_key_that_opened_it() {
    let w = World::new().await;
    let (session, cart) = w.session(&w.agent).await;
    let path = format!("{SESSIONS}/{session}");
    let mine = w.proof(&w.agent, "GET", &path, None);
    let got = w
        .send(reqwest::Method::GET, &path, &[("DPoP", &mine)], None)
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.body["id"], session.as_str());
    // Another agent's key: exactly what an unknown id gets, so no existence oracle.
    let other = LocalSigner::generate().unwrap();
    let theirs = w.proof(&other, "GET", &path, None);
    let hidden = w
        .send(reqwest::Method::GET, &path, &[("DPoP", &theirs)], None)
        .await;
    let unknown_path = format!("{SESSIONS}/cs_unknown");
    let unknown_proof = w.proof(&other, "GET", &unknown_path, None);
    let unknown = w
        .send(
            reqwest::Method::GET,
            &unknown_path,
            &[("DPoP", &unknown_proof)],
            None,
        )
        .await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);
    assert_eq!(hidden.body, unknown.body);
    // Completing it with the other key, even with a mandate bound to that key: 404, and the
    // mandate is not spent.
    let theirs = w.mandate(&cart, Some(&other));
    let got = w.complete_as(&other, &session, &theirs).await;
    assert_eq!(
        (got.status, got.code()),
        (StatusCode::NOT_FOUND, "session_not_found")
    );
    let (own, _) = w.session(&other).await;
    let paid = w.complete_as(&other, &own, &theirs).await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
}

#[tokio::test]
async fn spec8_a_stolen_mandate_is_worthless_with_the_thiefs_key() {
    let w = World::new().await;
    let (_, cart) = w.session(&w.agent).await;
    let mandate = w.mandate(&cart, Some(&w.agent));
    // The thief opens its own session for the same cart and presents the copied mandate,
    // naming the agent it copied, with a proof of its own key.
    let thief = LocalSigner::generate().unwrap();
    let (session, _) = w.session(&thief).await;
    let got = w.complete_as(&thief, &session, &mandate).await;
    assert_eq!(
        (got.status, got.code()),
        (StatusCode::UNAUTHORIZED, "dpop_key_mismatch")
    );
    assert_dpop_challenge(&got, "invalid_dpop_proof");
    // As a Bearer token it is refused too.
    let got = w.complete(&session, "Bearer", &mandate, None).await;
    assert_eq!(
        (got.status, got.code()),
        (StatusCode::UNAUTHORIZED, "dpop_proof_required")
    );
    // Nothing was spent: the agent still can.
    let (own, _) = w.session(&w.agent).await;
    let paid = w.complete_as(&w.agent, &own, &mandate).await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
}

#[tokio::test]
async fn spec8_a_bound_mandate_presented_as_bearer_needs_its_proof() {
    let w = World::new().await;
    let (session, cart) = w.session(&w.agent).await;
    let mandate = w.mandate(&cart, Some(&w.agent));
    let proof = w.proof(
        &w.agent,
        "POST",
        &World::complete_path(&session),
        Some(&mandate),
    );
    let got = w.complete(&session, "Bearer", &mandate, Some(&proof)).await;
    assert_eq!(
        (got.status, got.code()),
        (StatusCode::UNAUTHORIZED, "dpop_proof_required")
    );
    let paid = w.complete(&session, "DPoP", &mandate, Some(&proof)).await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
}

#[tokio::test]
async fn spec8_an_unbound_mandate_is_refused_where_binding_is_required() {
    let w = World::new().await;
    let (session, cart) = w.session(&w.agent).await;
    let mandate = w.mandate(&cart, None);
    let got = w.complete_as(&w.agent, &session, &mandate).await;
    assert_eq!(
        (got.status, got.code()),
        (StatusCode::UNAUTHORIZED, "mandate_binding_required")
    );
    assert_dpop_challenge(&got, "invalid_token");
}

#[tokio::test]
async fn spec8_exactly_one_dpop_header() {
    let w = World::new().await;
    let (session, cart) = w.session(&w.agent).await;
    let mandate = w.mandate(&cart, Some(&w.agent));
    let path = World::complete_path(&session);
    let one = w.proof(&w.agent, "POST", &path, Some(&mandate));
    let two = w.proof(&w.agent, "POST", &path, Some(&mandate));
    let authorization = format!("DPoP {mandate}");
    let got = w
        .send(
            reqwest::Method::POST,
            &path,
            &[
                ("Authorization", &authorization),
                ("AP2-Agent-Id", AGENT),
                ("DPoP", &one),
                ("DPoP", &two),
            ],
            None,
        )
        .await;
    assert_eq!(
        (got.status, got.code()),
        (StatusCode::UNAUTHORIZED, "dpop_proof_invalid")
    );
    let joined = format!("{one},{two}");
    let got = w.complete(&session, "DPoP", &mandate, Some(&joined)).await;
    assert_eq!(
        (got.status, got.code()),
        (StatusCode::UNAUTHORIZED, "dpop_proof_invalid")
    );
    let paid = w.complete(&session, "DPoP", &mandate, Some(&one)).await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
}

#[tokio::test]
async fn spec8_every_forged_proof_gets_its_exact_code_over_http() {
    let w = World::new().await;
    let thief = LocalSigner::generate().unwrap();
    let thief_jkt = Jkt::of(thief.public_key());
    let template = forge::proof_cases(&w.agent, &thief, "m.m.m", "POST", &w.url("/t"), w.now);
    let mut failures = Vec::new();
    for (i, sample) in template.iter().enumerate() {
        // The session and the mandate are made first, since the case's htu and ath name them.
        // A case signed honestly by the thief is presented at the thief's own session.
        let owner = match DpopProof::parse(&sample.proof) {
            Ok(p) if p.jkt() == &thief_jkt => &thief,
            _ => &w.agent,
        };
        let (session, cart) = w.session(owner).await;
        let mandate = w.mandate(&cart, Some(&w.agent));
        let htu = w.url(&World::complete_path(&session));
        let case = forge::proof_cases(&w.agent, &thief, &mandate, "POST", &htu, w.now).remove(i);
        let got = w
            .complete(&session, "DPoP", &mandate, Some(&case.proof))
            .await;
        let code = if got.status == StatusCode::OK {
            "ok"
        } else {
            got.code()
        };
        if code != case.expected {
            failures.push(format!(
                "{}: expected {}, got {} {code}",
                case.name, case.expected, got.status
            ));
        } else if code != "ok"
            && (got.status != StatusCode::UNAUTHORIZED || !got.challenge().starts_with("DPoP "))
        {
            failures.push(format!("{}: {} {}", case.name, got.status, got.challenge()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn spec8_a_captured_proof_cannot_be_sent_again() {
    let w = World::new().await;
    let proof = w.proof(&w.agent, "POST", SESSIONS, None);
    let body = json!({"line_items": [{"id": "shoe-001", "quantity": 1}]});
    let first = w
        .send(
            reqwest::Method::POST,
            SESSIONS,
            &[("DPoP", &proof)],
            Some(body.clone()),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = w
        .send(
            reqwest::Method::POST,
            SESSIONS,
            &[("DPoP", &proof)],
            Some(body),
        )
        .await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::UNAUTHORIZED, "dpop_proof_replayed")
    );
    // A whole completion request replayed at the verify endpoint's twin: see
    // spec8_the_verify_endpoint_takes_the_proof; here, the proof of a failed completion is
    // not spent by the failure.
    let session = first.body["id"].as_str().unwrap().to_owned();
    let cart = Cart::from_json(first.body["cart"].to_string().as_bytes()).unwrap();
    let mandate = w.mandate(&cart, Some(&w.agent));
    let proof = w.proof(
        &w.agent,
        "POST",
        &World::complete_path(&session),
        Some(&mandate),
    );
    let got = w.complete(&session, "Bearer", &mandate, Some(&proof)).await;
    assert_eq!(got.code(), "dpop_proof_required");
    let paid = w.complete(&session, "DPoP", &mandate, Some(&proof)).await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
}

#[tokio::test]
async fn spec8_a_hundred_concurrent_completions_with_one_mandate_accept_exactly_one() {
    let w = Arc::new(World::new().await);
    let (_, cart) = w.session(&w.agent).await;
    let mandate = Arc::new(w.mandate(&cart, Some(&w.agent)));
    let mut sessions = Vec::new();
    for _ in 0..100 {
        sessions.push(w.session(&w.agent).await.0);
    }
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|session| {
            let (w, mandate) = (w.clone(), mandate.clone());
            let proof = w.proof(
                &w.agent,
                "POST",
                &World::complete_path(&session),
                Some(&mandate),
            );
            tokio::spawn(async move {
                let got = w.complete(&session, "DPoP", &mandate, Some(&proof)).await;
                (got.status, got.code().to_owned())
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        let (status, code) = task.await.unwrap();
        if status == StatusCode::OK {
            ok += 1;
        } else {
            assert_eq!(
                (status, code.as_str()),
                (StatusCode::UNAUTHORIZED, "mandate_replayed")
            );
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn spec8_with_nonces_a_proof_without_the_current_one_gets_use_dpop_nonce() {
    let w = World::with(|c| c.dpop_nonce = true).await;
    let body = json!({"line_items": [{"id": "shoe-001", "quantity": 1}]});
    let proof = w.proof(&w.agent, "POST", SESSIONS, None);
    let got = w
        .send(
            reqwest::Method::POST,
            SESSIONS,
            &[("DPoP", &proof)],
            Some(body.clone()),
        )
        .await;
    assert_eq!(
        (got.status, got.code()),
        (StatusCode::UNAUTHORIZED, "use_dpop_nonce")
    );
    assert_dpop_challenge(&got, "use_dpop_nonce");
    let nonce = got
        .headers
        .get("dpop-nonce")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let proof = make_proof(
        &w.agent,
        &ProofRequest {
            htm: "POST",
            htu: &w.url(SESSIONS),
            iat: w.now,
            jti: None,
            token: None,
            nonce: Some(&nonce),
        },
    )
    .unwrap();
    // The right nonce in a proof whose signature is forged: the signature decides, and
    // nothing about the proof is remembered.
    let (input, _) = proof.rsplit_once('.').unwrap();
    let forged = format!("{input}.{}", forge::b64([7u8; 64]));
    let got = w
        .send(
            reqwest::Method::POST,
            SESSIONS,
            &[("DPoP", &forged)],
            Some(body.clone()),
        )
        .await;
    assert_eq!(
        (got.status, got.code()),
        (StatusCode::UNAUTHORIZED, "dpop_proof_invalid")
    );
    let got = w
        .send(
            reqwest::Method::POST,
            SESSIONS,
            &[("DPoP", &proof)],
            Some(body),
        )
        .await;
    assert_eq!(got.status, StatusCode::CREATED, "{}", got.body);
    assert_eq!(
        got.headers.get("dpop-nonce").unwrap().to_str().unwrap(),
        nonce
    );
}

#[tokio::test]
async fn spec8_the_public_url_is_compared_after_normalisation() {
    let w = World::with(|c| c.public_url = Some("HTTPS://Shop.Example:443/".into())).await;
    let body = json!({"line_items": [{"id": "shoe-001", "quantity": 1}]});
    for (htu, expected) in [
        (
            "https://shop.example/v1/checkout-sessions",
            StatusCode::CREATED,
        ),
        (
            "https://SHOP.example:443/v1/checkout-sessions?x=1",
            StatusCode::CREATED,
        ),
        (&w.url(SESSIONS) as &str, StatusCode::UNAUTHORIZED),
    ] {
        let proof = make_proof(
            &w.agent,
            &ProofRequest {
                htm: "POST",
                htu,
                iat: w.now,
                jti: None,
                token: None,
                nonce: None,
            },
        )
        .unwrap();
        let got = w
            .send(
                reqwest::Method::POST,
                SESSIONS,
                &[("DPoP", &proof)],
                Some(body.clone()),
            )
            .await;
        assert_eq!(got.status, expected, "{htu}: {}", got.body);
    }
}

#[tokio::test]
async fn spec8_the_verify_endpoint_takes_the_proof() {
    let w = World::new().await;
    let (_, cart) = w.session(&w.agent).await;
    let cart_json = serde_json::to_value(&cart).unwrap();
    let mandate = w.mandate(&cart, Some(&w.agent));
    let htu = "https://backend.example/pay";
    let proof = make_proof(
        &w.agent,
        &ProofRequest {
            htm: "POST",
            htu,
            iat: w.now,
            jti: None,
            token: Some(&mandate),
            nonce: None,
        },
    )
    .unwrap();
    let verify = |body: Value| {
        w.send(
            reqwest::Method::POST,
            "/v1/mandates/verify",
            &[("authorization", BACKEND_AUTH)],
            Some(body),
        )
    };
    let got = verify(json!({"mandate": mandate, "agent_id": AGENT, "cart": cart_json})).await;
    assert_eq!(got.code(), "dpop_proof_required");
    let got = verify(
        json!({"mandate": mandate, "agent_id": AGENT, "cart": cart_json,
                            "dpop": proof}),
    )
    .await;
    assert_eq!(got.status, StatusCode::UNPROCESSABLE_ENTITY);
    let got = verify(
        json!({"mandate": mandate, "agent_id": AGENT, "cart": cart_json,
                            "dpop": proof, "htm": "POST", "htu": "https://backend.example/other"}),
    )
    .await;
    assert_eq!(got.code(), "dpop_proof_mismatch");
    let full = json!({"mandate": mandate, "agent_id": AGENT, "cart": cart_json,
                      "dpop": proof, "htm": "POST", "htu": htu});
    let dry = verify(
        json!({"consume": false, "mandate": mandate, "agent_id": AGENT,
                            "cart": cart_json, "dpop": proof, "htm": "POST", "htu": htu}),
    )
    .await;
    assert_eq!(dry.status, StatusCode::OK, "{}", dry.body);
    let got = verify(full.clone()).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(
        got.body["proof_jkt"],
        Jkt::of(w.agent.public_key()).as_str()
    );
    assert_eq!(got.body["claims"]["cnf"]["jkt"], got.body["proof_jkt"]);
    // The same request again: the proof's replay.
    let got = verify(full).await;
    assert_eq!(got.code(), "dpop_proof_replayed");
}

#[tokio::test]
async fn spec8_without_required_binding_unowned_sessions_and_bearer_mandates_still_work() {
    let w = World::with(|c| c.require_agent_binding = false).await;
    let body = json!({"line_items": [{"id": "shoe-001", "quantity": 1}]});
    let open = w
        .send(reqwest::Method::POST, SESSIONS, &[], Some(body))
        .await;
    assert_eq!(open.status, StatusCode::CREATED);
    let session = open.body["id"].as_str().unwrap().to_owned();
    let cart = Cart::from_json(open.body["cart"].to_string().as_bytes()).unwrap();
    // A bound mandate still needs its proof, on a session that belongs to nobody.
    let bound = w.mandate(&cart, Some(&w.agent));
    let got = w.complete(&session, "Bearer", &bound, None).await;
    assert_eq!(got.code(), "dpop_proof_required");
    let unbound = w.mandate(&cart, None);
    let got = w.complete(&session, "Bearer", &unbound, None).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    // A session opened with a proof is still its key's alone.
    let (owned, cart) = w.session(&w.agent).await;
    let got = w
        .complete(&owned, "Bearer", &w.mandate(&cart, None), None)
        .await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn spec9_a_flood_of_unknown_kids_is_rate_limited_and_cached_kids_still_verify() {
    let w = World::with(|c| {
        c.require_agent_binding = false;
        c.key_fetch_rate = 20.0;
        c.key_fetch_burst = 20.0;
    })
    .await;
    let (_, cart) = w.session(&w.agent).await;
    let cart_json = serde_json::to_value(&cart).unwrap();
    let verify = |mandate: String| {
        w.send(
            reqwest::Method::POST,
            "/v1/mandates/verify",
            &[("authorization", BACKEND_AUTH)],
            Some(
                json!({"mandate": mandate, "agent_id": AGENT, "cart": cart_json, "consume": false}),
            ),
        )
    };
    let fetches = || async {
        let text = w
            .http
            .get(w.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with("ap2_key_directory_fetches_total"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let good = w.mandate(&cart, None);
    assert_eq!(verify(good.clone()).await.status, StatusCode::OK);
    let before = fetches().await;
    let started = std::time::Instant::now();
    let mut throttled = 0;
    for i in 0..300 {
        // A mandate signed by a key nobody registered: a kid the merchant has never seen.
        let stranger = LocalSigner::generate().unwrap();
        let mut claims = ap2_mandate::IntentMandate {
            jti: Jti::random().unwrap(),
            ..claims_of(&w, &cart)
        };
        claims.sub = "mallory".into();
        let got = verify(ap2_mandate::mint(&stranger, &claims).unwrap()).await;
        match (got.status, got.code()) {
            (StatusCode::UNAUTHORIZED, "mandate_key_unknown") => {}
            (StatusCode::SERVICE_UNAVAILABLE, "key_directory_unavailable") => {
                assert_eq!(got.headers.get("retry-after").unwrap(), "1");
                throttled += 1;
            }
            other => panic!("{other:?}"),
        }
        if i % 10 == 0 {
            let cached = verify(good.clone()).await;
            assert_eq!(cached.status, StatusCode::OK, "{}", cached.body);
        }
    }
    let allowed = 20.0 + 20.0 * started.elapsed().as_secs_f64() + 1.0;
    let fetched = fetches().await - before;
    assert!(
        fetched <= allowed,
        "{fetched} fetches, {allowed:.0} allowed"
    );
    assert!(throttled > 0, "the limit never applied");
}

fn claims_of(w: &World, cart: &Cart) -> IntentMandate {
    IntentMandate {
        iss: ISSUER.into(),
        sub: "alice".into(),
        aud: MerchantId::parse("acme-corp").unwrap(),
        iat: w.now,
        nbf: None,
        exp: w.now + 120,
        jti: Jti::random().unwrap(),
        scope: Ap2Scope {
            max_amount: cart.total(),
            cart_hash: cart.hash().clone(),
            allow_agent_id: AgentId::parse(AGENT).unwrap(),
        },
        amr: None,
        cnf: None,
    }
}

#[tokio::test]
async fn spec9_sessions_expire_and_each_agent_key_has_a_cap() {
    let w = World::with(|c| {
        c.session_ttl_secs = 2;
        c.max_open_sessions_per_agent = 3;
    })
    .await;
    let w = &w;
    let (paid, cart) = w.session(&w.agent).await;
    let (open, _) = w.session(&w.agent).await;
    let (third, _) = w.session(&w.agent).await;
    let open_one = || {
        let proof = w.proof(&w.agent, "POST", SESSIONS, None);
        async move {
            w.send(
                reqwest::Method::POST,
                SESSIONS,
                &[("DPoP", &proof)],
                Some(json!({"line_items": [{"id": "shoe-001", "quantity": 1}]})),
            )
            .await
        }
    };
    let got = open_one().await;
    assert_eq!(
        (got.status, got.code()),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_sessions")
    );
    // Another key has its own count.
    w.session(&LocalSigner::generate().unwrap()).await;
    // A completed session is no longer open: room for one more.
    let mandate = w.mandate(&cart, Some(&w.agent));
    assert_eq!(
        w.complete_as(&w.agent, &paid, &mandate).await.status,
        StatusCode::OK
    );
    assert_eq!(open_one().await.status, StatusCode::CREATED);
    // Past the lifetime: an open session is gone (410), before any mandate is looked at.
    w.advance(3);
    let path = format!("{SESSIONS}/{open}");
    let proof = w.proof(&w.agent, "GET", &path, None);
    let got = w
        .send(reqwest::Method::GET, &path, &[("DPoP", &proof)], None)
        .await;
    assert_eq!(
        (got.status, got.code()),
        (StatusCode::GONE, "session_expired")
    );
    let fresh = w.mandate(&cart, Some(&w.agent));
    let got = w.complete_as(&w.agent, &third, &fresh).await;
    assert_eq!(
        (got.status, got.code()),
        (StatusCode::GONE, "session_expired")
    );
    // The completed one stays readable, and expired ones no longer count.
    let path = format!("{SESSIONS}/{paid}");
    let proof = w.proof(&w.agent, "GET", &path, None);
    let got = w
        .send(reqwest::Method::GET, &path, &[("DPoP", &proof)], None)
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["status"], "completed");
    for _ in 0..3 {
        assert_eq!(open_one().await.status, StatusCode::CREATED);
    }
    // The sweep deletes the expired open sessions (it runs every lifetime, here 2 s).
    let db = w.data_dir.join("merchant.db");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        let left: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sessions WHERE id IN (?1, ?2)",
                [&open, &third],
                |r| r.get(0),
            )
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expired sessions were not deleted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
