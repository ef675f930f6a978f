//! SPEC §8: the agent's proof of possession. Agent keys and their RFC 7638 thumbprints
//! (`jkt`), `ath`, request URLs compared after RFC 3986 normalisation, DPoP proofs (RFC 9449)
//! made and checked, and the rotating nonces of RFC 9449 §8. Pure: the time is a parameter.

use std::fmt;

use aws_lc_rs::hmac;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ids::Jti;
use crate::json::{Field, RawJwk, StrictJsonError, parse_proof_claims, parse_proof_header};
use crate::keys::{EcPublicKey, LocalSigner, Signer};
use crate::mandate::MintError;
use crate::verify::{ReplayKey, VerifyError};

/// The JOSE `typ` of a DPoP proof (RFC 9449 §4.2).
pub const DPOP_TYP: &str = "dpop+jwt";
/// A proof is at most this many bytes (SPEC §8); longer ones are refused unread.
pub const MAX_PROOF_BYTES: usize = 4 * 1024;
/// How old a proof's `iat` may be, by default (`--dpop-max-age-secs`).
pub const DEFAULT_DPOP_MAX_AGE_SECS: i64 = 60;
/// How far in the future a proof's `iat` may be (SPEC §8: `iat <= now + 5`).
pub const DPOP_LEEWAY_SECS: i64 = 5;

/// An agent key's RFC 7638 SHA-256 thumbprint, base64url without padding: 43 characters that
/// decode to 32 bytes. What a bound mandate's `cnf.jkt` holds.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jkt(String);

/// A string that is not a thumbprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a jkt is the base64url (43 characters, no padding) of a SHA-256 digest")]
pub struct JktError;

impl Jkt {
    /// Parses a thumbprint.
    pub fn parse(value: &str) -> Result<Self, JktError> {
        crate::b64::decode_array::<32>(value)
            .map(|_| Self(value.to_owned()))
            .ok_or(JktError)
    }

    /// The thumbprint of `key`.
    pub fn of(key: &EcPublicKey) -> Self {
        let digest = Sha256::digest(key.thumbprint_input().as_bytes());
        Self(crate::b64::encode(digest))
    }

    /// The thumbprint as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Jkt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Jkt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Jkt({:?})", self.0)
    }
}

impl Serialize for Jkt {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Jkt {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&value).map_err(serde::de::Error::custom)
    }
}

/// `ath`: base64url(SHA-256(the token's ASCII bytes)) (RFC 9449 §4.2).
pub fn ath(token: &str) -> String {
    crate::b64::encode(Sha256::digest(token.as_bytes()))
}

/// A request URL as compared: RFC 3986 §6 normalised (scheme and host in lower case, the
/// default port dropped, an empty path as `/`, dot segments removed, percent-escapes in
/// upper case and unreserved characters decoded), without query and fragment (RFC 9449
/// §4.3 check 9). Only `http` and `https` URLs without user information are accepted.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Htu(String);

/// A URL that cannot be an `htu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an absolute http(s) URL without user information")]
pub struct HtuError;

impl Htu {
    /// Normalises `url`.
    pub fn parse(url: &str) -> Result<Self, HtuError> {
        let parsed = url::Url::parse(url).map_err(|_| HtuError)?;
        if !matches!(parsed.scheme(), "http" | "https")
            || !parsed.username().is_empty()
            || parsed.password().is_some()
        {
            return Err(HtuError);
        }
        let host = parsed.host_str().ok_or(HtuError)?;
        let mut out = String::with_capacity(url.len());
        out.push_str(parsed.scheme());
        out.push_str("://");
        out.push_str(host);
        if let Some(port) = parsed.port() {
            out.push(':');
            out.push_str(&port.to_string());
        }
        normalise_escapes(parsed.path(), &mut out);
        Ok(Self(out))
    }

    /// The normalised URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Htu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Htu({:?})", self.0)
    }
}

impl fmt::Display for Htu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// RFC 3986 §6.2.2.1 and §6.2.2.2: hex digits of escapes in upper case, escapes of unreserved
/// characters decoded.
fn normalise_escapes(path: &str, out: &mut String) {
    let bytes = path.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escape = match (b, bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match escape {
            Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                out.push(char::from(c));
                i += 3;
            }
            Some(c) => {
                out.push('%');
                for nibble in [c >> 4, c & 0x0f] {
                    out.push(
                        char::from_digit(u32::from(nibble), 16)
                            .unwrap_or('0')
                            .to_ascii_uppercase(),
                    );
                }
                i += 3;
            }
            None => {
                // `path` is a str and only ASCII escapes are rewritten, so the rest is copied
                // as it stands.
                let next = path
                    .get(i..)
                    .and_then(|rest| rest.chars().next())
                    .unwrap_or('\u{fffd}');
                out.push(next);
                i += next.len_utf8();
            }
        }
    }
}

fn hex(c: u8) -> Option<u8> {
    char::from(c)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// A service's public base URL (`--public-url`): the `htu` of a request is this joined with
/// the request's path. A trailing slash of the base is dropped so that joining cannot double
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl(String);

impl PublicUrl {
    /// Parses and normalises a base URL; it may have a path, but no query or fragment.
    pub fn parse(url: &str) -> Result<Self, HtuError> {
        let parsed = url::Url::parse(url).map_err(|_| HtuError)?;
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(HtuError);
        }
        let htu = Htu::parse(url)?;
        Ok(Self(htu.0.trim_end_matches('/').to_owned()))
    }

    /// The `htu` of a request for `path` (which starts with `/`).
    pub fn htu(&self, path: &str) -> Result<Htu, HtuError> {
        let mut url = String::with_capacity(self.0.len() + path.len());
        url.push_str(&self.0);
        url.push_str(path);
        Htu::parse(&url)
    }

    /// The base, normalised, without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a new proof says.
#[derive(Debug, Clone)]
pub struct ProofRequest<'a> {
    /// The request's method.
    pub htm: &'a str,
    /// The request's URL (query and fragment are left out of the proof).
    pub htu: &'a str,
    /// Issued at, NumericDate.
    pub iat: i64,
    /// The proof's id; a fresh random one when `None`.
    pub jti: Option<&'a Jti>,
    /// The token presented with the request (`ath` is its hash).
    pub token: Option<&'a str>,
    /// The server's nonce, when it asked for one.
    pub nonce: Option<&'a str>,
}

#[derive(Serialize)]
struct ProofClaims<'a> {
    jti: &'a str,
    htm: &'a str,
    htu: &'a str,
    iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ath: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
}

/// Makes a DPoP proof signed by the agent's key: the header `{"alg":"ES256","jwk":{…},
/// "typ":"dpop+jwt"}` (the public key's RFC 7638 members) and the claims of `request`.
pub fn make_proof(key: &LocalSigner, request: &ProofRequest<'_>) -> Result<String, MintError> {
    if request.iat < 0 {
        return Err(MintError::InvalidClaims(
            "iat is a non-negative NumericDate",
        ));
    }
    if request.htm.is_empty() || request.htm.bytes().any(|b| !b.is_ascii_uppercase()) {
        return Err(MintError::InvalidClaims("htm is an upper-case HTTP method"));
    }
    let random;
    let jti = match request.jti {
        Some(jti) => jti,
        None => {
            random = Jti::random().map_err(|_| MintError::InvalidClaims("no randomness"))?;
            &random
        }
    };
    // The URL without query and fragment, as RFC 9449 §4.2 wants it.
    let htu = request.htu.split(['?', '#']).next().unwrap_or(request.htu);
    let claims = ProofClaims {
        jti: jti.as_str(),
        htm: request.htm,
        htu,
        iat: request.iat,
        ath: request.token.map(ath),
        nonce: request.nonce,
    };
    let header = format!(
        r#"{{"alg":"ES256","jwk":{},"typ":"{DPOP_TYP}"}}"#,
        key.public_key().thumbprint_input()
    );
    let payload = serde_json::to_vec(&claims).map_err(|_| MintError::Json)?;
    let mut token = crate::b64::encode(header);
    token.push('.');
    token.push_str(&crate::b64::encode(payload));
    let signature = key.sign_es256(token.as_bytes())?;
    token.push('.');
    token.push_str(&crate::b64::encode(signature));
    Ok(token)
}

/// A proof whose form and signature were checked (RFC 9449 §4.3 checks 2–7): its key is the
/// one that signed it. Its claims are judged against a request by [`DpopProof::check`].
#[derive(Debug, Clone)]
pub struct DpopProof {
    jkt: Jkt,
    jti: Jti,
    htm: String,
    htu: String,
    iat: i64,
    ath: Option<String>,
    nonce: Option<String>,
}

/// What a proof must match: the request it came with and the server's rules.
#[derive(Debug, Clone, Copy)]
pub struct ProofCheck<'a> {
    /// The request's method.
    pub htm: &'a str,
    /// The request's URL, normalised.
    pub htu: &'a Htu,
    /// The `ath` the proof must carry (the hash of the presented token), or `None` when no
    /// token is presented, in which case the proof must carry none.
    pub ath: Option<&'a str>,
    /// How old `iat` may be.
    pub max_age_secs: i64,
    /// The server's nonces, when it requires them.
    pub nonces: Option<&'a DpopNonces>,
}

fn invalid(why: &'static str) -> VerifyError {
    VerifyError::ProofInvalid(why)
}

impl DpopProof {
    /// Checks the proof's form and signature: at most 4 KiB, three unpadded base64url
    /// segments, strict JSON without duplicate members, the header exactly `typ`
    /// `dpop+jwt`, `alg` `ES256` and a public P-256 `jwk` on the curve, the claims `jti`,
    /// `htm`, `htu` and `iat` of the right types, and an ES256 signature by the `jwk`.
    pub fn parse(proof: &str) -> Result<Self, VerifyError> {
        if proof.len() > MAX_PROOF_BYTES {
            return Err(invalid("the proof is longer than 4 KiB"));
        }
        let Some((header_b64, payload_b64, signature_b64)) = crate::b64::three_segments(proof)
        else {
            return Err(invalid("a proof has exactly three segments"));
        };
        let not_b64 = || invalid("a segment is not unpadded base64url");
        let header = crate::b64::decode(header_b64)
            .filter(|h| !h.is_empty())
            .ok_or_else(not_b64)?;
        let payload = crate::b64::decode(payload_b64)
            .filter(|p| !p.is_empty())
            .ok_or_else(not_b64)?;
        let signature = crate::b64::decode_array::<64>(signature_b64)
            .ok_or(invalid("the signature is not 64 bytes of r||s"))?;
        let header = parse_proof_header(&header).map_err(|e| match e {
            StrictJsonError::DuplicateMember => invalid("duplicate member in the header"),
            StrictJsonError::Syntax => invalid("the header is not a JSON object"),
        })?;
        if let Some(member) = header.forbidden {
            return Err(invalid(match member {
                "kid" | "jku" | "x5u" | "x5c" | "x5t" | "x5t#S256" => {
                    "the key must be the header's jwk, not a reference to one"
                }
                "crit" => "crit is not accepted",
                _ => "the header has a member other than typ, alg and jwk",
            }));
        }
        if header.typ != Field::Present(true) {
            return Err(invalid("typ must be dpop+jwt"));
        }
        if header.alg != Field::Present(true) {
            return Err(invalid("alg must be ES256"));
        }
        let key = jwk_key(header.jwk)?;
        let claims = parse_proof_claims(&payload).map_err(|e| match e {
            StrictJsonError::DuplicateMember => invalid("duplicate member in the payload"),
            StrictJsonError::Syntax => invalid("the payload is not a JSON object"),
        })?;
        let text = |field: Field<String>, why: &'static str| match field {
            Field::Present(value) => Ok(value),
            _ => Err(invalid(why)),
        };
        let optional = |field: Field<String>, why: &'static str| match field {
            Field::Absent => Ok(None),
            Field::Present(value) => Ok(Some(value)),
            Field::WrongType => Err(invalid(why)),
        };
        let jti = Jti::parse(&text(claims.jti, "jti is a required string")?)
            .map_err(|_| invalid("jti is 1..=128 chars of [A-Za-z0-9_-]"))?;
        let htm = text(claims.htm, "htm is a required string")?;
        let htu = text(claims.htu, "htu is a required string")?;
        let iat = match claims.iat {
            Field::Present(iat) => i64::try_from(iat).map_err(|_| invalid("iat is too large"))?,
            _ => return Err(invalid("iat is a required non-negative integer")),
        };
        let ath = optional(claims.ath, "ath is a string")?;
        let nonce = optional(claims.nonce, "nonce is a string")?;
        let signing_input = proof
            .as_bytes()
            .get(..header_b64.len() + 1 + payload_b64.len())
            .ok_or_else(not_b64)?;
        let verification = key
            .verification_key()
            .map_err(|_| invalid("the jwk is not a P-256 public key"))?;
        if !verification.verify_es256(signing_input, &signature) {
            return Err(invalid(
                "the signature does not verify with the header's jwk",
            ));
        }
        Ok(Self {
            jkt: Jkt::of(&key),
            jti,
            htm,
            htu,
            iat,
            ath,
            nonce,
        })
    }

    /// Checks the claims against the request (RFC 9449 §4.3 checks 8–12): `htm`, `htu`, the
    /// nonce when required, `now - max_age <= iat <= now + 5`, and `ath`.
    pub fn check(&self, expected: &ProofCheck<'_>, now: i64) -> Result<(), VerifyError> {
        if self.htm != expected.htm {
            return Err(VerifyError::ProofMismatch(
                "htm is not this request's method",
            ));
        }
        match Htu::parse(&self.htu) {
            Ok(htu) if &htu == expected.htu => {}
            _ => return Err(VerifyError::ProofMismatch("htu is not this request's URL")),
        }
        if let Some(nonces) = expected.nonces
            && !self
                .nonce
                .as_deref()
                .is_some_and(|n| nonces.accepts(n, now))
        {
            return Err(VerifyError::UseDpopNonce);
        }
        if self.iat < now.saturating_sub(expected.max_age_secs)
            || self.iat > now.saturating_add(DPOP_LEEWAY_SECS)
        {
            return Err(VerifyError::ProofStale);
        }
        match (expected.ath, self.ath.as_deref()) {
            (Some(want), Some(got)) if want == got => Ok(()),
            (None, None) => Ok(()),
            (Some(_), _) => Err(VerifyError::ProofMismatch(
                "ath is not the hash of the presented mandate",
            )),
            (None, Some(_)) => Err(VerifyError::ProofMismatch(
                "ath is present but no token is presented with this request",
            )),
        }
    }

    /// The thumbprint of the key that signed the proof.
    pub fn jkt(&self) -> &Jkt {
        &self.jkt
    }

    /// The proof's id.
    pub fn jti(&self) -> &Jti {
        &self.jti
    }

    /// The proof's `iat`.
    pub fn iat(&self) -> i64 {
        self.iat
    }

    /// The replay set's key for this proof: `(jkt, jti)`, so two agents' ids never collide
    /// and the key never depends on how `htu` was spelled.
    pub fn replay_key(&self) -> ReplayKey {
        ReplayKey::proof(&self.jkt, &self.jti)
    }

    /// Until when the proof must stay recorded: past this, its `iat` is too old anyway.
    pub fn replay_until(&self, max_age_secs: i64) -> i64 {
        self.iat
            .saturating_add(max_age_secs)
            .saturating_add(DPOP_LEEWAY_SECS)
    }
}

fn jwk_key(jwk: RawJwk) -> Result<EcPublicKey, VerifyError> {
    let RawJwk::Object {
        kty,
        crv,
        x,
        y,
        private,
        other,
    } = jwk
    else {
        return Err(invalid("jwk is a required JSON object"));
    };
    if private {
        return Err(invalid("the jwk has a private member"));
    }
    if other {
        return Err(invalid("the jwk has a member other than kty, crv, x and y"));
    }
    if kty != Field::Present(true) || crv != Field::Present(true) {
        return Err(invalid("the jwk is not an EC P-256 key"));
    }
    let coordinate = |field: Field<String>| match field {
        Field::Present(text) => crate::b64::decode_array::<32>(&text),
        _ => None,
    };
    let (Some(x), Some(y)) = (coordinate(x), coordinate(y)) else {
        return Err(invalid("the jwk's x and y are not 32-byte base64url"));
    };
    EcPublicKey::from_coordinates(x, y).map_err(|_| invalid("the jwk's point is not on P-256"))
}

/// RFC 9449 §8 server nonces without server state: the nonce of period `k` is an HMAC of
/// `k` under a secret, so every instance with the same secret issues and accepts the same
/// nonces. The current and the previous period's nonces are accepted.
pub struct DpopNonces {
    key: hmac::Key,
    period_secs: i64,
}

impl DpopNonces {
    /// Nonces under `secret` (at least 32 bytes), rotating every `period_secs`.
    pub fn new(secret: &[u8], period_secs: i64) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            period_secs: period_secs.max(1),
        }
    }

    /// Nonces under a fresh random secret: right for one process, not for several.
    pub fn random(period_secs: i64) -> Result<Self, crate::keys::KeyError> {
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(secret.as_mut()).map_err(|_| crate::keys::KeyError::Random)?;
        Ok(Self::new(secret.as_ref(), period_secs))
    }

    fn of_period(&self, period: i64) -> String {
        let tag = hmac::sign(&self.key, &period.to_be_bytes());
        crate::b64::encode(tag.as_ref().get(..16).unwrap_or_default())
    }

    /// The nonce to hand out now.
    pub fn current(&self, now: i64) -> String {
        self.of_period(now.div_euclid(self.period_secs))
    }

    /// Whether `nonce` is this period's or the previous one's.
    pub fn accepts(&self, nonce: &str, now: i64) -> bool {
        let period = now.div_euclid(self.period_secs);
        [period, period.saturating_sub(1)]
            .into_iter()
            .any(|p| self.of_period(p) == nonce)
    }
}

impl fmt::Debug for DpopNonces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopNonces")
            .field("period_secs", &self.period_secs)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec8_htu_is_compared_after_rfc3986_normalisation() {
        let want =
            Htu::parse("https://merchant.example/v1/checkout-sessions/cs_1/complete").unwrap();
        for same in [
            "HTTPS://Merchant.EXAMPLE/v1/checkout-sessions/cs_1/complete",
            "https://merchant.example:443/v1/checkout-sessions/cs_1/complete",
            "https://merchant.example/v1/checkout-sessions/cs_1/complete?x=1#f",
            "https://merchant.example/v1/./checkout-sessions/x/../cs_1/complete",
            "https://merchant.example/v1/checkout-sessions/cs%5F1/complete",
        ] {
            assert_eq!(Htu::parse(same).unwrap(), want, "{same}");
        }
        for other in [
            "http://merchant.example/v1/checkout-sessions/cs_1/complete",
            "https://merchant.example:8443/v1/checkout-sessions/cs_1/complete",
            "https://merchant.example/v1/checkout-sessions/cs_1/complete/",
            "https://merchant.example/v1/checkout-sessions/CS_1/complete",
            "https://evil.example/v1/checkout-sessions/cs_1/complete",
        ] {
            assert_ne!(Htu::parse(other).unwrap(), want, "{other}");
        }
        assert_eq!(
            Htu::parse("http://a.example").unwrap().as_str(),
            "http://a.example/"
        );
        assert_eq!(
            Htu::parse("http://a.example/%7euser/%2f%c3%a9")
                .unwrap()
                .as_str(),
            "http://a.example/~user/%2F%C3%A9"
        );
        for bad in [
            "ftp://a.example/",
            "https://user:pw@a.example/",
            "/relative",
            "",
        ] {
            assert!(Htu::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec8_public_url_joins_without_doubling_slashes() {
        for base in [
            "https://Merchant.example",
            "https://merchant.example/",
            "https://merchant.example:443/",
        ] {
            let base = PublicUrl::parse(base).unwrap();
            assert_eq!(
                base.htu("/v1/checkout-sessions").unwrap().as_str(),
                "https://merchant.example/v1/checkout-sessions"
            );
        }
        let prefixed = PublicUrl::parse("https://shop.example/api/").unwrap();
        assert_eq!(
            prefixed.htu("/v1/x").unwrap().as_str(),
            "https://shop.example/api/v1/x"
        );
        assert!(PublicUrl::parse("https://shop.example/?a=1").is_err());
    }

    #[test]
    fn spec8_jkt_is_43_chars_of_base64url() {
        assert!(Jkt::parse("NIgKpWvPrm1Il9vbBsphW59b0QvKIU_dXswvsXK8s9k").is_ok());
        for bad in [
            "",
            "NIgKpWvPrm1Il9vbBsphW59b0QvKIU_dXswvsXK8s9",
            "NIgKpWvPrm1Il9vbBsphW59b0QvKIU_dXswvsXK8s9k=",
            "NIgKpWvPrm1Il9vbBsphW59b0QvKIU/dXswvsXK8s9k",
        ] {
            assert!(Jkt::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec8_nonces_rotate_and_the_previous_one_stays_valid_for_one_period() {
        let nonces = DpopNonces::new(&[7u8; 32], 300);
        let first = nonces.current(1_000);
        assert_eq!(nonces.current(1_100), first, "same period");
        assert!(nonces.accepts(&first, 1_100));
        let second = nonces.current(1_200);
        assert_ne!(second, first);
        assert!(nonces.accepts(&first, 1_200), "the previous period's");
        assert!(!nonces.accepts(&first, 1_500), "two periods on");
        assert!(!nonces.accepts("", 1_000));
        let other = DpopNonces::new(&[8u8; 32], 300);
        assert!(!other.accepts(&first, 1_000), "another secret");
        assert!(!format!("{nonces:?}").contains('7'));
    }
}
