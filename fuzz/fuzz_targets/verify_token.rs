//! Any bytes as a presented token: SPEC §4 steps 1–4 must refuse them without a panic or a hang.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

static FIXTURE: OnceLock<Option<common::Fixture>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some(fixture) = FIXTURE.get_or_init(common::Fixture::new) else { return };
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = fixture.code(token);
    }
});
