//! SPEC §8 at the wallet, over real HTTP with a real key directory: a mandate request carries
//! the agent's DPoP proof, checked as a merchant checks it, and the mandate is bound to its key.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use ap2_directory_client::{DirectoryClient, DirectoryClientConfig};
use ap2_mandate::memory::MemoryReplayGuard;
use ap2_mandate::{
    Cart, Consume, DpopProof, Htu, Jkt, LocalSigner, MerchantId, Presentation, ProofPresentation,
    ProofRequest, Verifier, VerifierConfig, make_proof,
};
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};

const ISSUER: &str = "https://wallet.example";
const DIRECTORY_TOKEN: &str = "dir-token";
const ADMIN: &str = "admin-token";
const AGENT: &str = "agent-7";
const AGENT_TOKEN: &str = "agent-7-token";
const PATH: &str = "/v1/mandate-requests";

fn now() -> i64 {
    ap2_mandate::Clock::now_unix(&ap2_mandate::SystemClock)
}

struct World {
    directory: key_directory::Running,
    wallet: Option<wallet::Running>,
    wallet_dir: std::path::PathBuf,
    http: reqwest::Client,
    user_token: String,
    agent: LocalSigner,
    public_url: Option<String>,
    _tmp: tempfile::TempDir,
}

struct Answer {
    status: StatusCode,
    challenge: String,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("-")
    }
}

impl World {
    async fn new(public_url: Option<&str>) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let directory = key_directory::spawn(key_directory::Config::local(
            tmp.path().join("keys.db"),
            vec![format!("{ISSUER}={DIRECTORY_TOKEN}").parse().unwrap()],
        ))
        .await
        .unwrap();
        let mut w = Self {
            directory,
            wallet: None,
            wallet_dir: tmp.path().join("wallet"),
            http: reqwest::Client::new(),
            user_token: String::new(),
            agent: LocalSigner::generate().unwrap(),
            public_url: public_url.map(str::to_owned),
            _tmp: tmp,
        };
        w.start().await;
        let created = w
            .http
            .post(w.url("/v1/users"))
            .bearer_auth(ADMIN)
            .json(&json!({"user_id": "alice"}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED);
        let created: Value = created.json().await.unwrap();
        w.user_token = created["user_token"].as_str().unwrap().to_owned();
        w
    }

    async fn start(&mut self) {
        let mut config = wallet::Config::local(
            ISSUER,
            self.wallet_dir.clone(),
            &self.directory.url(),
            DIRECTORY_TOKEN,
            ADMIN,
            vec![format!("{AGENT}={AGENT_TOKEN}").parse().unwrap()],
        );
        config.public_url = self.public_url.clone();
        self.wallet = Some(wallet::spawn(config).await.unwrap());
    }

    async fn restart(&mut self) {
        self.wallet.take().unwrap().stop().await.unwrap();
        self.start().await;
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.wallet.as_ref().unwrap().url())
    }

    /// The htu of a mandate request.
    fn htu(&self) -> String {
        self.public_url
            .clone()
            .map_or_else(|| self.url(PATH), |base| format!("{base}{PATH}"))
    }

    /// The agent's proof for a mandate request, as `edit` changes it.
    fn proof<'a>(&self, htu: &'a str, edit: impl FnOnce(&mut ProofRequest<'a>)) -> String {
        let mut request = ProofRequest {
            htm: "POST",
            htu,
            iat: now(),
            jti: None,
            token: None,
            nonce: None,
        };
        edit(&mut request);
        make_proof(&self.agent, &request).unwrap()
    }

    async fn ask(&self, proofs: &[&str]) -> Answer {
        let mut request = self
            .http
            .post(self.url(PATH))
            .bearer_auth(AGENT_TOKEN)
            .json(&json!({"user_id": "alice", "merchant_id": "acme-corp", "cart": cart_json()}));
        for proof in proofs {
            request = request.header("DPoP", *proof);
        }
        let response = request.send().await.unwrap();
        Answer {
            status: response.status(),
            challenge: response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
            body: response.json().await.unwrap(),
        }
    }

    /// Alice's notifications.
    async fn inbox(&self) -> Vec<Value> {
        let inbox: Value = self
            .http
            .get(self.url("/v1/users/alice/notifications"))
            .bearer_auth(&self.user_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        inbox["notifications"].as_array().unwrap().clone()
    }

    /// The user reads the code and approves; the mandate.
    async fn approve(&self, id: &str) -> String {
        let note = self
            .inbox()
            .await
            .into_iter()
            .find(|n| n["request_id"] == id)
            .unwrap();
        assert_eq!(note["cnf_jkt"], Jkt::of(self.agent.public_key()).as_str());
        let approved: Value = self
            .http
            .post(self.url(&format!("{PATH}/{id}/approve")))
            .bearer_auth(&self.user_token)
            .json(&json!({"otp": note["otp"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        approved["mandate"].as_str().unwrap().to_owned()
    }

    async fn requests_of_alice(&self) -> usize {
        self.inbox().await.len()
    }
}

fn cart_json() -> Value {
    json!({"merchant_id": "acme-corp", "currency": "USD", "total": 8999,
           "line_items": [{"id": "shoe-001", "title": "Trail Runner", "quantity": 1, "unit_price": 8999}]})
}

#[tokio::test]
async fn spec8_a_mandate_request_without_a_proof_is_refused() {
    let w = World::new(None).await;
    let got = w.ask(&[]).await;
    assert_eq!(
        (got.status, got.code()),
        (StatusCode::UNAUTHORIZED, "dpop_proof_required")
    );
    assert!(
        got.challenge.starts_with("DPoP ")
            && got.challenge.contains(r#"error="invalid_dpop_proof""#)
            && got.challenge.contains(r#"algs="ES256""#),
        "{}",
        got.challenge
    );
    assert_eq!(w.requests_of_alice().await, 0);
}

#[tokio::test]
async fn spec8_the_mandate_is_bound_to_the_key_of_the_requests_proof() {
    let w = World::new(None).await;
    let htu = w.htu();
    let jkt = Jkt::of(w.agent.public_key());
    let got = w.ask(&[&w.proof(&htu, |_| {})]).await;
    assert_eq!(got.status, StatusCode::CREATED, "{}", got.body);
    assert_eq!(got.body["cnf_jkt"], jkt.as_str());
    let mandate = w.approve(got.body["id"].as_str().unwrap()).await;
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(mandate.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["cnf"], json!({"jkt": jkt.as_str()}));
    // A merchant that requires binding accepts it with the agent's proof.
    let keys = DirectoryClient::new(&w.directory.url(), DirectoryClientConfig::default()).unwrap();
    let verifier = Verifier::new(
        VerifierConfig::new(MerchantId::parse("acme-corp").unwrap()),
        keys,
        MemoryReplayGuard::new(),
        ap2_mandate::SystemClock,
    );
    let htu = "https://acme.example/v1/checkout-sessions/cs_1/complete";
    let proof = make_proof(
        &w.agent,
        &ProofRequest {
            htm: "POST",
            htu,
            iat: now(),
            jti: None,
            token: Some(&mandate),
            nonce: None,
        },
    )
    .unwrap();
    let proof = DpopProof::parse(&proof).unwrap();
    let htu = Htu::parse(htu).unwrap();
    let cart = Cart::from_json(cart_json().to_string().as_bytes()).unwrap();
    let verified = verifier
        .verify(
            &Presentation::dpop(
                &mandate,
                AGENT,
                &cart,
                ProofPresentation {
                    proof: &proof,
                    htm: "POST",
                    htu: &htu,
                },
            ),
            Consume::Yes,
        )
        .await
        .unwrap();
    assert_eq!(verified.proof_jkt, Some(jkt));
}

#[tokio::test]
async fn spec8_the_wallet_checks_the_proof_as_a_merchant_does() {
    let w = World::new(None).await;
    let htu = w.htu();
    let thief = LocalSigner::generate().unwrap();
    let other_key = w.proof(&htu, |_| {});
    let resigned = {
        // The agent's header and claims, signed by another key.
        let (input, _) = other_key.rsplit_once('.').unwrap();
        let sig = ap2_mandate::Signer::sign_es256(&thief, input.as_bytes()).unwrap();
        format!(
            "{input}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig)
        )
    };
    let wrong_url = w.url("/v1/mandate-requests/x");
    for (name, proof, code) in [
        (
            "another URL",
            w.proof(&htu, |r| r.htu = &wrong_url),
            "dpop_proof_mismatch",
        ),
        (
            "another method",
            w.proof(&htu, |r| r.htm = "PUT"),
            "dpop_proof_mismatch",
        ),
        (
            "an ath",
            w.proof(&htu, |r| r.token = Some("a.b.c")),
            "dpop_proof_mismatch",
        ),
        (
            "61 s old",
            w.proof(&htu, |r| r.iat = now() - 61),
            "dpop_proof_stale",
        ),
        (
            "10 s ahead",
            w.proof(&htu, |r| r.iat = now() + 10),
            "dpop_proof_stale",
        ),
        ("signed by another key", resigned, "dpop_proof_invalid"),
        ("not a JWS", "not-a-proof".to_owned(), "dpop_proof_invalid"),
    ] {
        let got = w.ask(&[&proof]).await;
        assert_eq!(
            (got.status, got.code()),
            (StatusCode::UNAUTHORIZED, code),
            "{name}: {}",
            got.body
        );
    }
    let (a, b) = (w.proof(&htu, |_| {}), w.proof(&htu, |_| {}));
    let got = w.ask(&[&a, &b]).await;
    assert_eq!(got.code(), "dpop_proof_invalid", "two DPoP headers");
    assert_eq!(
        w.requests_of_alice().await,
        0,
        "nothing refused was created"
    );
}

#[tokio::test]
async fn spec8_a_proof_is_never_accepted_twice_even_across_a_restart() {
    let mut w = World::new(None).await;
    let htu = w.htu();
    let proof = w.proof(&htu, |_| {});
    assert_eq!(w.ask(&[&proof]).await.status, StatusCode::CREATED);
    let again = w.ask(&[&proof]).await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::UNAUTHORIZED, "dpop_proof_replayed")
    );
    assert_eq!(w.requests_of_alice().await, 1);
    // The wallet's port changes on restart, so the proof is re-made for the new URL with the
    // same jti and key: still the same (jkt, jti).
    let jti = DpopProof::parse(&proof).unwrap().jti().clone();
    w.restart().await;
    let htu = w.htu();
    let same = w.proof(&htu, |r| r.jti = Some(&jti));
    let got = w.ask(&[&same]).await;
    assert_eq!(
        (got.status, got.code()),
        (StatusCode::UNAUTHORIZED, "dpop_proof_replayed")
    );
    assert_eq!(w.requests_of_alice().await, 1);
}

#[tokio::test]
async fn spec8_the_public_url_is_the_base_of_the_htu() {
    let w = World::new(Some("https://Wallet.Example:443")).await;
    let htu = w.htu();
    let got = w.ask(&[&w.proof(&htu, |_| {})]).await;
    assert_eq!(got.status, StatusCode::CREATED, "{}", got.body);
    // The address it listens on is not its public name.
    let local = w.url(PATH);
    let got = w.ask(&[&w.proof(&htu, |r| r.htu = &local)]).await;
    assert_eq!(got.code(), "dpop_proof_mismatch");
}

#[tokio::test]
async fn spec8_each_request_is_bound_to_its_own_proofs_key() {
    let mut w = World::new(None).await;
    let htu = w.htu();
    let first = w.ask(&[&w.proof(&htu, |_| {})]).await;
    let old_jkt = Jkt::of(w.agent.public_key());
    // The agent rotates its key: the next request is bound to the new one, the first stays
    // bound to the old.
    w.agent = LocalSigner::generate().unwrap();
    let second = w.ask(&[&w.proof(&htu, |_| {})]).await;
    assert_eq!(first.body["cnf_jkt"], old_jkt.as_str());
    assert_eq!(
        second.body["cnf_jkt"],
        Jkt::of(w.agent.public_key()).as_str()
    );
    let view: Value = w
        .http
        .get(w.url(&format!("{PATH}/{}", first.body["id"].as_str().unwrap())))
        .bearer_auth(AGENT_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["cnf_jkt"], old_jkt.as_str());
}
