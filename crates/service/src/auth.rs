//! Bearer tokens configured as `NAME=TOKEN` pairs, looked up in constant time.

use std::fmt;
use std::str::FromStr;

use axum::http::{HeaderMap, header};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// One `NAME=TOKEN` pair from a flag or an environment variable. `Debug` hides the token.
#[derive(Clone)]
pub struct NamedToken {
    /// Whose token it is (an issuer URL, an agent id).
    pub name: String,
    /// The secret.
    pub token: SecretString,
}

impl FromStr for NamedToken {
    type Err = String;

    /// Splits at the last `=` before the token's trailing padding, so a name may itself
    /// contain `=` (URLs with queries) and a token may end in `=` as base64 does (RFC 6750's
    /// `b64token`: `=` only at its end); both must be non-empty, and a token is more than
    /// padding.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unpadded = s.trim_end_matches('=');
        match unpadded.rsplit_once('=') {
            Some((name, _)) if !name.is_empty() && unpadded.len() > name.len() + 1 => Ok(Self {
                name: name.to_owned(),
                token: SecretString::from(s[name.len() + 1..].to_owned()),
            }),
            _ => Err("expected NAME=TOKEN with both parts non-empty".to_owned()),
        }
    }
}

impl fmt::Debug for NamedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=<redacted>", self.name)
    }
}

/// The configured tokens. A lookup compares the presented token's SHA-256 with every
/// configured one in constant time, so neither the position nor a prefix of a match leaks.
#[derive(Clone, Default)]
pub struct TokenSet {
    entries: Vec<(String, [u8; 32])>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenSet {
    /// The set of `pairs`. Two names with one token would make the token ambiguous: refused.
    pub fn new(pairs: &[NamedToken]) -> Result<Self, String> {
        let mut entries: Vec<(String, [u8; 32])> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            let d = digest(pair.token.expose_secret());
            if entries.iter().any(|(_, other)| bool::from(other.ct_eq(&d))) {
                return Err(format!("{} shares its token with another name", pair.name));
            }
            entries.push((pair.name.clone(), d));
        }
        Ok(Self { entries })
    }

    /// The name whose token `presented` is.
    pub fn name_of(&self, presented: &str) -> Option<&str> {
        let d = digest(presented);
        let mut found = None;
        for (name, expected) in &self.entries {
            if bool::from(expected.ct_eq(&d)) {
                found = Some(name.as_str());
            }
        }
        found
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(name, _)| name))
            .finish()
    }
}

/// The name whose token the request's `Authorization: Bearer <token>` is, or the 401 to
/// answer: `what` names the token the caller must send ("issuer token").
pub fn authenticate<'a>(
    headers: &HeaderMap,
    tokens: &'a TokenSet,
    what: &str,
) -> Result<&'a str, crate::Problem> {
    use crate::Problem;
    match bearer_token(headers) {
        Ok(token) => tokens
            .name_of(token)
            .ok_or_else(|| Problem::unauthorized(format!("the {what} is not valid"), true)),
        Err(BearerError::Missing) => Err(Problem::unauthorized(
            format!("Authorization: Bearer <{what}> is required"),
            false,
        )),
        Err(BearerError::Malformed) => Err(Problem::unauthorized(
            "the Authorization header is not Bearer <token>",
            true,
        )),
    }
}

/// Why a request carries no usable bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    /// No `Authorization` header.
    Missing,
    /// A header that is not `Bearer <token>`.
    Malformed,
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive, RFC 6750 §2.1).
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, BearerError> {
    match authorization(headers)? {
        (Scheme::Bearer, token) => Ok(token),
        (Scheme::Dpop, _) => Err(BearerError::Malformed),
    }
}

/// The schemes a token may come under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// RFC 6750.
    Bearer,
    /// RFC 9449 §7.1: a token bound to the key of the request's DPoP proof.
    Dpop,
}

/// The scheme and token of `Authorization: Bearer <token>` or `Authorization: DPoP <token>`
/// (scheme case-insensitive). One header only: two are ambiguous and refused.
pub fn authorization(headers: &HeaderMap) -> Result<(Scheme, &str), BearerError> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let value = all.next().ok_or(BearerError::Missing)?;
    if all.next().is_some() {
        return Err(BearerError::Malformed);
    }
    let value = value.to_str().map_err(|_| BearerError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(BearerError::Malformed)?;
    let token = token.trim_start_matches(' ');
    if token.is_empty() || token.contains(' ') {
        return Err(BearerError::Malformed);
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        Ok((Scheme::Bearer, token))
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Ok((Scheme::Dpop, token))
    } else {
        Err(BearerError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_tokens_parse_and_hide_the_secret() {
        let t: NamedToken = "https://wallet.example=s3cret".parse().unwrap();
        assert_eq!(t.name, "https://wallet.example");
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!("novalue=".parse::<NamedToken>().is_err());
        assert!("=token".parse::<NamedToken>().is_err());
        assert!("plain".parse::<NamedToken>().is_err());
        assert!("name==".parse::<NamedToken>().is_err());
    }

    #[test]
    fn named_tokens_keep_base64_padding_and_names_with_equals() {
        let token = |s: &str| {
            let t: NamedToken = s.parse().unwrap();
            (t.name, t.token.expose_secret().to_owned())
        };
        // `openssl rand -base64 32`: 44 characters, one `=` of padding.
        let b64 = "0S9xrqXH4Q+8bJ/mJ7hBq0V5l1m2K3n4o5p6q7r8s9Q=";
        assert_eq!(
            token(&format!("agent-7={b64}")),
            ("agent-7".to_owned(), b64.to_owned())
        );
        assert_eq!(token("a=b=="), ("a".to_owned(), "b==".to_owned()));
        assert_eq!(
            token("https://w.example/?v=1=tok="),
            ("https://w.example/?v=1".to_owned(), "tok=".to_owned())
        );
    }

    #[test]
    fn token_set_finds_the_name_and_refuses_shared_tokens() {
        let pairs: Vec<NamedToken> = ["a=one", "b=two"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let set = TokenSet::new(&pairs).unwrap();
        assert_eq!(set.name_of("two"), Some("b"));
        assert_eq!(set.name_of("tw"), None);
        assert_eq!(set.name_of(""), None);
        let shared: Vec<NamedToken> = ["a=one", "b=one"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert!(TokenSet::new(&shared).is_err());
    }

    #[test]
    fn bearer_header_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), Err(BearerError::Missing));
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&h), Ok("abc"));
        h.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&h), Ok("abc"));
        for bad in [
            "Basic abc",
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "abc",
            "DPoP abc",
        ] {
            h.insert(header::AUTHORIZATION, bad.parse().unwrap());
            assert_eq!(bearer_token(&h), Err(BearerError::Malformed), "{bad}");
        }
    }

    #[test]
    fn spec8_authorization_takes_bearer_or_dpop_and_one_header_only() {
        let mut h = HeaderMap::new();
        assert_eq!(authorization(&h), Err(BearerError::Missing));
        h.insert(header::AUTHORIZATION, "DPoP abc".parse().unwrap());
        assert_eq!(authorization(&h), Ok((Scheme::Dpop, "abc")));
        h.insert(header::AUTHORIZATION, "dpop abc".parse().unwrap());
        assert_eq!(authorization(&h), Ok((Scheme::Dpop, "abc")));
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(authorization(&h), Ok((Scheme::Bearer, "abc")));
        h.append(header::AUTHORIZATION, "DPoP abc".parse().unwrap());
        assert_eq!(authorization(&h), Err(BearerError::Malformed));
    }
}
