//! The merchant's cart (SPEC §3) and its `cart_hash`: SHA-256 over the RFC 8785 form.
//!
//! The order of members and the spacing of the JSON do not change the hash; every value does.
//! The SPEC's first vector:
//!
//! ```
//! use ap2_mandate::Cart;
//!
//! # fn main() -> Result<(), ap2_mandate::CartError> {
//! let cart = Cart::from_json(br#"{"merchant_id": "acme-corp", "currency": "USD",
//!     "line_items": [{"id": "shoe-001", "title": "Trail Runner", "quantity": 1,
//!                     "unit_price": 8999}], "total": 8999}"#)?;
//! assert_eq!(
//!     cart.canonical_json()?,
//!     br#"{"currency":"USD","line_items":[{"id":"shoe-001","quantity":1,"title":"Trail Runner","unit_price":8999}],"merchant_id":"acme-corp","total":8999}"#
//! );
//! assert_eq!(cart.hash().as_str(), "sha256-ZCIE6aIobKWPU-oIQf8CSNtobWOoxjVv9FXkDlla3wE");
//!
//! // The same cart written differently hashes the same; another quantity does not, and a
//! // total that is not the sum of the lines is refused.
//! let reordered = Cart::from_json(br#"{"total":8999,"currency":"USD","merchant_id":"acme-corp",
//!     "line_items":[{"unit_price":8999,"quantity":1,"title":"Trail Runner","id":"shoe-001"}]}"#)?;
//! assert_eq!(reordered.hash(), cart.hash());
//! assert!(Cart::from_json(br#"{"merchant_id":"acme-corp","currency":"USD","total":8999,
//!     "line_items":[{"id":"shoe-001","title":"Trail Runner","quantity":2,"unit_price":8999}]}"#)
//!     .is_err());
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{IdError, MerchantId};
use crate::money::{Currency, CurrencyError, MAX_MINOR_UNITS, Money};

/// At most this many line items (SPEC §3).
pub const MAX_LINE_ITEMS: usize = 100;
/// A line item's quantity is 1..=this (SPEC §3).
pub const MAX_QUANTITY: u32 = 10_000;
/// A line item id is at most this many bytes (the SPEC says only "non-empty"; see PROTOCOL.md).
pub const MAX_ITEM_ID_LEN: usize = 128;
/// A title is at most this many bytes (PROTOCOL.md): a cart is shown to a person and signed.
pub const MAX_TITLE_LEN: usize = 1024;

/// Why a cart is refused. Each SPEC §3 rule has its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CartError {
    /// Not the cart's JSON shape: wrong types, missing or unknown members, duplicate members.
    #[error("the cart is not well-formed JSON of the SPEC §3 shape: {0}")]
    Json(String),
    /// `merchant_id` is not a valid merchant id.
    #[error("merchant_id: {0}")]
    MerchantId(IdError),
    /// `currency` is not an ISO 4217 code with minor units.
    #[error("currency: {0}")]
    Currency(CurrencyError),
    /// `line_items` is empty.
    #[error("a cart has at least one line item")]
    NoLineItems,
    /// More than [`MAX_LINE_ITEMS`] line items.
    #[error("a cart has at most {MAX_LINE_ITEMS} line items")]
    TooManyLineItems,
    /// A line item id is empty.
    #[error("a line item id is non-empty")]
    EmptyItemId,
    /// A line item id longer than [`MAX_ITEM_ID_LEN`] bytes.
    #[error("a line item id is at most {MAX_ITEM_ID_LEN} bytes")]
    ItemIdTooLong,
    /// Two line items share an id.
    #[error("line item ids are unique; {0:?} appears twice")]
    DuplicateItemId(String),
    /// A title longer than [`MAX_TITLE_LEN`] bytes.
    #[error("line item {0:?}: a title is at most {MAX_TITLE_LEN} bytes")]
    TitleTooLong(String),
    /// A quantity outside 1..=[`MAX_QUANTITY`].
    #[error("line item {0:?}: quantity is 1..={MAX_QUANTITY}")]
    Quantity(String),
    /// A negative unit price.
    #[error("line item {0:?}: unit_price is >= 0")]
    NegativeUnitPrice(String),
    /// A negative total.
    #[error("total is >= 0")]
    NegativeTotal,
    /// A unit price, a line amount or the sum above 2^53 − 1 minor units.
    #[error("the amounts overflow (at most 2^53-1 minor units)")]
    Overflow,
    /// `total` is not the exact sum of quantity × unit_price.
    #[error("total {stated} is not the sum of the line items, {computed}")]
    TotalMismatch {
        /// The cart's `total`.
        stated: i64,
        /// The sum of the line items.
        computed: u64,
    },
}

/// One line of a cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineItem {
    /// The merchant's product id, unique in the cart.
    pub id: String,
    /// What the user sees and approves.
    pub title: String,
    /// 1..=10000.
    pub quantity: u32,
    /// Minor units of the cart's currency.
    pub unit_price: u64,
}

/// A validated SPEC §3 cart together with its `cart_hash`, computed once when it is built.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawCart")]
pub struct Cart {
    merchant_id: MerchantId,
    currency: Currency,
    total: Money,
    line_items: Vec<LineItem>,
    hash: CartHash,
}

/// The cart as it arrives, before the SPEC §3 rules are checked. Signed integers so that a
/// negative amount gets its own error rather than a type error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCart {
    merchant_id: String,
    currency: String,
    total: i64,
    line_items: Vec<RawLineItem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLineItem {
    id: String,
    title: String,
    quantity: i64,
    unit_price: i64,
}

impl Cart {
    /// Builds a cart from priced line items, computing the total.
    pub fn new(
        merchant_id: MerchantId,
        currency: Currency,
        line_items: Vec<LineItem>,
    ) -> Result<Self, CartError> {
        let total = Self::check_items(&line_items, currency)?;
        Self::assemble(merchant_id, currency, total, line_items)
    }

    /// Parses and validates a cart's JSON (SPEC §3). Unknown members are refused: the hash
    /// covers only the SPEC's members, so a member it would silently drop is an error.
    pub fn from_json(json: &[u8]) -> Result<Self, CartError> {
        let raw: RawCart =
            serde_json::from_slice(json).map_err(|e| CartError::Json(e.to_string()))?;
        Self::try_from(raw)
    }

    fn check_items(items: &[LineItem], currency: Currency) -> Result<Money, CartError> {
        if items.is_empty() {
            return Err(CartError::NoLineItems);
        }
        if items.len() > MAX_LINE_ITEMS {
            return Err(CartError::TooManyLineItems);
        }
        let mut seen = HashSet::with_capacity(items.len());
        let mut total: u64 = 0;
        for item in items {
            if item.id.is_empty() {
                return Err(CartError::EmptyItemId);
            }
            if item.id.len() > MAX_ITEM_ID_LEN {
                return Err(CartError::ItemIdTooLong);
            }
            if !seen.insert(item.id.as_str()) {
                return Err(CartError::DuplicateItemId(item.id.clone()));
            }
            if item.title.len() > MAX_TITLE_LEN {
                return Err(CartError::TitleTooLong(item.id.clone()));
            }
            if !(1..=MAX_QUANTITY).contains(&item.quantity) {
                return Err(CartError::Quantity(item.id.clone()));
            }
            total = u64::from(item.quantity)
                .checked_mul(item.unit_price)
                .and_then(|line| total.checked_add(line))
                .filter(|t| *t <= MAX_MINOR_UNITS)
                .ok_or(CartError::Overflow)?;
        }
        Money::from_minor_units(total, currency).map_err(|_| CartError::Overflow)
    }

    fn assemble(
        merchant_id: MerchantId,
        currency: Currency,
        total: Money,
        line_items: Vec<LineItem>,
    ) -> Result<Self, CartError> {
        let hash = CartHash::of_canonical(&canonical_bytes(
            &merchant_id,
            currency,
            total,
            &line_items,
        )?);
        Ok(Self {
            merchant_id,
            currency,
            total,
            line_items,
            hash,
        })
    }

    /// The merchant that priced the cart.
    pub fn merchant_id(&self) -> &MerchantId {
        &self.merchant_id
    }

    /// The cart's currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// The exact sum of the line items.
    pub fn total(&self) -> Money {
        self.total
    }

    /// The line items, in the order they were given.
    pub fn line_items(&self) -> &[LineItem] {
        &self.line_items
    }

    /// `sha256-<base64url>` of the canonical form.
    pub fn hash(&self) -> &CartHash {
        &self.hash
    }

    /// The RFC 8785 bytes the hash is taken over: line items sorted by id.
    pub fn canonical_json(&self) -> Result<Vec<u8>, CartError> {
        canonical_bytes(
            &self.merchant_id,
            self.currency,
            self.total,
            &self.line_items,
        )
    }
}

impl TryFrom<RawCart> for Cart {
    type Error = CartError;

    fn try_from(raw: RawCart) -> Result<Self, CartError> {
        let merchant_id = MerchantId::parse(&raw.merchant_id).map_err(CartError::MerchantId)?;
        let currency = Currency::parse(&raw.currency).map_err(CartError::Currency)?;
        let mut items = Vec::with_capacity(raw.line_items.len());
        for item in raw.line_items {
            let quantity =
                u32::try_from(item.quantity).map_err(|_| CartError::Quantity(item.id.clone()))?;
            let unit_price = u64::try_from(item.unit_price)
                .map_err(|_| CartError::NegativeUnitPrice(item.id.clone()))?;
            items.push(LineItem {
                id: item.id,
                title: item.title,
                quantity,
                unit_price,
            });
        }
        let computed = Self::check_items(&items, currency)?;
        if raw.total < 0 {
            return Err(CartError::NegativeTotal);
        }
        if u64::try_from(raw.total).ok() != Some(computed.minor_units()) {
            return Err(CartError::TotalMismatch {
                stated: raw.total,
                computed: computed.minor_units(),
            });
        }
        Self::assemble(merchant_id, currency, computed, items)
    }
}

/// The SPEC §3 JSON form, members in the SPEC's order, line items as given.
impl Serialize for Cart {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        CartView {
            merchant_id: self.merchant_id.as_str(),
            currency: self.currency.code(),
            total: self.total.minor_units(),
            line_items: self.line_items.iter().collect(),
        }
        .serialize(serializer)
    }
}

impl fmt::Debug for Cart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cart")
            .field("merchant_id", &self.merchant_id)
            .field("total", &self.total)
            .field("line_items", &self.line_items)
            .field("hash", &self.hash)
            .finish()
    }
}

#[derive(Serialize)]
struct CartView<'a> {
    merchant_id: &'a str,
    currency: &'a str,
    total: u64,
    line_items: Vec<&'a LineItem>,
}

/// The RFC 8785 form, written directly. For this one schema serde_json's compact output IS the
/// RFC 8785 form: the members below are declared in RFC 8785's order (all names are ASCII, so
/// sorting by UTF-16 code units is sorting by bytes), the numbers are integers of at most
/// 2^53 − 1 (which ECMAScript prints as plain decimals, as serde_json does), and serde_json
/// escapes strings exactly as RFC 8785 §3.2.2.2 asks (`"`, `\\`, `\b \t \n \f \r`, other
/// U+0000..U+001F as lower-case `\u00xx`, nothing else). The general canonicalizer
/// (`serde_json_canonicalizer`) is the oracle the tests compare against; writing the form
/// directly is several times faster than building it through it (BENCHMARKS.md).
#[derive(Serialize)]
struct CanonicalCart<'a> {
    currency: &'a str,
    line_items: Vec<CanonicalLineItem<'a>>,
    merchant_id: &'a str,
    total: u64,
}

#[derive(Serialize)]
struct CanonicalLineItem<'a> {
    id: &'a str,
    quantity: u32,
    title: &'a str,
    unit_price: u64,
}

fn canonical_bytes(
    merchant_id: &MerchantId,
    currency: Currency,
    total: Money,
    line_items: &[LineItem],
) -> Result<Vec<u8>, CartError> {
    let mut sorted: Vec<CanonicalLineItem<'_>> = line_items
        .iter()
        .map(|item| CanonicalLineItem {
            id: &item.id,
            quantity: item.quantity,
            title: &item.title,
            unit_price: item.unit_price,
        })
        .collect();
    // `str`'s order is the order of its UTF-8 bytes, which is what the SPEC asks for.
    sorted.sort_unstable_by(|a, b| a.id.cmp(b.id));
    let canonical = CanonicalCart {
        currency: currency.code(),
        line_items: sorted,
        merchant_id: merchant_id.as_str(),
        total: total.minor_units(),
    };
    serde_json::to_vec(&canonical).map_err(|e| CartError::Json(e.to_string()))
}

/// A cart hash, `sha256-` followed by the unpadded base64url of a SHA-256 digest.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CartHash(String);

/// Why a string is not a cart hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a cart_hash is \"sha256-\" and 43 base64url characters of a SHA-256 digest")]
pub struct CartHashError;

impl CartHash {
    const PREFIX: &'static str = "sha256-";

    /// Parses the `sha256-<base64url>` form; other algorithms, hex and padding are refused.
    pub fn parse(text: &str) -> Result<Self, CartHashError> {
        let digest = text.strip_prefix(Self::PREFIX).ok_or(CartHashError)?;
        crate::b64::decode_array::<32>(digest).ok_or(CartHashError)?;
        Ok(Self(text.to_owned()))
    }

    fn of_canonical(canonical: &[u8]) -> Self {
        let digest = Sha256::digest(canonical);
        Self(format!("{}{}", Self::PREFIX, crate::b64::encode(digest)))
    }

    /// The hash as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CartHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CartHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CartHash({})", self.0)
    }
}

impl Serialize for CartHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CartHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cart(value: serde_json::Value) -> Result<Cart, CartError> {
        Cart::from_json(value.to_string().as_bytes())
    }

    fn shoe_cart() -> serde_json::Value {
        json!({"merchant_id": "acme-corp", "currency": "USD", "total": 8999,
               "line_items": [{"id": "shoe-001", "title": "Trail Runner", "quantity": 1, "unit_price": 8999}]})
    }

    #[test]
    fn spec3_cart_hash_reproduces_the_shared_vectors() {
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../tests/vectors/cart_vectors.json")).unwrap();
        for vector in vectors.as_array().unwrap() {
            let cart = cart(vector["cart"].clone()).unwrap();
            let canonical = cart.canonical_json().unwrap();
            assert_eq!(
                std::str::from_utf8(&canonical).unwrap(),
                vector["canonical"].as_str().unwrap(),
                "{}",
                vector["name"]
            );
            assert_eq!(
                cart.hash().as_str(),
                vector["cart_hash"].as_str().unwrap(),
                "{}",
                vector["name"]
            );
        }
    }

    #[test]
    fn spec3_cart_has_1_to_100_line_items() {
        let mut c = shoe_cart();
        c["line_items"] = json!([]);
        c["total"] = json!(0);
        assert_eq!(cart(c.clone()), Err(CartError::NoLineItems));
        let items: Vec<_> = (0..101)
            .map(|i| json!({"id": format!("i{i}"), "title": "t", "quantity": 1, "unit_price": 1}))
            .collect();
        c["line_items"] = json!(items);
        c["total"] = json!(101);
        assert_eq!(cart(c.clone()), Err(CartError::TooManyLineItems));
        c["line_items"] = json!(items[..100]);
        c["total"] = json!(100);
        assert!(cart(c).is_ok());
    }

    #[test]
    fn spec3_line_item_ids_are_unique_and_non_empty() {
        let mut c = shoe_cart();
        c["line_items"][0]["id"] = json!("");
        assert_eq!(cart(c), Err(CartError::EmptyItemId));
        let mut c = shoe_cart();
        let item = c["line_items"][0].clone();
        c["line_items"] = json!([item, item]);
        c["total"] = json!(17998);
        assert_eq!(cart(c), Err(CartError::DuplicateItemId("shoe-001".into())));
        let mut c = shoe_cart();
        c["line_items"][0]["id"] = json!("x".repeat(MAX_ITEM_ID_LEN + 1));
        assert_eq!(cart(c), Err(CartError::ItemIdTooLong));
    }

    #[test]
    fn spec3_quantity_is_1_to_10000() {
        for bad in [0, -1, 10_001] {
            let mut c = shoe_cart();
            c["line_items"][0]["quantity"] = json!(bad);
            assert_eq!(
                cart(c),
                Err(CartError::Quantity("shoe-001".into())),
                "{bad}"
            );
        }
        let mut c = shoe_cart();
        c["line_items"][0]["quantity"] = json!(10_000);
        c["total"] = json!(89_990_000);
        assert!(cart(c).is_ok());
    }

    #[test]
    fn spec3_unit_price_is_not_negative() {
        let mut c = shoe_cart();
        c["line_items"][0]["unit_price"] = json!(-1);
        assert_eq!(
            cart(c),
            Err(CartError::NegativeUnitPrice("shoe-001".into()))
        );
        let mut c = shoe_cart();
        c["line_items"][0]["unit_price"] = json!(0);
        c["total"] = json!(0);
        assert!(cart(c).is_ok(), "a free item is fine");
    }

    #[test]
    fn spec3_total_is_the_exact_sum() {
        let mut c = shoe_cart();
        c["total"] = json!(8998);
        assert_eq!(
            cart(c),
            Err(CartError::TotalMismatch {
                stated: 8998,
                computed: 8999
            })
        );
        let mut c = shoe_cart();
        c["total"] = json!(-8999);
        assert_eq!(cart(c), Err(CartError::NegativeTotal));
    }

    #[test]
    fn spec3_total_overflow_is_an_error() {
        let mut c = shoe_cart();
        c["line_items"][0]["quantity"] = json!(10_000);
        c["line_items"][0]["unit_price"] = json!(i64::MAX);
        c["total"] = json!(0);
        assert_eq!(cart(c), Err(CartError::Overflow));
        let mut c = shoe_cart();
        c["line_items"][0]["unit_price"] = json!(MAX_MINOR_UNITS + 1);
        c["total"] = json!(MAX_MINOR_UNITS + 1);
        assert_eq!(cart(c), Err(CartError::Overflow));
    }

    #[test]
    fn spec3_cart_json_shape_is_strict() {
        for bad in [
            r#"{"merchant_id":"m","currency":"USD","total":1.0,"line_items":[{"id":"a","title":"t","quantity":1,"unit_price":1}]}"#,
            r#"{"merchant_id":"m","currency":"USD","total":"1","line_items":[{"id":"a","title":"t","quantity":1,"unit_price":1}]}"#,
            r#"{"merchant_id":"m","currency":"USD","total":1,"line_items":[{"id":"a","title":"t","quantity":1,"unit_price":1,"discount":1}]}"#,
            r#"{"merchant_id":"m","currency":"USD","total":1,"note":"x","line_items":[{"id":"a","title":"t","quantity":1,"unit_price":1}]}"#,
            r#"{"merchant_id":"m","currency":"USD","total":1,"total":1,"line_items":[{"id":"a","title":"t","quantity":1,"unit_price":1}]}"#,
            r#"{"merchant_id":"m","currency":"USD","line_items":[{"id":"a","title":"t","quantity":1,"unit_price":1}]}"#,
            "not json",
        ] {
            assert!(
                matches!(Cart::from_json(bad.as_bytes()), Err(CartError::Json(_))),
                "{bad}"
            );
        }
        let mut c = shoe_cart();
        c["currency"] = json!("usd");
        assert_eq!(cart(c), Err(CartError::Currency(CurrencyError::NotAlpha3)));
        let mut c = shoe_cart();
        c["merchant_id"] = json!("");
        assert!(matches!(cart(c), Err(CartError::MerchantId(_))));
    }

    #[test]
    fn spec3_cart_serializes_back_to_its_own_json() {
        let c = cart(shoe_cart()).unwrap();
        assert_eq!(serde_json::to_value(&c).unwrap(), shoe_cart());
    }

    #[test]
    fn spec3_cart_hash_jcs_escapes_the_awkward_characters_as_rfc8785() {
        let title =
            "q\"b\\ \u{0}\u{8}\t\n\u{b}\u{c}\r\u{1f} \u{7f} \u{2028}\u{2029} / é 😀 \u{feff}";
        let cart = Cart::new(
            MerchantId::parse("acme-corp").unwrap(),
            Currency::parse("EUR").unwrap(),
            vec![LineItem {
                id: "\u{1}id\u{2028}".into(),
                title: title.into(),
                quantity: 2,
                unit_price: 9_007_199_254_740,
            }],
        )
        .unwrap();
        let general = serde_json_canonicalizer::to_vec(&json!({
            "merchant_id": "acme-corp",
            "currency": "EUR",
            "total": 18_014_398_509_480_u64,
            "line_items": [{"id": "\u{1}id\u{2028}", "title": title, "quantity": 2, "unit_price": 9_007_199_254_740_u64}],
        }))
        .unwrap();
        assert_eq!(
            String::from_utf8(cart.canonical_json().unwrap()).unwrap(),
            String::from_utf8(general).unwrap()
        );
    }

    #[test]
    fn spec3_cart_hash_form_is_sha256_base64url() {
        assert!(CartHash::parse("sha256-ZCIE6aIobKWPU-oIQf8CSNtobWOoxjVv9FXkDlla3wE").is_ok());
        for bad in [
            "sha256-ZCIE6aIobKWPU-oIQf8CSNtobWOoxjVv9FXkDlla3wE=",
            "sha256-ZCIE6aIobKWPU+oIQf8CSNtobWOoxjVv9FXkDlla3wE",
            "sha384-ZCIE6aIobKWPU-oIQf8CSNtobWOoxjVv9FXkDlla3wE",
            "SHA256-ZCIE6aIobKWPU-oIQf8CSNtobWOoxjVv9FXkDlla3wE",
            "sha256-642204e9a2286ca58f53ea0841ff0248db686d63a8c6356ff455e40e595adf01",
            "ZCIE6aIobKWPU-oIQf8CSNtobWOoxjVv9FXkDlla3wE",
            "sha256-",
        ] {
            assert_eq!(CartHash::parse(bad), Err(CartHashError), "{bad}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn items() -> impl Strategy<Value = Vec<LineItem>> {
            prop::collection::btree_map(
                "[a-z0-9-]{1,8}",
                ("\\PC{0,12}", 1u32..=50, 0u64..=100_000),
                1..=8,
            )
            .prop_map(|m| {
                m.into_iter()
                    .map(|(id, (title, quantity, unit_price))| LineItem {
                        id,
                        title,
                        quantity,
                        unit_price,
                    })
                    .collect()
            })
        }

        fn build(merchant: &str, currency: &str, items: Vec<LineItem>) -> Cart {
            Cart::new(
                MerchantId::parse(merchant).unwrap(),
                Currency::parse(currency).unwrap(),
                items,
            )
            .unwrap()
        }

        proptest! {
            #[test]
            fn cart_hash_ignores_line_item_order(items in items(), seed in any::<u64>()) {
                let base = build("acme-corp", "USD", items.clone());
                let mut shuffled = items;
                let len = shuffled.len();
                shuffled.rotate_left((seed as usize) % len);
                if seed % 2 == 0 { shuffled.reverse(); }
                let other = build("acme-corp", "USD", shuffled);
                prop_assert_eq!(base.hash(), other.hash());
            }

            #[test]
            fn cart_hash_changes_with_any_field(items in items(), which in 0usize..7, pick in any::<usize>()) {
                let base = build("acme-corp", "USD", items.clone());
                let mut changed = items;
                let n = changed.len();
                let item = &mut changed[pick % n];
                let (merchant, currency) = match which {
                    0 => { item.id.push('~'); ("acme-corp", "USD") }
                    1 => { item.title.push('x'); ("acme-corp", "USD") }
                    2 => { item.quantity += 1; ("acme-corp", "USD") }
                    3 => { item.unit_price += 1; ("acme-corp", "USD") }
                    4 => ("acme-corp", "EUR"),
                    5 => ("acme-corp-2", "USD"),
                    _ => { changed.push(LineItem { id: "~extra".into(), title: String::new(), quantity: 1, unit_price: 0 }); ("acme-corp", "USD") }
                };
                let other = build(merchant, currency, changed);
                prop_assert_ne!(base.hash(), other.hash());
            }

            #[test]
            fn cart_hash_changes_with_the_total(items in items()) {
                let base = build("acme-corp", "USD", items.clone());
                let canonical = base.canonical_json().unwrap();
                // The total is covered by the hash: the same items stated with another total
                // are refused before hashing, and the canonical form carries it verbatim.
                let needle = format!("\"total\":{}", base.total().minor_units());
                prop_assert!(std::str::from_utf8(&canonical).unwrap().contains(&needle));
                let mut raw = serde_json::to_value(&base).unwrap();
                raw["total"] = serde_json::json!(base.total().minor_units() + 1);
                let refused = Cart::from_json(raw.to_string().as_bytes()).is_err();
                prop_assert!(refused);
            }

            /// The direct RFC 8785 writer agrees with the general canonicalizer, for any
            /// strings (control characters, quotes, backslashes, non-ASCII, U+2028, U+007F).
            #[test]
            fn spec3_cart_hash_jcs_is_what_an_rfc8785_canonicalizer_writes(
                ids in prop::collection::vec(any::<String>(), 1..=6),
                titles in prop::collection::vec("(?s).{0,16}", 6),
                quantity in 1u32..=10_000,
                unit_price in 0u64..=MAX_MINOR_UNITS / 10_000,
            ) {
                let items: Vec<LineItem> = ids
                    .into_iter()
                    .zip(titles)
                    .map(|(id, title)| LineItem { id, title, quantity, unit_price })
                    .collect();
                let merchant = MerchantId::parse("acme-corp").unwrap();
                let currency = Currency::parse("JPY").unwrap();
                let total = Money::from_minor_units(unit_price, currency).unwrap();
                let direct = canonical_bytes(&merchant, currency, total, &items).unwrap();
                let mut sorted: Vec<&LineItem> = items.iter().collect();
                sorted.sort_by(|a, b| a.id.cmp(&b.id));
                let general = serde_json_canonicalizer::to_vec(&serde_json::json!({
                    "merchant_id": "acme-corp",
                    "currency": "JPY",
                    "total": unit_price,
                    "line_items": sorted,
                }))
                .unwrap();
                prop_assert_eq!(String::from_utf8(direct).unwrap(), String::from_utf8(general).unwrap());
            }

            #[test]
            fn cart_parsing_never_panics(s in "\\PC{0,200}") {
                let _ = Cart::from_json(s.as_bytes());
            }
        }
    }
}
