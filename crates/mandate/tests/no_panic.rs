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
