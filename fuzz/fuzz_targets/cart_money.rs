//! Any bytes as a cart, and as a decimal amount in a few currencies: refused or parsed, never
//! a panic; a parsed amount prints back to exactly its input.
#![no_main]

use ap2_mandate::{Cart, Currency, Money};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cart) = Cart::from_json(data) {
        let _ = cart.canonical_json();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        for code in ["USD", "JPY", "BHD", "CLF"] {
            if let Ok(currency) = Currency::parse(code) {
                if let Ok(money) = Money::parse(text, currency) {
                    assert_eq!(money.to_string(), text);
                }
            }
        }
        let _ = Currency::parse(text);
    }
});
