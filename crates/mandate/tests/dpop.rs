//! SPEC §8 (RFC 9449 §4.3, §7, §8): the shared vector reproduced, one test per rule, the
//! forged-proof family, and interoperability with josekit both ways.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::sync::Arc;

use ap2_mandate::memory::{MemoryKeys, MemoryReplayGuard};
use ap2_mandate::{
    Cart, Consume, DpopNonces, DpopProof, FixedClock, Htu, IntentMandate, Jkt, Jti, LocalSigner,
    MerchantId, Presentation, ProofPresentation, ProofRequest, PublicUrl, ReplayEntry, ReplayGuard,
    Signer, VerifiedMandate, Verifier, VerifierConfig, VerifyError, make_proof,
};
use ap2_testkit::forge;
use common::*;
use josekit::jwk::Jwk;
use josekit::jws::{ES256, JwsHeader};
use josekit::jwt::{self, JwtPayload};
use serde_json::{Value, json};

const DPOP_VECTOR: &str = include_str!("vectors/dpop_vector.json");
const HTU: &str = "https://merchant.example/v1/checkout-sessions/cs_vector/complete";

fn dpop_vector() -> Value {
    serde_json::from_str(DPOP_VECTOR).unwrap()
}

fn agent() -> LocalSigner {
    LocalSigner::from_pkcs8_pem(
        dpop_vector()["agent_private_key_pem"].as_str().unwrap(),
        None,
    )
    .unwrap()
}

/// A verifier that requires binding, with the vector's wallet key registered.
struct Bound {
    verifier: Verifier<Arc<MemoryKeys>, Arc<MemoryReplayGuard>, FixedClock>,
    replay: Arc<MemoryReplayGuard>,
    now: i64,
}

impl Bound {
    fn at(now: i64) -> Self {
        Self::with(now, |_| {})
    }

    fn with(now: i64, edit: impl FnOnce(&mut VerifierConfig)) -> Self {
        let signer = signer();
        let keys = Arc::new(MemoryKeys::new());
        keys.insert(record(
            signer.public_key(),
            signer.kid().as_str(),
            ISSUER,
            SUBJECT,
        ));
        let replay = Arc::new(MemoryReplayGuard::new());
        let mut config = VerifierConfig::new(MerchantId::parse("acme-corp").unwrap());
        edit(&mut config);
        Self {
            verifier: Verifier::new(config, keys, replay.clone(), FixedClock(now)),
            replay,
            now,
        }
    }

    /// Presents `mandate` as `DPoP` with `proof` for `POST HTU`.
    async fn present(&self, mandate: &str, proof: &str) -> Result<VerifiedMandate, VerifyError> {
        let proof = DpopProof::parse(proof)?;
        let htu = Htu::parse(HTU).unwrap();
        let cart = shoe_cart();
        let presented = ProofPresentation {
            proof: &proof,
            htm: "POST",
            htu: &htu,
        };
        self.verifier
            .verify(
                &Presentation::dpop(mandate, AGENT, &cart, presented),
                Consume::Yes,
            )
            .await
    }

    async fn code(&self, mandate: &str, proof: &str) -> &'static str {
        match self.present(mandate, proof).await {
            Ok(_) => "ok",
            Err(e) => e.code().as_str(),
        }
    }

    /// A fresh mandate for the shoe cart, bound to `jkt` (or unbound).
    fn mandate(&self, jkt: Option<&Jkt>) -> String {
        ap2_mandate::mint(&signer(), &claims(self.now, jkt)).unwrap()
    }

    /// An honest proof by `key` for `mandate`.
    fn proof(&self, key: &LocalSigner, mandate: &str) -> String {
        make_proof(
            key,
            &ProofRequest {
                htm: "POST",
                htu: HTU,
                iat: self.now,
                jti: None,
                token: Some(mandate),
                nonce: None,
            },
        )
        .unwrap()
    }
}

fn claims(now: i64, jkt: Option<&Jkt>) -> IntentMandate {
    let cart = shoe_cart();
    IntentMandate {
        iss: ISSUER.into(),
        sub: SUBJECT.into(),
        aud: MerchantId::parse("acme-corp").unwrap(),
        iat: now,
        nbf: None,
        exp: now + 120,
        jti: Jti::random().unwrap(),
        scope: ap2_mandate::Ap2Scope {
            max_amount: cart.total(),
            cart_hash: cart.hash().clone(),
            allow_agent_id: ap2_mandate::AgentId::parse(AGENT).unwrap(),
        },
        cnf: jkt.cloned(),
        amr: None,
    }
}

fn jkt_of(key: &LocalSigner) -> Jkt {
    Jkt::of(key.public_key())
}

#[test]
fn spec8_vector_thumbprint_input_and_jkt_are_reproduced() {
    let v = dpop_vector();
    let key = agent();
    assert_eq!(
        key.public_key().thumbprint_input(),
        v["thumbprint_input"].as_str().unwrap()
    );
    assert_eq!(jkt_of(&key).as_str(), v["jkt"].as_str().unwrap());
    assert_eq!(forge::proof_jwk(&key), v["agent_jwk"]);
}

#[test]
fn spec8_vector_ath_is_reproduced() {
    let v = dpop_vector();
    assert_eq!(
        ap2_mandate::dpop::ath(v["mandate"].as_str().unwrap()),
        v["ath"].as_str().unwrap()
    );
}

#[test]
fn spec8_vector_proof_verifies_for_its_request() {
    let v = dpop_vector();
    let proof = DpopProof::parse(v["proof"].as_str().unwrap()).unwrap();
    assert_eq!(proof.jkt().as_str(), v["jkt"].as_str().unwrap());
    assert_eq!(proof.jti().as_str(), "dpop-vector-0001");
    let base = PublicUrl::parse(v["public_url"].as_str().unwrap()).unwrap();
    let htu = base
        .htu("/v1/checkout-sessions/cs_vector/complete")
        .unwrap();
    assert_eq!(htu.as_str(), v["htu"].as_str().unwrap());
    let ath = v["ath"].as_str().unwrap();
    let config = VerifierConfig::new(MerchantId::parse("acme-corp").unwrap());
    let check = config.proof_check("POST", &htu, Some(ath));
    proof
        .check(&check, v["verify_at"].as_i64().unwrap())
        .unwrap();
}

#[test]
fn spec8_vector_mandate_payload_is_what_we_mint_for_its_claims() {
    let v = dpop_vector();
    let token = v["mandate"].as_str().unwrap();
    let payload = unb64(token.split('.').nth(1).unwrap());
    let claims: IntentMandate = {
        let c = &v["mandate_claims"];
        let cart = shoe_cart();
        IntentMandate {
            iss: c["iss"].as_str().unwrap().into(),
            sub: c["sub"].as_str().unwrap().into(),
            aud: MerchantId::parse(c["aud"].as_str().unwrap()).unwrap(),
            iat: c["iat"].as_i64().unwrap(),
            nbf: None,
            exp: c["exp"].as_i64().unwrap(),
            jti: Jti::parse(c["jti"].as_str().unwrap()).unwrap(),
            scope: ap2_mandate::Ap2Scope {
                max_amount: cart.total(),
                cart_hash: cart.hash().clone(),
                allow_agent_id: ap2_mandate::AgentId::parse(AGENT).unwrap(),
            },
            cnf: Some(Jkt::parse(c["cnf"]["jkt"].as_str().unwrap()).unwrap()),
            amr: None,
        }
    };
    assert_eq!(serde_json::to_vec(&claims).unwrap(), payload);
}

#[tokio::test]
async fn spec8_vector_bound_mandate_and_proof_pass_every_step() {
    let v = dpop_vector();
    let bound = Bound::at(v["verify_at"].as_i64().unwrap());
    let verified = bound
        .present(v["mandate"].as_str().unwrap(), v["proof"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(
        verified.claims.cnf.as_ref().unwrap().as_str(),
        v["jkt"].as_str().unwrap()
    );
    assert_eq!(verified.proof_jkt, verified.claims.cnf);
    assert_eq!(
        serde_json::to_value(&verified.claims).unwrap(),
        v["mandate_claims"]
    );
    // Step 7 recorded both the mandate and the proof.
    assert_eq!(bound.replay.len(), 2);
}

#[tokio::test]
async fn spec8_every_forged_proof_gets_its_exact_code() {
    let bound = Bound::at(NOW);
    let key = agent();
    let thief = LocalSigner::generate().unwrap();
    let count = forge::proof_cases(&key, &thief, "m.m.m", "POST", HTU, NOW).len();
    assert!(count >= 40, "only {count} cases");
    let mut failures = Vec::new();
    for i in 0..count {
        // A fresh mandate per case, so an accepted case does not spend the next one's.
        let mandate = bound.mandate(Some(&jkt_of(&key)));
        let case = forge::proof_cases(&key, &thief, &mandate, "POST", HTU, NOW).remove(i);
        let got = bound.code(&mandate, &case.proof).await;
        if got != case.expected {
            failures.push(format!(
                "{}: expected {}, got {got}",
                case.name, case.expected
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn spec8_a_bound_mandate_presented_as_bearer_needs_its_proof() {
    for bound in [
        Bound::at(NOW),
        Bound::with(NOW, |c| c.require_binding = false),
    ] {
        let mandate = bound.mandate(Some(&jkt_of(&agent())));
        let cart = shoe_cart();
        let err = bound
            .verifier
            .verify(&Presentation::bearer(&mandate, AGENT, &cart), Consume::Yes)
            .await
            .unwrap_err();
        assert_eq!(err.code().as_str(), "dpop_proof_required");
        // A DPoP scheme without the proof header is the same refusal.
        let err = bound
            .verifier
            .verify(
                &Presentation {
                    scheme: ap2_mandate::AuthScheme::Dpop,
                    ..Presentation::bearer(&mandate, AGENT, &cart)
                },
                Consume::Yes,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code().as_str(), "dpop_proof_required");
        assert!(bound.replay.is_empty());
    }
}

#[tokio::test]
async fn spec8_an_unbound_mandate_is_refused_where_binding_is_required() {
    let bound = Bound::at(NOW);
    let mandate = bound.mandate(None);
    let proof = bound.proof(&agent(), &mandate);
    assert_eq!(
        bound.code(&mandate, &proof).await,
        "mandate_binding_required"
    );
    let cart = shoe_cart();
    let err = bound
        .verifier
        .verify(&Presentation::bearer(&mandate, AGENT, &cart), Consume::Yes)
        .await
        .unwrap_err();
    assert_eq!(err, VerifyError::BindingRequired);
    // Without the requirement, SPEC §4 alone: the Bearer token is accepted.
    let open = Bound::with(NOW, |c| c.require_binding = false);
    let mandate = open.mandate(None);
    let verified = open
        .verifier
        .verify(&Presentation::bearer(&mandate, AGENT, &cart), Consume::Yes)
        .await
        .unwrap();
    assert_eq!(verified.proof_jkt, None);
    // ... and a proof sent with it is still checked and recorded.
    let mandate = open.mandate(None);
    let proof = open.proof(&agent(), &mandate);
    assert_eq!(open.code(&mandate, &proof).await, "ok");
    assert_eq!(open.code(&mandate, &proof).await, "dpop_proof_replayed");
}

#[tokio::test]
async fn spec8_the_proof_key_must_be_the_mandates_cnf_jkt() {
    let bound = Bound::at(NOW);
    let mandate = bound.mandate(Some(&jkt_of(&agent())));
    let thief = LocalSigner::generate().unwrap();
    let stolen = bound.proof(&thief, &mandate);
    assert_eq!(bound.code(&mandate, &stolen).await, "dpop_key_mismatch");
    // The refusal spent nothing: the rightful agent still can.
    let honest = bound.proof(&agent(), &mandate);
    assert_eq!(bound.code(&mandate, &honest).await, "ok");
}

#[tokio::test]
async fn spec8_step7_records_the_proof_and_the_mandate_both_or_neither() {
    let bound = Bound::at(NOW);
    let key = agent();
    let mandate = bound.mandate(Some(&jkt_of(&key)));
    let proof = bound.proof(&key, &mandate);
    // Someone recorded this proof's (jkt, jti) before: the presentation is refused and the
    // mandate is NOT recorded.
    let parsed = DpopProof::parse(&proof).unwrap();
    bound
        .replay
        .consume(
            &[ReplayEntry {
                key: &parsed.replay_key(),
                until_unix: NOW + 100,
            }],
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(bound.code(&mandate, &proof).await, "dpop_proof_replayed");
    assert_eq!(bound.replay.len(), 1, "the mandate was not recorded");
    let fresh = bound.proof(&key, &mandate);
    assert_eq!(bound.code(&mandate, &fresh).await, "ok");
    // The mandate again with another fresh proof: the mandate's replay.
    let again = bound.proof(&key, &mandate);
    assert_eq!(bound.code(&mandate, &again).await, "mandate_replayed");
    // The whole request replayed (same mandate, same proof): the proof's replay.
    assert_eq!(bound.code(&mandate, &fresh).await, "dpop_proof_replayed");
}

#[test]
fn spec8_the_proof_replay_key_is_qualified_by_the_key_and_never_by_htu() {
    let jti = Jti::parse("same-jti").unwrap();
    let a = jkt_of(&agent());
    let b = jkt_of(&LocalSigner::generate().unwrap());
    assert_ne!(
        ap2_mandate::ReplayKey::proof(&a, &jti),
        ap2_mandate::ReplayKey::proof(&b, &jti)
    );
    // Never the key of a mandate with the same strings.
    assert_ne!(
        ap2_mandate::ReplayKey::proof(&a, &jti),
        ap2_mandate::ReplayKey::new(a.as_str(), &jti)
    );
    // Two spellings of one URL are one proof.
    let key = agent();
    let make = |htu: &str| {
        make_proof(
            &key,
            &ProofRequest {
                htm: "POST",
                htu,
                iat: NOW,
                jti: Some(&jti),
                token: None,
                nonce: None,
            },
        )
        .unwrap()
    };
    let one = DpopProof::parse(&make(HTU)).unwrap();
    let two = DpopProof::parse(&make(
        "HTTPS://MERCHANT.EXAMPLE:443/v1/checkout-sessions/cs_vector/complete",
    ))
    .unwrap();
    assert_eq!(one.replay_key(), two.replay_key());
}

#[tokio::test]
async fn spec8_with_nonces_a_proof_needs_the_current_or_previous_one() {
    let nonces = Arc::new(DpopNonces::new(&[9u8; 32], 300));
    let bound = Bound::with(NOW, |c| c.dpop_nonces = Some(nonces.clone()));
    let key = agent();
    let with_nonce = |mandate: &str, nonce: Option<&str>| {
        make_proof(
            &key,
            &ProofRequest {
                htm: "POST",
                htu: HTU,
                iat: NOW,
                jti: None,
                token: Some(mandate),
                nonce,
            },
        )
        .unwrap()
    };
    let mandate = bound.mandate(Some(&jkt_of(&key)));
    assert_eq!(
        bound.code(&mandate, &with_nonce(&mandate, None)).await,
        "use_dpop_nonce"
    );
    assert_eq!(
        bound
            .code(&mandate, &with_nonce(&mandate, Some("made-up")))
            .await,
        "use_dpop_nonce"
    );
    let stale = nonces.current(NOW - 600);
    assert_eq!(
        bound
            .code(&mandate, &with_nonce(&mandate, Some(&stale)))
            .await,
        "use_dpop_nonce"
    );
    let previous = nonces.current(NOW - 300);
    assert_eq!(
        bound
            .code(&mandate, &with_nonce(&mandate, Some(&previous)))
            .await,
        "ok"
    );
    let mandate = bound.mandate(Some(&jkt_of(&key)));
    let current = nonces.current(NOW);
    assert_eq!(
        bound
            .code(&mandate, &with_nonce(&mandate, Some(&current)))
            .await,
        "ok"
    );
}

#[tokio::test]
async fn spec8_cnf_of_any_other_form_is_mandate_malformed() {
    let bound = Bound::at(NOW);
    let key = agent();
    let f = Fixture::new();
    for cnf in [
        json!(null),
        json!("NIgKpWvPrm1Il9vbBsphW59b0QvKIU_dXswvsXK8s9k"),
        json!({}),
        json!({"jkt": 1}),
        json!({"jkt": "short"}),
        json!({"jkt": "NIgKpWvPrm1Il9vbBsphW59b0QvKIU_dXswvsXK8s9k", "x5t#S256": "a"}),
        json!({"jwk": forge::proof_jwk(&key)}),
        json!([{"jkt": "NIgKpWvPrm1Il9vbBsphW59b0QvKIU_dXswvsXK8s9k"}]),
    ] {
        let mut claims = serde_json::to_value(claims(NOW, None)).unwrap();
        claims["cnf"] = cnf.clone();
        let mandate = f.sign(&f.header(), &claims);
        let proof = bound.proof(&key, &mandate);
        assert_eq!(
            bound.code(&mandate, &proof).await,
            "mandate_malformed",
            "{cnf}"
        );
    }
}

#[test]
fn spec8_proofs_we_make_have_the_shape_rfc9449_gives() {
    let key = agent();
    let jti = Jti::parse("dpop-vector-0001").unwrap();
    let v = dpop_vector();
    let proof = make_proof(
        &key,
        &ProofRequest {
            htm: "POST",
            htu: &format!("{HTU}?ignored=1#frag"),
            iat: 1_798_761_610,
            jti: Some(&jti),
            token: Some(v["mandate"].as_str().unwrap()),
            nonce: None,
        },
    )
    .unwrap();
    let mut parts = proof.split('.');
    let header: Value = serde_json::from_slice(&unb64(parts.next().unwrap())).unwrap();
    let payload: Value = serde_json::from_slice(&unb64(parts.next().unwrap())).unwrap();
    assert_eq!(header, v["proof_header"]);
    assert_eq!(payload, v["proof_claims"]);
    // Byte for byte the vector's signing input; only the (randomised) signature differs.
    let vector_input = v["proof"].as_str().unwrap().rsplit_once('.').unwrap().0;
    assert_eq!(proof.rsplit_once('.').unwrap().0, vector_input);
    for bad in ["post", "", "GET POST"] {
        let err = make_proof(
            &key,
            &ProofRequest {
                htm: bad,
                htu: HTU,
                iat: 1,
                jti: None,
                token: None,
                nonce: None,
            },
        );
        assert!(err.is_err(), "{bad:?}");
    }
}

#[test]
fn spec8_a_proof_without_a_token_must_not_carry_ath() {
    let key = agent();
    let htu = Htu::parse(HTU).unwrap();
    let config = VerifierConfig::new(MerchantId::parse("acme-corp").unwrap());
    let with_ath = make_proof(
        &key,
        &ProofRequest {
            htm: "POST",
            htu: HTU,
            iat: NOW,
            jti: None,
            token: Some("a.b.c"),
            nonce: None,
        },
    )
    .unwrap();
    let err = DpopProof::parse(&with_ath)
        .unwrap()
        .check(&config.proof_check("POST", &htu, None), NOW)
        .unwrap_err();
    assert_eq!(err.code().as_str(), "dpop_proof_mismatch");
}

// --- interoperability with josekit (OpenSSL)

fn josekit_proof(pem: &str, jwk: &Value, claims: &Value) -> String {
    let signer = ES256.signer_from_pem(pem).unwrap();
    let mut header = JwsHeader::new();
    header.set_token_type("dpop+jwt");
    header.set_jwk(Jwk::from_bytes(jwk.to_string()).unwrap());
    let payload = JwtPayload::from_map(claims.as_object().unwrap().clone()).unwrap();
    jwt::encode_with_signer(&payload, &header, &signer).unwrap()
}

#[tokio::test]
async fn spec8_proofs_made_by_josekit_are_accepted() {
    let bound = Bound::at(NOW);
    for key in [agent(), LocalSigner::generate().unwrap()] {
        let mandate = bound.mandate(Some(&jkt_of(&key)));
        let claims = json!({"jti": Jti::random().unwrap().as_str(), "htm": "POST", "htu": HTU,
                            "iat": NOW, "ath": ap2_mandate::dpop::ath(&mandate)});
        let proof = josekit_proof(
            &key.to_pkcs8_pem().unwrap(),
            &forge::proof_jwk(&key),
            &claims,
        );
        let verified = bound.present(&mandate, &proof).await.unwrap();
        assert_eq!(verified.proof_jkt, Some(jkt_of(&key)));
    }
}

#[test]
fn spec8_proofs_we_make_verify_with_josekit_against_their_own_jwk() {
    let key = LocalSigner::generate().unwrap();
    let proof = make_proof(
        &key,
        &ProofRequest {
            htm: "GET",
            htu: "https://merchant.example/v1/checkout-sessions/cs_1",
            iat: NOW,
            jti: None,
            token: None,
            nonce: Some("n-1"),
        },
    )
    .unwrap();
    // The verifier takes the key from the proof's own header, as RFC 9449 says.
    let header = josekit::jwt::decode_header(&proof).unwrap();
    let jwk_value = header.claim("jwk").unwrap().clone();
    let jwk = Jwk::from_bytes(jwk_value.to_string()).unwrap();
    let verifier = ES256.verifier_from_jwk(&jwk).unwrap();
    let (payload, header) = jwt::decode_with_verifier(&proof, &verifier).unwrap();
    assert_eq!(header.token_type(), Some("dpop+jwt"));
    assert_eq!(payload.claim("htm"), Some(&json!("GET")));
    assert_eq!(payload.claim("nonce"), Some(&json!("n-1")));
    assert_eq!(jwk_value, forge::proof_jwk(&key));
}

#[test]
fn the_cart_the_vector_mandate_is_for_is_spec_vector_v1() {
    let v = dpop_vector();
    let cart: Cart = shoe_cart();
    assert_eq!(
        cart.hash().as_str(),
        v["mandate_claims"]["ap2_scope"]["cart_hash"]
    );
}
