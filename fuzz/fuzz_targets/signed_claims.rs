//! Any bytes as a header and a payload, validly signed with the registered key: the claim
//! checks (steps 5–6) run on attacker-shaped JSON without a panic.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use ap2_mandate::Signer;
use base64::Engine;
use libfuzzer_sys::fuzz_target;

static FIXTURE: OnceLock<Option<common::Fixture>> = OnceLock::new();

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fuzz_target!(|data: &[u8]| {
    let Some(fixture) = FIXTURE.get_or_init(common::Fixture::new) else { return };
    // The input is the payload; the header is the wallet's.
    let header = format!(
        r#"{{"alg":"ES256","typ":"ap2-intent+jwt","kid":"{}"}}"#,
        fixture.signer.kid()
    );
    let input = format!("{}.{}", b64(header.as_bytes()), b64(data));
    let Ok(signature) = fixture.signer.sign_es256(input.as_bytes()) else { return };
    let _ = fixture.code(&format!("{input}.{}", b64(&signature)));
});
