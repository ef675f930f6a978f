//! Interoperability with an independent JOSE implementation (josekit, on OpenSSL): tokens it
//! mints verify with ours, and tokens we mint verify with it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use ap2_mandate::{Jti, LocalSigner, Signer};
use common::*;
use josekit::jwk::Jwk;
use josekit::jws::{ES256, JwsHeader};
use josekit::jwt::{self, JwtPayload};
use serde_json::{Value, json};

fn josekit_token(pem: &str, kid: &str, claims: &Value) -> String {
    let signer = ES256.signer_from_pem(pem).unwrap();
    let mut header = JwsHeader::new();
    header.set_token_type("ap2-intent+jwt");
    header.set_key_id(kid);
    let payload = JwtPayload::from_map(claims.as_object().unwrap().clone()).unwrap();
    jwt::encode_with_signer(&payload, &header, &signer).unwrap()
}

#[tokio::test]
async fn tokens_minted_by_josekit_verify_with_ours() {
    let f = Fixture::new();
    let v = vector();
    let token = josekit_token(
        v["private_key_pem"].as_str().unwrap(),
        &f.kid(),
        &v["claims"],
    );
    let verified = f.check(&token).await.unwrap();
    assert_eq!(serde_json::to_value(&verified.claims).unwrap(), v["claims"]);
}

#[tokio::test]
async fn josekit_tokens_for_a_fresh_key_verify_with_ours() {
    let f = Fixture::new();
    let key = LocalSigner::generate().unwrap();
    f.keys.insert(record(
        key.public_key(),
        key.kid().as_str(),
        ISSUER,
        SUBJECT,
    ));
    let pem = key.to_pkcs8_pem().unwrap();
    let mut claims = vector()["claims"].clone();
    claims["jti"] = json!("josekit-fresh-key");
    let token = josekit_token(&pem, key.kid().as_str(), &claims);
    assert_eq!(f.code(&token).await, "ok");
    // josekit's signature over a changed payload does not carry over.
    let (header, rest) = token.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    claims["jti"] = json!("josekit-other");
    let forged = format!("{header}.{}.{sig}", b64(claims.to_string()));
    assert_eq!(f.code(&forged).await, "mandate_signature_invalid");
}

#[tokio::test]
async fn tokens_we_mint_verify_with_josekit_against_the_public_jwk() {
    let f = Fixture::new();
    let claims = f
        .check(vector()["token"].as_str().unwrap())
        .await
        .unwrap()
        .claims;
    for signer in [signer(), LocalSigner::generate().unwrap()] {
        let mut claims = claims.clone();
        claims.jti = Jti::random().unwrap();
        let token = ap2_mandate::mint(&signer, &claims).unwrap();
        let jwk_json = signer.public_key().to_jwk(signer.kid());
        let jwk = Jwk::from_bytes(jwk_json.to_string()).unwrap();
        let verifier = ES256.verifier_from_jwk(&jwk).unwrap();
        let (payload, header) = jwt::decode_with_verifier(&token, &verifier).unwrap();
        assert_eq!(header.token_type(), Some("ap2-intent+jwt"));
        assert_eq!(header.key_id(), Some(signer.kid().as_str()));
        assert_eq!(
            Value::Object(payload.claims_set().clone()),
            serde_json::to_value(&claims).unwrap()
        );
    }
}

#[test]
fn the_vector_token_verifies_with_josekit() {
    let v = vector();
    let jwk = Jwk::from_bytes(v["jwk"].to_string()).unwrap();
    let verifier = ES256.verifier_from_jwk(&jwk).unwrap();
    let (payload, _) = jwt::decode_with_verifier(v["token"].as_str().unwrap(), &verifier).unwrap();
    assert_eq!(Value::Object(payload.claims_set().clone()), v["claims"]);
}
