//! Identifiers parsed once at the edge: key ids, token ids, agent and merchant ids.

use std::fmt;

/// Why a string is not a valid identifier of its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} must be 1..={max} characters of {charset}")]
pub struct IdError {
    kind: &'static str,
    max: usize,
    charset: &'static str,
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal, $charset:literal, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The longest accepted value, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Parses `value`, refusing anything outside the length and character set.
            pub fn parse(value: &str) -> Result<Self, IdError> {
                Self::check(value)?;
                Ok(Self(value.to_owned()))
            }

            /// Checks `value` without allocating.
            pub fn check(value: &str) -> Result<(), IdError> {
                let allowed: fn(u8) -> bool = $allowed;
                if value.is_empty() || value.len() > $max || !value.bytes().all(allowed) {
                    return Err(IdError {
                        kind: $kind,
                        max: $max,
                        charset: $charset,
                    });
                }
                Ok(())
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::parse(&value).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn kid_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

fn jti_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')
}

identifier!(
    /// A key id (`kid`): SPEC §4 step 2, 1..=128 characters of `[A-Za-z0-9._:-]`.
    Kid, "a kid", 128, "[A-Za-z0-9._:-]", kid_char
);

identifier!(
    /// A mandate's token id (`jti`): SPEC §2, 1..=128 characters of `[A-Za-z0-9_-]`.
    Jti, "a jti", 128, "[A-Za-z0-9_-]", jti_char
);

identifier!(
    /// The agent allowed to present a mandate (`allow_agent_id`, the `AP2-Agent-Id` header).
    /// The SPEC leaves its form open; we use the kid alphabet so it is safe in HTTP headers,
    /// logs and Redis keys (docs/PROTOCOL.md).
    AgentId, "an agent id", 128, "[A-Za-z0-9._:-]", kid_char
);

identifier!(
    /// A merchant id: the cart's `merchant_id` and the mandate's `aud`. Same alphabet as
    /// [`AgentId`], for the same reasons.
    MerchantId, "a merchant id", 128, "[A-Za-z0-9._:-]", kid_char
);

impl Kid {
    /// The base64url of a 32-byte digest: 43 characters of the base64url alphabet, always a
    /// valid kid (used for RFC 7638 thumbprints).
    pub(crate) fn from_digest(digest: &[u8; 32]) -> Self {
        Self(crate::b64::encode(digest))
    }
}

impl Jti {
    /// A fresh token id from 128 bits of the operating system's CSPRNG, base64url (22 chars).
    pub fn random() -> Result<Self, crate::keys::KeyError> {
        let mut bytes = [0u8; 16];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| crate::keys::KeyError::Random)?;
        Ok(Self(crate::b64::encode(bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec4_kid_is_1_to_128_chars_of_the_kid_alphabet() {
        assert!(Kid::parse("9CiKt3XMY0GKRNboTsk5xKPQfZ9mZ346hZHicCQ6Hu4").is_ok());
        assert!(Kid::parse("user-1.key:2_a").is_ok());
        assert!(Kid::parse(&"k".repeat(128)).is_ok());
        for bad in ["", "../etc/passwd", "a/b", "a b", "a\0b", "kid'--", "ké"] {
            assert!(Kid::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Kid::parse(&"k".repeat(129)).is_err());
    }

    #[test]
    fn spec2_jti_is_1_to_128_chars_of_base64url_alphabet() {
        assert!(Jti::parse("4s3cKq8d1xY2b7hT9mPzWQ").is_ok());
        for bad in ["", "a.b", "a:b", "a+b", "a/b", "a=", "a b"] {
            assert!(Jti::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Jti::parse(&"j".repeat(128)).is_ok());
        assert!(Jti::parse(&"j".repeat(129)).is_err());
    }

    #[test]
    fn spec2_wallet_jti_has_128_random_bits() {
        let a = Jti::random().unwrap();
        let b = Jti::random().unwrap();
        assert_eq!(a.as_str().len(), 22);
        assert_ne!(a, b);
        assert!(Jti::parse(a.as_str()).is_ok());
    }
}
