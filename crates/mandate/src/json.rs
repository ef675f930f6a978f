//! Strict JSON for JOSE headers and claims: duplicate member names are refused at every depth
//! (RFC 8725 §3.2 warns that parsers disagree on which duplicate wins), and the members the
//! verifier reads are taken straight into typed fields, without building a value tree: the
//! rest of the document is walked (for syntax and duplicates) and forgotten.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Why bytes are not a strict JSON object of the expected shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StrictJsonError {
    /// Not JSON at all (syntax, UTF-8, nesting deeper than serde_json's limit of 128), or not
    /// an object.
    Syntax,
    /// An object with the same member name twice, at any depth.
    DuplicateMember,
}

/// One member as the verifier reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Field<T> {
    /// Not there.
    #[default]
    Absent,
    /// There, of the expected type.
    Present(T),
    /// There, of another type.
    WrongType,
}

/// The JOSE header members SPEC §4 step 2 looks at.
#[derive(Debug, Default)]
pub(crate) struct RawHeader {
    /// Whether `alg` is exactly `ES256`.
    pub alg: Field<bool>,
    /// Whether `typ` is exactly the `expected_typ` given to [`parse_header`].
    pub typ: Field<bool>,
    pub kid: Field<String>,
    /// Which of the names in `forbidden` (the caller's list) are present, as bits.
    pub forbidden: u32,
}

/// `aud`: a string, or an array (of which only the first element's string is kept).
#[derive(Debug, Default)]
pub(crate) enum Aud {
    #[default]
    Absent,
    One(String),
    Array {
        len: usize,
        first: Field<String>,
    },
    WrongType,
}

/// `ap2_scope`.
#[derive(Debug, Default)]
pub(crate) enum RawScope {
    #[default]
    Absent,
    NotObject,
    Object {
        unknown_member: bool,
        max_amount: Field<String>,
        currency: Field<String>,
        cart_hash: Field<String>,
        allow_agent_id: Field<String>,
    },
}

/// The claims SPEC §4 step 5 reads; every other member is walked and forgotten.
#[derive(Debug, Default)]
pub(crate) struct RawClaims {
    pub iss: Field<String>,
    pub sub: Field<String>,
    pub aud: Aud,
    pub exp: Field<u64>,
    pub iat: Field<u64>,
    pub nbf: Field<u64>,
    pub jti: Field<String>,
    /// Whether `ap2_intent` is exactly the `intent` given to [`parse_claims`].
    pub ap2_intent: Field<bool>,
    pub ap2_scope: RawScope,
    pub cnf: RawCnf,
    pub amr: RawAmr,
}

/// `amr` (RFC 8176, SPEC §12): how the user approved.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) enum RawAmr {
    #[default]
    Absent,
    Methods(Vec<String>),
    /// Not an array of 1..=[`AMR_MAX_METHODS`] strings of 1..=[`AMR_MAX_LEN`] characters of
    /// `[A-Za-z0-9_-]`.
    Invalid,
}

/// At most this many `amr` values.
pub(crate) const AMR_MAX_METHODS: usize = 8;
/// An `amr` value is at most this long.
pub(crate) const AMR_MAX_LEN: usize = 32;

/// Whether `amr` follows the rule the verifier holds it to.
pub(crate) fn amr_is_valid(amr: &[String]) -> bool {
    (1..=AMR_MAX_METHODS).contains(&amr.len()) && amr.iter().all(|m| amr_method_is_valid(m))
}

fn amr_method_is_valid(m: &str) -> bool {
    (1..=AMR_MAX_LEN).contains(&m.len())
        && m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `cnf` (RFC 7800): SPEC §8 allows exactly `{"jkt": "<thumbprint>"}`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) enum RawCnf {
    #[default]
    Absent,
    Jkt(String),
    /// Any other form: not an object, no `jkt`, a `jkt` that is not a string, other members.
    Invalid,
}

/// A DPoP proof's `jwk` header member.
#[derive(Debug, Default)]
pub(crate) enum RawJwk {
    #[default]
    Absent,
    NotObject,
    Object {
        /// Whether `kty` is exactly `EC`.
        kty: Field<bool>,
        /// Whether `crv` is exactly `P-256`.
        crv: Field<bool>,
        x: Field<String>,
        y: Field<String>,
        /// A private member (`d`, …) is present.
        private: bool,
        /// Another member is present.
        other: bool,
    },
}

/// A DPoP proof's header (SPEC §8: exactly `typ`, `alg` and `jwk`).
#[derive(Debug, Default)]
pub(crate) struct RawProofHeader {
    /// Whether `typ` is exactly `dpop+jwt`.
    pub typ: Field<bool>,
    /// Whether `alg` is exactly `ES256`.
    pub alg: Field<bool>,
    pub jwk: RawJwk,
    /// The first member that is none of the three (`"other"` for names not worth naming).
    pub forbidden: Option<&'static str>,
}

/// A DPoP proof's claims; others are walked and forgotten.
#[derive(Debug, Default)]
pub(crate) struct RawProofClaims {
    pub jti: Field<String>,
    pub htm: Field<String>,
    pub htu: Field<String>,
    pub iat: Field<u64>,
    pub ath: Field<String>,
    pub nonce: Field<String>,
}

/// Parses a JOSE header; `forbidden` names are only noted (bit i for `forbidden[i]`).
pub(crate) fn parse_header(
    bytes: &[u8],
    expected_typ: &'static str,
    forbidden: &'static [&'static str],
) -> Result<RawHeader, StrictJsonError> {
    let duplicate = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let seed = HeaderSeed {
        flag: Flag(&duplicate),
        expected_typ,
        forbidden,
    };
    let parsed = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    finish(parsed, &duplicate)
}

/// Parses a JWT payload.
pub(crate) fn parse_claims(
    bytes: &[u8],
    intent: &'static str,
) -> Result<RawClaims, StrictJsonError> {
    let duplicate = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let seed = ClaimsSeed {
        flag: Flag(&duplicate),
        intent,
    };
    let parsed = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    finish(parsed, &duplicate)
}

/// Parses a DPoP proof's header.
pub(crate) fn parse_proof_header(bytes: &[u8]) -> Result<RawProofHeader, StrictJsonError> {
    let duplicate = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = ProofHeaderSeed(Flag(&duplicate))
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    finish(parsed, &duplicate)
}

/// Parses a DPoP proof's payload.
pub(crate) fn parse_proof_claims(bytes: &[u8]) -> Result<RawProofClaims, StrictJsonError> {
    let duplicate = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = ProofClaimsSeed(Flag(&duplicate))
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    finish(parsed, &duplicate)
}

fn finish<T>(
    parsed: Result<T, serde_json::Error>,
    duplicate: &Cell<bool>,
) -> Result<T, StrictJsonError> {
    parsed.map_err(|_| {
        if duplicate.get() {
            StrictJsonError::DuplicateMember
        } else {
            StrictJsonError::Syntax
        }
    })
}

/// Set when a duplicate member name is what failed the parse.
#[derive(Clone, Copy)]
struct Flag<'c>(&'c Cell<bool>);

impl Flag<'_> {
    fn duplicate<E: serde::de::Error>(self) -> E {
        self.0.set(true);
        E::custom("duplicate member name")
    }
}

/// The member names of one object seen so far: a short list, a set once it grows (so an
/// object of thousands of members costs linear time, not quadratic).
#[derive(Default)]
struct Names<'de> {
    list: Vec<Cow<'de, str>>,
    set: Option<HashSet<Cow<'de, str>>>,
}

impl<'de> Names<'de> {
    const LIST_MAX: usize = 16;

    /// False when `name` was seen before.
    fn insert(&mut self, name: Cow<'de, str>) -> bool {
        if let Some(set) = &mut self.set {
            return set.insert(name);
        }
        if self.list.contains(&name) {
            return false;
        }
        if self.list.is_empty() {
            // A mandate's payload has nine members; one allocation for all of them.
            self.list.reserve(Self::LIST_MAX);
        }
        self.list.push(name);
        if self.list.len() > Self::LIST_MAX {
            self.set = Some(self.list.drain(..).collect());
        }
        true
    }
}

/// Reads the next member name, refusing one seen before in this object.
fn next_name<'de, A: MapAccess<'de>>(
    access: &mut A,
    names: &mut Names<'de>,
    flag: Flag<'_>,
) -> Result<Option<Cow<'de, str>>, A::Error> {
    let Some(name) = access.next_key_seed(NameSeed)? else {
        return Ok(None);
    };
    if !names.insert(name.clone()) {
        return Err(flag.duplicate());
    }
    Ok(Some(name))
}

/// A member name, borrowed from the input when it has no escapes.
struct NameSeed;

impl<'de> DeserializeSeed<'de> for NameSeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NameSeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// A seed that reads any JSON value with its own visitor.
macro_rules! any_value_seed {
    ($seed:ident, $value:ty) => {
        impl<'de> DeserializeSeed<'de> for $seed<'_> {
            type Value = $value;
            fn deserialize<D: Deserializer<'de>>(
                self,
                deserializer: D,
            ) -> Result<$value, D::Error> {
                deserializer.deserialize_any(self)
            }
        }
    };
}

/// Any JSON value, walked for syntax and duplicate names, then forgotten.
#[derive(Clone, Copy)]
struct Skip<'c>(Flag<'c>);

any_value_seed!(Skip, ());

impl<'de> Visitor<'de> for Skip<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<(), A::Error> {
        let mut names = Names::default();
        while next_name(&mut access, &mut names, self.0)?.is_some() {
            access.next_value_seed(self)?;
        }
        Ok(())
    }
}

/// What a typed field does with values not of its type: report them (containers are walked
/// first, for syntax and duplicate names).
macro_rules! other_scalars {
    ($value:ty, $wrong:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<$value, E> {
            Ok($wrong)
        }
        fn visit_i64<E>(self, _: i64) -> Result<$value, E> {
            Ok($wrong)
        }
        fn visit_f64<E>(self, _: f64) -> Result<$value, E> {
            Ok($wrong)
        }
        fn visit_unit<E>(self) -> Result<$value, E> {
            Ok($wrong)
        }
    };
}

macro_rules! other_seq {
    ($value:ty, $wrong:expr) => {
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<$value, A::Error> {
            Skip(self.0).visit_seq(seq).map(|()| $wrong)
        }
    };
}

macro_rules! other_map {
    ($value:ty, $wrong:expr) => {
        fn visit_map<A: MapAccess<'de>>(self, access: A) -> Result<$value, A::Error> {
            Skip(self.0).visit_map(access).map(|()| $wrong)
        }
    };
}

/// A string member.
#[derive(Clone, Copy)]
struct Text<'c>(Flag<'c>);

any_value_seed!(Text, Field<String>);

impl<'de> Visitor<'de> for Text<'_> {
    type Value = Field<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Field::Present(v.to_owned()))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Field::WrongType)
    }
    other_scalars!(Field<String>, Field::WrongType);
    other_seq!(Field<String>, Field::WrongType);
    other_map!(Field<String>, Field::WrongType);
}

/// A string member compared with the one value it may have, without copying it.
#[derive(Clone, Copy)]
struct Is<'c>(Flag<'c>, &'static str);

any_value_seed!(Is, Field<bool>);

impl<'de> Visitor<'de> for Is<'_> {
    type Value = Field<bool>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Field::Present(v == self.1))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Field::WrongType)
    }
    other_scalars!(Field<bool>, Field::WrongType);
    other_seq!(Field<bool>, Field::WrongType);
    other_map!(Field<bool>, Field::WrongType);
}

/// A non-negative integer member (a NumericDate).
#[derive(Clone, Copy)]
struct Unsigned<'c>(Flag<'c>);

any_value_seed!(Unsigned, Field<u64>);

impl<'de> Visitor<'de> for Unsigned<'_> {
    type Value = Field<u64>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Field::Present(v))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Field::WrongType)
    }
    other_scalars!(Field<u64>, Field::WrongType);
    other_seq!(Field<u64>, Field::WrongType);
    other_map!(Field<u64>, Field::WrongType);
}

/// `aud`.
#[derive(Clone, Copy)]
struct AudSeed<'c>(Flag<'c>);

any_value_seed!(AudSeed, Aud);

impl<'de> Visitor<'de> for AudSeed<'_> {
    type Value = Aud;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E>(self, v: &str) -> Result<Aud, E> {
        Ok(Aud::One(v.to_owned()))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Aud, E> {
        Ok(Aud::WrongType)
    }
    other_scalars!(Aud, Aud::WrongType);
    other_map!(Aud, Aud::WrongType);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Aud, A::Error> {
        let Some(first) = seq.next_element_seed(Text(self.0))? else {
            return Ok(Aud::Array {
                len: 0,
                first: Field::Absent,
            });
        };
        let mut len = 1;
        while seq.next_element_seed(Skip(self.0))?.is_some() {
            len += 1;
        }
        Ok(Aud::Array { len, first })
    }
}

/// `ap2_scope`.
#[derive(Clone, Copy)]
struct ScopeSeed<'c>(Flag<'c>);

any_value_seed!(ScopeSeed, RawScope);

impl<'de> Visitor<'de> for ScopeSeed<'_> {
    type Value = RawScope;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E>(self, _: &str) -> Result<RawScope, E> {
        Ok(RawScope::NotObject)
    }
    fn visit_u64<E>(self, _: u64) -> Result<RawScope, E> {
        Ok(RawScope::NotObject)
    }
    other_scalars!(RawScope, RawScope::NotObject);
    other_seq!(RawScope, RawScope::NotObject);
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<RawScope, A::Error> {
        let mut names = Names::default();
        let mut unknown_member = false;
        let (mut max_amount, mut currency, mut cart_hash, mut allow_agent_id) =
            (Field::Absent, Field::Absent, Field::Absent, Field::Absent);
        while let Some(name) = next_name(&mut access, &mut names, self.0)? {
            let slot = match name.as_ref() {
                "max_amount" => &mut max_amount,
                "currency" => &mut currency,
                "cart_hash" => &mut cart_hash,
                "allow_agent_id" => &mut allow_agent_id,
                _ => {
                    unknown_member = true;
                    access.next_value_seed(Skip(self.0))?;
                    continue;
                }
            };
            *slot = access.next_value_seed(Text(self.0))?;
        }
        Ok(RawScope::Object {
            unknown_member,
            max_amount,
            currency,
            cart_hash,
            allow_agent_id,
        })
    }
}

/// The header object.
struct HeaderSeed<'c> {
    flag: Flag<'c>,
    expected_typ: &'static str,
    forbidden: &'static [&'static str],
}

impl<'de> DeserializeSeed<'de> for HeaderSeed<'_> {
    type Value = RawHeader;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawHeader, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HeaderSeed<'_> {
    type Value = RawHeader;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<RawHeader, A::Error> {
        let mut names = Names::default();
        let mut header = RawHeader::default();
        while let Some(name) = next_name(&mut access, &mut names, self.flag)? {
            match name.as_ref() {
                "alg" => header.alg = access.next_value_seed(Is(self.flag, "ES256"))?,
                "typ" => header.typ = access.next_value_seed(Is(self.flag, self.expected_typ))?,
                "kid" => header.kid = access.next_value_seed(Text(self.flag))?,
                other => {
                    if let Some(i) = self.forbidden.iter().position(|f| *f == other) {
                        header.forbidden |= 1 << i;
                    }
                    access.next_value_seed(Skip(self.flag))?;
                }
            }
        }
        Ok(header)
    }
}

/// The payload object.
struct ClaimsSeed<'c> {
    flag: Flag<'c>,
    intent: &'static str,
}

impl<'de> DeserializeSeed<'de> for ClaimsSeed<'_> {
    type Value = RawClaims;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawClaims, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ClaimsSeed<'_> {
    type Value = RawClaims;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<RawClaims, A::Error> {
        let flag = self.flag;
        let mut names = Names::default();
        let mut claims = RawClaims::default();
        while let Some(name) = next_name(&mut access, &mut names, flag)? {
            match name.as_ref() {
                "iss" => claims.iss = access.next_value_seed(Text(flag))?,
                "sub" => claims.sub = access.next_value_seed(Text(flag))?,
                "jti" => claims.jti = access.next_value_seed(Text(flag))?,
                "ap2_intent" => {
                    claims.ap2_intent = access.next_value_seed(Is(flag, self.intent))?;
                }
                "exp" => claims.exp = access.next_value_seed(Unsigned(flag))?,
                "iat" => claims.iat = access.next_value_seed(Unsigned(flag))?,
                "nbf" => claims.nbf = access.next_value_seed(Unsigned(flag))?,
                "aud" => claims.aud = access.next_value_seed(AudSeed(flag))?,
                "ap2_scope" => claims.ap2_scope = access.next_value_seed(ScopeSeed(flag))?,
                "cnf" => claims.cnf = access.next_value_seed(CnfSeed(flag))?,
                "amr" => claims.amr = access.next_value_seed(AmrSeed(flag))?,
                _ => access.next_value_seed(Skip(flag))?,
            }
        }
        Ok(claims)
    }
}

/// `cnf`.
#[derive(Clone, Copy)]
struct CnfSeed<'c>(Flag<'c>);

any_value_seed!(CnfSeed, RawCnf);

impl<'de> Visitor<'de> for CnfSeed<'_> {
    type Value = RawCnf;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E>(self, _: &str) -> Result<RawCnf, E> {
        Ok(RawCnf::Invalid)
    }
    fn visit_u64<E>(self, _: u64) -> Result<RawCnf, E> {
        Ok(RawCnf::Invalid)
    }
    other_scalars!(RawCnf, RawCnf::Invalid);
    other_seq!(RawCnf, RawCnf::Invalid);
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<RawCnf, A::Error> {
        let mut names = Names::default();
        let mut jkt = Field::Absent;
        let mut other = false;
        while let Some(name) = next_name(&mut access, &mut names, self.0)? {
            if name == "jkt" {
                jkt = access.next_value_seed(Text(self.0))?;
            } else {
                other = true;
                access.next_value_seed(Skip(self.0))?;
            }
        }
        Ok(match jkt {
            Field::Present(jkt) if !other => RawCnf::Jkt(jkt),
            _ => RawCnf::Invalid,
        })
    }
}

/// `amr`: an array of short method names; anything else is walked and marked invalid.
#[derive(Clone, Copy)]
struct AmrSeed<'c>(Flag<'c>);

any_value_seed!(AmrSeed, RawAmr);

impl<'de> Visitor<'de> for AmrSeed<'_> {
    type Value = RawAmr;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E>(self, _: &str) -> Result<RawAmr, E> {
        Ok(RawAmr::Invalid)
    }
    fn visit_u64<E>(self, _: u64) -> Result<RawAmr, E> {
        Ok(RawAmr::Invalid)
    }
    other_scalars!(RawAmr, RawAmr::Invalid);
    other_map!(RawAmr, RawAmr::Invalid);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawAmr, A::Error> {
        let mut methods = Vec::new();
        let mut valid = true;
        while let Some(method) = seq.next_element_seed(Text(self.0))? {
            match method {
                Field::Present(m)
                    if valid && methods.len() < AMR_MAX_METHODS && amr_method_is_valid(&m) =>
                {
                    methods.push(m);
                }
                _ => valid = false,
            }
        }
        Ok(if valid && !methods.is_empty() {
            RawAmr::Methods(methods)
        } else {
            RawAmr::Invalid
        })
    }
}

/// A proof's `jwk`.
#[derive(Clone, Copy)]
struct JwkSeed<'c>(Flag<'c>);

any_value_seed!(JwkSeed, RawJwk);

impl<'de> Visitor<'de> for JwkSeed<'_> {
    type Value = RawJwk;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E>(self, _: &str) -> Result<RawJwk, E> {
        Ok(RawJwk::NotObject)
    }
    fn visit_u64<E>(self, _: u64) -> Result<RawJwk, E> {
        Ok(RawJwk::NotObject)
    }
    other_scalars!(RawJwk, RawJwk::NotObject);
    other_seq!(RawJwk, RawJwk::NotObject);
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<RawJwk, A::Error> {
        let flag = self.0;
        let mut names = Names::default();
        let (mut kty, mut crv, mut x, mut y) =
            (Field::Absent, Field::Absent, Field::Absent, Field::Absent);
        let (mut private, mut other) = (false, false);
        while let Some(name) = next_name(&mut access, &mut names, flag)? {
            match name.as_ref() {
                "kty" => kty = access.next_value_seed(Is(flag, "EC"))?,
                "crv" => crv = access.next_value_seed(Is(flag, "P-256"))?,
                "x" => x = access.next_value_seed(Text(flag))?,
                "y" => y = access.next_value_seed(Text(flag))?,
                name => {
                    if crate::keys::PRIVATE_MEMBERS.contains(&name) {
                        private = true;
                    } else {
                        other = true;
                    }
                    access.next_value_seed(Skip(flag))?;
                }
            }
        }
        Ok(RawJwk::Object {
            kty,
            crv,
            x,
            y,
            private,
            other,
        })
    }
}

/// The header members a proof may not have that deserve their own message.
const NAMED_PROOF_HEADER_MEMBERS: [&str; 7] =
    ["kid", "jku", "x5u", "x5c", "x5t", "x5t#S256", "crit"];

/// A DPoP proof's header object.
struct ProofHeaderSeed<'c>(Flag<'c>);

impl<'de> DeserializeSeed<'de> for ProofHeaderSeed<'_> {
    type Value = RawProofHeader;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawProofHeader, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ProofHeaderSeed<'_> {
    type Value = RawProofHeader;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<RawProofHeader, A::Error> {
        let flag = self.0;
        let mut names = Names::default();
        let mut header = RawProofHeader::default();
        while let Some(name) = next_name(&mut access, &mut names, flag)? {
            match name.as_ref() {
                "typ" => header.typ = access.next_value_seed(Is(flag, "dpop+jwt"))?,
                "alg" => header.alg = access.next_value_seed(Is(flag, "ES256"))?,
                "jwk" => header.jwk = access.next_value_seed(JwkSeed(flag))?,
                other => {
                    if header.forbidden.is_none() {
                        header.forbidden = Some(
                            NAMED_PROOF_HEADER_MEMBERS
                                .iter()
                                .find(|m| **m == other)
                                .copied()
                                .unwrap_or("other"),
                        );
                    }
                    access.next_value_seed(Skip(flag))?;
                }
            }
        }
        Ok(header)
    }
}

/// A DPoP proof's payload object.
struct ProofClaimsSeed<'c>(Flag<'c>);

impl<'de> DeserializeSeed<'de> for ProofClaimsSeed<'_> {
    type Value = RawProofClaims;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawProofClaims, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ProofClaimsSeed<'_> {
    type Value = RawProofClaims;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<RawProofClaims, A::Error> {
        let flag = self.0;
        let mut names = Names::default();
        let mut claims = RawProofClaims::default();
        while let Some(name) = next_name(&mut access, &mut names, flag)? {
            match name.as_ref() {
                "jti" => claims.jti = access.next_value_seed(Text(flag))?,
                "htm" => claims.htm = access.next_value_seed(Text(flag))?,
                "htu" => claims.htu = access.next_value_seed(Text(flag))?,
                "iat" => claims.iat = access.next_value_seed(Unsigned(flag))?,
                "ath" => claims.ath = access.next_value_seed(Text(flag))?,
                "nonce" => claims.nonce = access.next_value_seed(Text(flag))?,
                _ => access.next_value_seed(Skip(flag))?,
            }
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORBIDDEN: &[&str] = &["jku", "jwk", "crit"];

    #[test]
    fn spec4_duplicate_member_names_are_refused_at_every_depth() {
        assert!(parse_claims(br#"{"a":1,"b":{"c":[{"d":1}]}}"#, "CART_PURCHASE_V1").is_ok());
        for bad in [
            &br#"{"aud":"a","aud":"b"}"#[..],
            br#"{"s":{"x":1,"x":1}}"#,
            br#"{"s":[{"x":1,"x":2}]}"#,
            br#"{"ap2_scope":{"currency":"USD","currency":"EUR"}}"#,
            br#"{"ap2_scope":{"x":{"y":1,"y":1}}}"#,
            br#"{"aud":["a",{"y":1,"y":1}]}"#,
            br#"{"iss":{"y":1,"y":1}}"#,
            // The same name spelled with an escape is the same name.
            br#"{"aud":"a","\u0061ud":"b"}"#,
            br#"{"zz":1,"\u007a\u007a":2}"#,
        ] {
            assert_eq!(
                parse_claims(bad, "I").unwrap_err(),
                StrictJsonError::DuplicateMember,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_header(br#"{"alg":"ES256","kid":"a","kid":"a"}"#, "t", FORBIDDEN).unwrap_err(),
            StrictJsonError::DuplicateMember
        );
        assert_eq!(
            parse_header(br#"{"x5c":[{"a":1,"a":1}]}"#, "t", FORBIDDEN).unwrap_err(),
            StrictJsonError::DuplicateMember
        );
    }

    #[test]
    fn spec12_amr_is_an_array_of_short_method_names() {
        let amr = |json: &str| parse_claims(json.as_bytes(), "I").unwrap().amr;
        assert_eq!(amr("{}"), RawAmr::Absent);
        assert_eq!(
            amr(r#"{"amr":["hwk","user","mfa"]}"#),
            RawAmr::Methods(vec!["hwk".into(), "user".into(), "mfa".into()])
        );
        let long = format!(r#"{{"amr":["{}"]}}"#, "a".repeat(AMR_MAX_LEN + 1));
        let many = format!(
            r#"{{"amr":[{}]}}"#,
            [r#""otp""#; AMR_MAX_METHODS + 1].join(",")
        );
        for bad in [
            r#"{"amr":null}"#,
            r#"{"amr":"otp"}"#,
            r#"{"amr":[]}"#,
            r#"{"amr":[1]}"#,
            r#"{"amr":["otp",["x"]]}"#,
            r#"{"amr":[""]}"#,
            r#"{"amr":["o t p"]}"#,
            r#"{"amr":{"otp":true}}"#,
            long.as_str(),
            many.as_str(),
        ] {
            assert_eq!(amr(bad), RawAmr::Invalid, "{bad}");
        }
    }

    #[test]
    fn spec8_cnf_is_exactly_one_jkt_string() {
        let cnf = |json: &str| parse_claims(json.as_bytes(), "I").unwrap().cnf;
        assert_eq!(cnf("{}"), RawCnf::Absent);
        assert_eq!(cnf(r#"{"cnf":{"jkt":"abc"}}"#), RawCnf::Jkt("abc".into()));
        for bad in [
            r#"{"cnf":null}"#,
            r#"{"cnf":"abc"}"#,
            r#"{"cnf":[{"jkt":"abc"}]}"#,
            r#"{"cnf":{}}"#,
            r#"{"cnf":{"jkt":1}}"#,
            r#"{"cnf":{"jkt":"abc","jwk":{}}}"#,
            r#"{"cnf":{"x5t#S256":"abc"}}"#,
        ] {
            assert_eq!(cnf(bad), RawCnf::Invalid, "{bad}");
        }
        assert_eq!(
            parse_claims(br#"{"cnf":{"jkt":"a","jkt":"b"}}"#, "I").unwrap_err(),
            StrictJsonError::DuplicateMember
        );
    }

    #[test]
    fn a_large_object_is_checked_for_duplicates_in_linear_time() {
        let members: Vec<String> = (0..5_000).map(|i| format!("\"m{i}\":{i}")).collect();
        let ok = format!("{{{}}}", members.join(","));
        assert!(parse_claims(ok.as_bytes(), "CART_PURCHASE_V1").is_ok());
        let dup = format!("{{{},\"m4999\":0}}", members.join(","));
        assert_eq!(
            parse_claims(dup.as_bytes(), "CART_PURCHASE_V1").unwrap_err(),
            StrictJsonError::DuplicateMember
        );
    }

    #[test]
    fn strict_json_refuses_non_objects_bombs_and_trailing_bytes() {
        for bad in [
            &b"[1]"[..],
            b"\"a\"",
            b"{} {}",
            b"\xef\xbb\xbf{}",
            b"{\"a\":\"\xff\"}",
            b"{\"a\":1,}",
            b"",
        ] {
            assert_eq!(parse_claims(bad, "I").unwrap_err(), StrictJsonError::Syntax);
            assert_eq!(
                parse_header(bad, "t", FORBIDDEN).unwrap_err(),
                StrictJsonError::Syntax
            );
        }
        let bomb = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            parse_claims(bomb.as_bytes(), "CART_PURCHASE_V1").unwrap_err(),
            StrictJsonError::Syntax
        );
    }

    #[test]
    fn typed_members_record_presence_and_type() {
        let claims = parse_claims(
            br#"{"iss":"w","sub":7,"exp":10,"iat":-1,"nbf":1.0,"aud":["m","n"],"jti":null,
                "ap2_intent":"CART_PURCHASE_V1","ap2_scope":{"currency":"USD","cart_hash":{},"extra":1},
                "other":{"deep":[1,2,{"x":"y"}]}}"#,
            "CART_PURCHASE_V1",
        )
        .unwrap();
        assert_eq!(claims.iss, Field::Present("w".into()));
        assert_eq!(claims.sub, Field::WrongType);
        assert_eq!(claims.exp, Field::Present(10));
        assert_eq!(claims.iat, Field::WrongType);
        assert_eq!(claims.nbf, Field::WrongType);
        assert!(
            matches!(claims.aud, Aud::Array { len: 2, first: Field::Present(ref a) } if a == "m")
        );
        assert_eq!(claims.jti, Field::WrongType);
        assert_eq!(claims.ap2_intent, Field::Present(true));
        let RawScope::Object {
            unknown_member,
            max_amount,
            currency,
            cart_hash,
            allow_agent_id,
        } = claims.ap2_scope
        else {
            panic!("scope")
        };
        assert!(unknown_member);
        assert_eq!(max_amount, Field::Absent);
        assert_eq!(currency, Field::Present("USD".into()));
        assert_eq!(cart_hash, Field::WrongType);
        assert_eq!(allow_agent_id, Field::Absent);
        // Escaped strings are read as what they mean.
        let claims = parse_claims(br#"{"iss":"a\"b\u00e9"}"#, "CART_PURCHASE_V1").unwrap();
        assert_eq!(claims.iss, Field::Present("a\"b\u{e9}".into()));

        let header = parse_header(
            br#"{"alg":"ES256","crit":[],"jku":1,"kid":"k"}"#,
            "t",
            FORBIDDEN,
        )
        .unwrap();
        assert_eq!(header.alg, Field::Present(true));
        assert_eq!(header.typ, Field::Absent);
        assert_eq!(header.kid, Field::Present("k".into()));
        assert_eq!(header.forbidden, 0b101);
    }
}
