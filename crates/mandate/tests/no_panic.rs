//! Untrusted input never panics the verifier, and no single-byte change of a valid token is
//! accepted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::*;
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn verifying_arbitrary_text_never_panics(token in "\\PC{0,300}") {
        let f = Fixture::new();
        let code = runtime().block_on(f.code(&token));
        prop_assert_ne!(code, "ok");
    }

    #[test]
    fn verifying_arbitrary_segments_never_panics(
        a in "[A-Za-z0-9_-]{0,80}", b in "[A-Za-z0-9_-]{0,200}", c in "[A-Za-z0-9_-]{0,100}",
    ) {
        let f = Fixture::new();
        let code = runtime().block_on(f.code(&format!("{a}.{b}.{c}")));
        prop_assert_ne!(code, "ok");
    }

    #[test]
    fn no_single_character_change_of_a_valid_token_is_accepted(
        index in any::<prop::sample::Index>(),
        replacement in "[A-Za-z0-9_.=+/ -]",
    ) {
        let f = Fixture::new();
        let token = vector()["token"].as_str().unwrap().to_owned();
        let i = index.index(token.len());
        let mut changed = token.clone();
        changed.replace_range(i..=i, &replacement);
        prop_assume!(changed != token);
        let code = runtime().block_on(f.code(&changed));
        prop_assert_ne!(code, "ok", "{}", changed);
    }
}

/// The SPEC §8 vector's proof and its request.
fn check_proof(proof: &str) -> Result<(), ap2_mandate::VerifyError> {
    let v: serde_json::Value =
        serde_json::from_str(include_str!("vectors/dpop_vector.json")).unwrap();
    let htu = ap2_mandate::Htu::parse(v["htu"].as_str().unwrap()).unwrap();
    let config =
        ap2_mandate::VerifierConfig::new(ap2_mandate::MerchantId::parse("acme-corp").unwrap());
    let parsed = ap2_mandate::DpopProof::parse(proof)?;
    parsed.check(
        &config.proof_check("POST", &htu, Some(v["ath"].as_str().unwrap())),
        v["verify_at"].as_i64().unwrap(),
    )?;
    if parsed.jkt().as_str() != v["jkt"].as_str().unwrap() {
        return Err(ap2_mandate::VerifyError::DpopKeyMismatch);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn spec8_checking_an_arbitrary_proof_never_panics(proof in "\\PC{0,300}") {
        prop_assert!(check_proof(&proof).is_err());
    }

    #[test]
    fn spec8_no_single_character_change_of_the_vector_proof_is_accepted(
        index in any::<prop::sample::Index>(),
        replacement in "[A-Za-z0-9_.=+/ -]",
    ) {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("vectors/dpop_vector.json")).unwrap();
        let proof = v["proof"].as_str().unwrap().to_owned();
        check_proof(&proof).unwrap();
        let i = index.index(proof.len());
        let mut changed = proof.clone();
        changed.replace_range(i..=i, &replacement);
        prop_assume!(changed != proof);
        prop_assert!(check_proof(&changed).is_err(), "{}", changed);
    }
}
