//! P-256 keys: public JWKs checked on the curve, RFC 7638 thumbprints, keys parsed once for
//! verification, and a local signing key.

use std::fmt;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    ParsedPublicKey,
};
use p256::elliptic_curve::sec1::{EncodedPoint, FromEncodedPoint};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::ids::Kid;

/// Why a key is refused or could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The JWK is not a JSON object.
    #[error("a JWK is a JSON object")]
    NotAnObject,
    /// The JWK has a private member (`d`, or RSA's `p`, `q`, `dp`, `dq`, `qi`, `oth`, or `k`).
    #[error("the JWK has the private member {0:?}: only public keys are accepted")]
    PrivateMember(&'static str),
    /// `kty` is not `EC`.
    #[error("kty must be \"EC\"")]
    KeyType,
    /// `crv` is not `P-256`.
    #[error("crv must be \"P-256\"")]
    Curve,
    /// `x` or `y` is missing, not base64url, or not 32 bytes.
    #[error("x and y must be the base64url of 32-byte coordinates")]
    Coordinates,
    /// `(x, y)` is not a point on P-256 (or is the point at infinity).
    #[error("the point (x, y) is not on the P-256 curve")]
    NotOnCurve,
    /// `alg` is present and not `ES256`, or `use` is present and not `sig`.
    #[error("alg must be \"ES256\" and use \"sig\" when present")]
    Usage,
    /// `kid` is present and not a valid kid.
    #[error("kid: {0}")]
    Kid(crate::ids::IdError),
    /// A private key that is not a P-256 PKCS#8 key.
    #[error("the private key is not an unencrypted PKCS#8 P-256 key")]
    PrivateKey,
    /// The operating system's random generator failed.
    #[error("the random generator failed")]
    Random,
}

/// A P-256 public key that has been checked to lie on the curve.
#[derive(Clone, PartialEq, Eq)]
pub struct EcPublicKey {
    x: [u8; 32],
    y: [u8; 32],
}

pub(crate) const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

impl EcPublicKey {
    /// Parses a public JWK (RFC 7517/7518): `kty` `EC`, `crv` `P-256`, 32-byte `x` and `y` on
    /// the curve, no private members. `kid`, `alg` and `use` are checked when present; other
    /// members are ignored. Returns the key and the JWK's `kid`, if any.
    pub fn from_jwk(jwk: &Value) -> Result<(Self, Option<Kid>), KeyError> {
        let map = jwk.as_object().ok_or(KeyError::NotAnObject)?;
        if let Some(member) = PRIVATE_MEMBERS.iter().find(|m| map.contains_key(**m)) {
            return Err(KeyError::PrivateMember(member));
        }
        let text = |name: &str| map.get(name).and_then(Value::as_str);
        if text("kty") != Some("EC") {
            return Err(KeyError::KeyType);
        }
        if text("crv") != Some("P-256") {
            return Err(KeyError::Curve);
        }
        if map.get("alg").is_some_and(|a| a.as_str() != Some("ES256"))
            || map.get("use").is_some_and(|u| u.as_str() != Some("sig"))
        {
            return Err(KeyError::Usage);
        }
        let coordinate = |name: &str| {
            text(name)
                .and_then(crate::b64::decode_array::<32>)
                .ok_or(KeyError::Coordinates)
        };
        let key = Self::from_coordinates(coordinate("x")?, coordinate("y")?)?;
        let kid = match map.get("kid") {
            None => None,
            Some(kid) => Some(Kid::parse(kid.as_str().unwrap_or_default()).map_err(KeyError::Kid)?),
        };
        Ok((key, kid))
    }

    /// A key from its affine coordinates, refused unless the point is on P-256.
    pub fn from_coordinates(x: [u8; 32], y: [u8; 32]) -> Result<Self, KeyError> {
        let point =
            EncodedPoint::<p256::NistP256>::from_affine_coordinates(&x.into(), &y.into(), false);
        Option::<p256::PublicKey>::from(p256::PublicKey::from_encoded_point(&point))
            .ok_or(KeyError::NotOnCurve)?;
        Ok(Self { x, y })
    }

    /// A key from its SEC1 uncompressed form, `0x04 || x || y`.
    pub fn from_sec1_uncompressed(bytes: &[u8]) -> Result<Self, KeyError> {
        match bytes {
            [0x04, rest @ ..] if rest.len() == 64 => {
                let (x, y) = rest.split_at(32);
                Self::from_coordinates(
                    x.try_into().map_err(|_| KeyError::Coordinates)?,
                    y.try_into().map_err(|_| KeyError::Coordinates)?,
                )
            }
            _ => Err(KeyError::Coordinates),
        }
    }

    /// The SEC1 uncompressed form, `0x04 || x || y`.
    pub fn to_sec1_uncompressed(&self) -> [u8; 65] {
        let mut out = [0u8; 65];
        out[0] = 0x04;
        out[1..33].copy_from_slice(&self.x);
        out[33..].copy_from_slice(&self.y);
        out
    }

    /// Verifies an ECDSA P-256 SHA-256 signature in ASN.1 DER form (WebAuthn's, not JOSE's)
    /// over `message`.
    pub fn verify_es256_der(&self, message: &[u8], signature: &[u8]) -> bool {
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
            self.to_sec1_uncompressed(),
        )
        .verify(message, signature)
        .is_ok()
    }

    /// The RFC 7638 thumbprint input: the required members in lexicographic order.
    pub fn thumbprint_input(&self) -> String {
        format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            crate::b64::encode(self.x),
            crate::b64::encode(self.y)
        )
    }

    /// The RFC 7638 SHA-256 thumbprint, base64url: the default `kid`.
    pub fn thumbprint(&self) -> Kid {
        let digest = Sha256::digest(self.thumbprint_input().as_bytes());
        Kid::from_digest(&digest.into())
    }

    /// The public JWK, with `kid`, `alg` `ES256` and `use` `sig`.
    pub fn to_jwk(&self, kid: &Kid) -> Value {
        let mut map = Map::new();
        map.insert("kty".into(), "EC".into());
        map.insert("crv".into(), "P-256".into());
        map.insert("x".into(), crate::b64::encode(self.x).into());
        map.insert("y".into(), crate::b64::encode(self.y).into());
        map.insert("kid".into(), kid.as_str().into());
        map.insert("alg".into(), "ES256".into());
        map.insert("use".into(), "sig".into());
        Value::Object(map)
    }

    /// Parses the key for ES256 verification. Do this once per key and keep the result:
    /// parsing the point costs as much as a good part of a verification.
    pub fn verification_key(&self) -> Result<VerificationKey, KeyError> {
        let mut sec1 = [0u8; 65];
        let (tag, rest) = sec1.split_at_mut(1);
        let (x, y) = rest.split_at_mut(32);
        tag.copy_from_slice(&[0x04]);
        x.copy_from_slice(&self.x);
        y.copy_from_slice(&self.y);
        ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, sec1)
            .map(VerificationKey)
            .map_err(|_| KeyError::NotOnCurve)
    }
}

impl fmt::Debug for EcPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EcPublicKey({})", self.thumbprint())
    }
}

/// A public key parsed once, ready for ES256 verification of the raw `r||s` form.
#[derive(Clone)]
pub struct VerificationKey(ParsedPublicKey);

impl VerificationKey {
    /// Verifies an ES256 signature: 64 bytes `r||s` over `message`. aws-lc refuses r or s
    /// outside 1..n−1 (so r = s = 0, CVE-2022-21449, fails) and any other length.
    pub fn verify_es256(&self, message: &[u8], signature: &[u8]) -> bool {
        signature.len() == 64 && self.0.verify_sig(message, signature).is_ok()
    }
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VerificationKey(ES256)")
    }
}

/// Produces ES256 signatures for mandates. The wallet holds one per user; a hardware or
/// remote signer is another implementation.
pub trait Signer: Send + Sync {
    /// The `kid` the signature verifies under.
    fn kid(&self) -> &Kid;
    /// Signs `message` with ES256, returning the 64-byte `r||s` form.
    fn sign_es256(&self, message: &[u8]) -> Result<[u8; 64], SignError>;
}

/// A signer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signing failed: {0}")]
pub struct SignError(pub String);

/// A P-256 private key held in memory, parsed once. Its `Debug` prints only the kid.
pub struct LocalSigner {
    kid: Kid,
    public: EcPublicKey,
    key_pair: EcdsaKeyPair,
}

impl LocalSigner {
    /// A fresh key from the operating system's CSPRNG; its kid is the RFC 7638 thumbprint.
    pub fn generate() -> Result<Self, KeyError> {
        let key_pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| KeyError::Random)?;
        Self::from_key_pair(key_pair, None)
    }

    /// Loads an unencrypted PKCS#8 DER key. `kid` defaults to the thumbprint.
    pub fn from_pkcs8_der(der: &[u8], kid: Option<Kid>) -> Result<Self, KeyError> {
        let key_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|_| KeyError::PrivateKey)?;
        Self::from_key_pair(key_pair, kid)
    }

    /// Loads an unencrypted PKCS#8 PEM key (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(pem: &str, kid: Option<Kid>) -> Result<Self, KeyError> {
        let secret = p256::SecretKey::from_pkcs8_pem(pem).map_err(|_| KeyError::PrivateKey)?;
        let der = secret.to_pkcs8_der().map_err(|_| KeyError::PrivateKey)?;
        Self::from_pkcs8_der(der.as_bytes(), kid)
    }

    fn from_key_pair(key_pair: EcdsaKeyPair, kid: Option<Kid>) -> Result<Self, KeyError> {
        let public = EcPublicKey::from_sec1_uncompressed(key_pair.public_key().as_ref())?;
        let kid = kid.unwrap_or_else(|| public.thumbprint());
        Ok(Self {
            kid,
            public,
            key_pair,
        })
    }

    /// The private key as PKCS#8 DER, in memory that is wiped when dropped.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let doc = self
            .key_pair
            .to_pkcs8v1()
            .map_err(|_| KeyError::PrivateKey)?;
        Ok(Zeroizing::new(doc.as_ref().to_vec()))
    }

    /// The private key as PKCS#8 PEM, in memory that is wiped when dropped.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        let der = self.to_pkcs8_der()?;
        let secret = p256::SecretKey::from_pkcs8_der(&der).map_err(|_| KeyError::PrivateKey)?;
        secret
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| KeyError::PrivateKey)
    }

    /// The public half.
    pub fn public_key(&self) -> &EcPublicKey {
        &self.public
    }
}

impl Signer for LocalSigner {
    fn kid(&self) -> &Kid {
        &self.kid
    }

    fn sign_es256(&self, message: &[u8]) -> Result<[u8; 64], SignError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signature = self
            .key_pair
            .sign(&rng, message)
            .map_err(|_| SignError("ECDSA P-256 signing failed".into()))?;
        signature
            .as_ref()
            .try_into()
            .map_err(|_| SignError("ECDSA P-256 signature is not 64 bytes".into()))
    }
}

impl fmt::Debug for LocalSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vector() -> Value {
        serde_json::from_str(include_str!("../tests/vectors/jwt_vector.json")).unwrap()
    }

    #[test]
    fn spec5_kid_defaults_to_the_rfc7638_thumbprint() {
        let v = vector();
        let (key, kid) = EcPublicKey::from_jwk(&v["jwk"]).unwrap();
        assert_eq!(
            key.thumbprint_input(),
            v["thumbprint_input"].as_str().unwrap()
        );
        assert_eq!(key.thumbprint().as_str(), v["kid"].as_str().unwrap());
        assert_eq!(kid.unwrap().as_str(), v["kid"].as_str().unwrap());
    }

    #[test]
    fn vector_private_key_matches_its_jwk() {
        let v = vector();
        let signer =
            LocalSigner::from_pkcs8_pem(v["private_key_pem"].as_str().unwrap(), None).unwrap();
        assert_eq!(signer.kid().as_str(), v["kid"].as_str().unwrap());
        let (key, _) = EcPublicKey::from_jwk(&v["jwk"]).unwrap();
        assert_eq!(signer.public_key(), &key);
        assert!(!format!("{signer:?}").contains("PRIVATE"));
    }

    #[test]
    fn spec5_jwk_with_private_members_is_refused() {
        let mut jwk = vector()["jwk"].clone();
        jwk["d"] = json!("zs0tk9lYDvVa8K8wuIhfee6YmgwhqcTttsenZh4AUAQ");
        assert_eq!(
            EcPublicKey::from_jwk(&jwk),
            Err(KeyError::PrivateMember("d"))
        );
    }

    #[test]
    fn spec5_jwk_of_another_curve_or_type_is_refused() {
        let mut jwk = vector()["jwk"].clone();
        jwk["crv"] = json!("P-384");
        assert_eq!(EcPublicKey::from_jwk(&jwk), Err(KeyError::Curve));
        jwk["crv"] = json!("secp256k1");
        assert_eq!(EcPublicKey::from_jwk(&jwk), Err(KeyError::Curve));
        let mut jwk = vector()["jwk"].clone();
        jwk["kty"] = json!("RSA");
        assert_eq!(EcPublicKey::from_jwk(&jwk), Err(KeyError::KeyType));
        let mut jwk = vector()["jwk"].clone();
        jwk["alg"] = json!("HS256");
        assert_eq!(EcPublicKey::from_jwk(&jwk), Err(KeyError::Usage));
    }

    #[test]
    fn spec5_jwk_point_not_on_p256_is_refused() {
        let mut jwk = vector()["jwk"].clone();
        // y + 1 is not on the curve for this x.
        jwk["y"] = json!("IiUt7NK4021BNjnew7XcHR5eoGeUMH7x8bHvBEB6yP0");
        assert_eq!(EcPublicKey::from_jwk(&jwk), Err(KeyError::NotOnCurve));
        let zero = crate::b64::encode([0u8; 32]);
        jwk["x"] = json!(zero);
        jwk["y"] = json!(zero);
        assert_eq!(EcPublicKey::from_jwk(&jwk), Err(KeyError::NotOnCurve));
    }

    #[test]
    fn spec5_jwk_coordinates_are_32_bytes() {
        let mut jwk = vector()["jwk"].clone();
        jwk["x"] = json!(crate::b64::encode([1u8; 31]));
        assert_eq!(EcPublicKey::from_jwk(&jwk), Err(KeyError::Coordinates));
        jwk["x"] = json!(crate::b64::encode([1u8; 33]));
        assert_eq!(EcPublicKey::from_jwk(&jwk), Err(KeyError::Coordinates));
        jwk["x"] = json!("ACEOSUmjBkk0-d7wI3uI70QauXKKl9yRbMgRladPbAA=");
        assert_eq!(EcPublicKey::from_jwk(&jwk), Err(KeyError::Coordinates));
        jwk["x"] = json!(1);
        assert_eq!(EcPublicKey::from_jwk(&jwk), Err(KeyError::Coordinates));
    }

    #[test]
    fn generated_key_signs_and_round_trips_through_pem() {
        let signer = LocalSigner::generate().unwrap();
        let pem = signer.to_pkcs8_pem().unwrap();
        let again = LocalSigner::from_pkcs8_pem(&pem, None).unwrap();
        assert_eq!(signer.kid(), again.kid());
        let sig = again.sign_es256(b"message").unwrap();
        let key = signer.public_key().verification_key().unwrap();
        assert!(key.verify_es256(b"message", &sig));
        assert!(!key.verify_es256(b"messagf", &sig));
        assert!(LocalSigner::from_pkcs8_pem("not a key", None).is_err());
    }
}
