//! The forged mandates of `ap2_testkit::forge`, family by family, against the library
//! verifier: each gets exactly its SPEC §4 code. The merchant runs the same cases over HTTP.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use ap2_mandate::memory::{MemoryKeys, MemoryReplayGuard};
use ap2_mandate::{
    Cart, Consume, FixedClock, KeyRecord, KeyStatus, LocalSigner, MerchantId, Presentation, Signer,
    Verifier, VerifierConfig,
};
use ap2_testkit::forge::{self, CartChoice, Keys};

const NOW: i64 = 1_800_000_000;

fn record(key: &LocalSigner, subject: &str, status: KeyStatus) -> KeyRecord {
    KeyRecord {
        kid: key.kid().clone(),
        issuer: forge::ISSUER.into(),
        subject: subject.into(),
        status,
        key: key.public_key().verification_key().unwrap(),
    }
}

fn setup() -> (
    Keys,
    Verifier<MemoryKeys, Arc<MemoryReplayGuard>, FixedClock>,
    Arc<MemoryReplayGuard>,
) {
    let keys = Keys::generate().unwrap();
    let registry = MemoryKeys::new();
    registry.insert(record(&keys.victim, forge::SUBJECT, KeyStatus::Active));
    registry.insert(record(&keys.mallory, forge::MALLORY, KeyStatus::Active));
    registry.insert(record(&keys.revoked, forge::SUBJECT, KeyStatus::Revoked));
    let replay = Arc::new(MemoryReplayGuard::new());
    let verifier = Verifier::new(
        VerifierConfig::without_binding(MerchantId::parse(forge::MERCHANT).unwrap()),
        registry,
        replay.clone(),
        FixedClock(NOW),
    );
    (keys, verifier, replay)
}

fn cart(choice: CartChoice) -> Cart {
    Cart::from_json(forge::cart_json(choice).to_string().as_bytes()).unwrap()
}

#[tokio::test]
async fn every_forged_mandate_gets_its_exact_code_from_the_library_verifier() {
    let (keys, verifier, _) = setup();
    let cases = forge::cases(&keys, NOW);
    let mut failures = Vec::new();
    for case in &cases {
        let cart = cart(case.cart);
        let got = verifier
            .verify(
                &Presentation::bearer(&case.token, case.agent, &cart),
                Consume::Yes,
            )
            .await;
        let code = match &got {
            Ok(_) => "ok",
            Err(e) => e.code().as_str(),
        };
        if code != case.expected {
            failures.push(format!(
                "[{}] {}: expected {}, got {code}",
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
    for family in [
        "algorithm",
        "signature",
        "header",
        "encoding",
        "claims",
        "scope",
    ] {
        let n = cases.iter().filter(|c| c.family == family).count();
        assert!(n >= 4, "family {family} has only {n} cases");
    }
}

#[tokio::test]
async fn a_ten_megabyte_token_is_refused_before_it_is_parsed() {
    let (_, verifier, _) = setup();
    // Three valid-looking segments: only the length check can refuse it this early.
    let huge = format!("{}.{}.{}", "e".repeat(5 << 20), "e".repeat(5 << 20), "AA");
    let cart = cart(CartChoice::Shoe);
    let err = verifier
        .verify(
            &Presentation::bearer(&huge, forge::AGENT, &cart),
            Consume::Yes,
        )
        .await
        .unwrap_err();
    // The size rule's own error: refused by the length check, before any decoding.
    assert_eq!(
        err,
        ap2_mandate::VerifyError::Malformed("the token is longer than 8 KiB")
    );
}
