//! Approval evidence (SPEC §12): what a wallet keeps when a user approves a request with a
//! passkey, so that anyone can check later, offline, that the user's authenticator signed over
//! that exact request: the cart (by its hash), the ceiling, the merchant, the agent and the
//! deadline.
//!
//! The WebAuthn challenge is not random bytes the wallet remembers: it is
//! [`approval_challenge`] of the request's terms and a random nonce, so the signature commits
//! to the terms. [`verify_evidence`] recomputes it from the terms in the evidence, and checks
//! the authenticator's ECDSA signature over `authenticatorData || SHA-256(clientDataJSON)`
//! (WebAuthn §7.2) with the credential's public key.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cart::Cart;
use crate::keys::EcPublicKey;

/// The domain separator of [`approval_challenge`]'s input.
pub const CHALLENGE_DOMAIN: &str = "AP2-approval-v1";

/// The terms of a mandate request that a passkey approval signs over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalTerms {
    /// The wallet's request id.
    pub request_id: String,
    /// `ap2_scope.cart_hash`.
    pub cart_hash: String,
    /// `ap2_scope.max_amount`, the decimal string.
    pub max_amount: String,
    /// `ap2_scope.currency`.
    pub currency: String,
    /// The merchant (`aud`).
    pub merchant_id: String,
    /// The one agent allowed (`allow_agent_id`).
    pub agent_id: String,
    /// The approval deadline, Unix seconds.
    pub expires_at: i64,
}

/// Why [`approval_challenge`] refused terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the approval terms hold a line break or are empty: {0}")]
pub struct TermsError(pub &'static str);

/// The challenge for `terms` and `nonce`: SHA-256 of [`CHALLENGE_DOMAIN`] and each term on a
/// line of its own, `name=value`, in a fixed order, then the nonce. No term may hold a line
/// break, so the input is unambiguous.
pub fn approval_challenge(terms: &ApprovalTerms, nonce: &str) -> Result<[u8; 32], TermsError> {
    let expires_at = terms.expires_at.to_string();
    let lines: [(&'static str, &str); 8] = [
        ("request_id", &terms.request_id),
        ("cart_hash", &terms.cart_hash),
        ("max_amount", &terms.max_amount),
        ("currency", &terms.currency),
        ("merchant_id", &terms.merchant_id),
        ("agent_id", &terms.agent_id),
        ("expires_at", &expires_at),
        ("nonce", nonce),
    ];
    let mut hash = Sha256::new();
    hash.update(CHALLENGE_DOMAIN.as_bytes());
    hash.update(b"\n");
    for (name, value) in lines {
        if value.is_empty() || value.contains(['\n', '\r']) {
            return Err(TermsError(name));
        }
        hash.update(name.as_bytes());
        hash.update(b"=");
        hash.update(value.as_bytes());
        hash.update(b"\n");
    }
    Ok(hash.finalize().into())
}

/// What the authenticator returned, each member base64url without padding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assertion {
    /// `authenticatorData`.
    pub authenticator_data: String,
    /// `clientDataJSON`.
    pub client_data_json: String,
    /// The ECDSA signature, ASN.1 DER.
    pub signature: String,
}

/// The credential that signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceCredential {
    /// The credential id, base64url.
    pub id: String,
    /// Its public key, a P-256 JWK.
    pub public_key: Value,
}

/// What `GET /v1/mandate-requests/{id}/evidence` returns for a passkey approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// `1`.
    pub version: u32,
    /// The terms the challenge commits to.
    pub terms: ApprovalTerms,
    /// The cart itself, so its hash can be checked against `terms.cart_hash`.
    pub cart: Value,
    /// The random part of the challenge, base64url.
    pub nonce: String,
    /// The challenge, base64url: [`approval_challenge`] of `terms` and `nonce`.
    pub challenge: String,
    /// The WebAuthn relying party id (the host of the wallet's public URL).
    pub rp_id: String,
    /// The origin the browser reported, which the wallet accepted.
    pub origin: String,
    /// The credential.
    pub credential: EvidenceCredential,
    /// The assertion.
    pub assertion: Assertion,
    /// The mandate's `amr`.
    pub amr: Vec<String>,
    /// When the wallet accepted it, Unix seconds.
    pub approved_at: i64,
}

/// What [`verify_evidence`] established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEvidence {
    /// The authenticator saw the user (UP flag).
    pub user_present: bool,
    /// The authenticator verified the user (UV flag).
    pub user_verified: bool,
    /// The authenticator's signature counter.
    pub sign_count: u32,
}

/// Why evidence does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// An unknown version.
    #[error("evidence version {0} is not 1")]
    Version(u32),
    /// A member is not valid base64url, or the terms cannot be hashed.
    #[error("the evidence is malformed: {0}")]
    Malformed(&'static str),
    /// The cart does not hash to `terms.cart_hash`.
    #[error("the cart does not hash to the terms' cart_hash")]
    CartHash,
    /// `challenge` is not the challenge of `terms` and `nonce`.
    #[error("the challenge is not derived from the terms")]
    Challenge,
    /// `clientDataJSON` is not a `webauthn.get` for this challenge and origin.
    #[error("the client data does not match: {0}")]
    ClientData(&'static str),
    /// The authenticator data is not for `rp_id`, or the user was not present.
    #[error("the authenticator data does not match: {0}")]
    AuthenticatorData(&'static str),
    /// `amr` does not say what the flags say.
    #[error("amr does not match the authenticator's flags")]
    Amr,
    /// The signature does not verify with the credential's key.
    #[error("the signature does not verify with the credential's public key")]
    Signature,
}

fn b64(text: &str, what: &'static str) -> Result<Vec<u8>, EvidenceError> {
    crate::b64::decode(text).ok_or(EvidenceError::Malformed(what))
}

/// The members of `clientDataJSON` that are checked.
#[derive(Deserialize)]
struct ClientData {
    #[serde(rename = "type")]
    type_: String,
    challenge: String,
    origin: String,
    #[serde(rename = "crossOrigin", default)]
    cross_origin: bool,
}

/// Checks `evidence` offline: the cart against its hash, the challenge against the terms,
/// the client data, the authenticator data, `amr`, and the signature.
pub fn verify_evidence(evidence: &Evidence) -> Result<VerifiedEvidence, EvidenceError> {
    if evidence.version != 1 {
        return Err(EvidenceError::Version(evidence.version));
    }
    let cart = serde_json::to_vec(&evidence.cart)
        .ok()
        .and_then(|json| Cart::from_json(&json).ok())
        .ok_or(EvidenceError::Malformed("cart"))?;
    if cart.hash().to_string() != evidence.terms.cart_hash {
        return Err(EvidenceError::CartHash);
    }
    let challenge = approval_challenge(&evidence.terms, &evidence.nonce)
        .map_err(|e| EvidenceError::Malformed(e.0))?;
    if b64(&evidence.challenge, "challenge")? != challenge {
        return Err(EvidenceError::Challenge);
    }
    let client_json = b64(&evidence.assertion.client_data_json, "client_data_json")?;
    let client: ClientData = serde_json::from_slice(&client_json)
        .map_err(|_| EvidenceError::ClientData("not the JSON of a client data"))?;
    if client.type_ != "webauthn.get" {
        return Err(EvidenceError::ClientData("type is not webauthn.get"));
    }
    if b64(&client.challenge, "clientData.challenge")? != challenge {
        return Err(EvidenceError::ClientData("another challenge"));
    }
    if client.origin != evidence.origin || client.cross_origin {
        return Err(EvidenceError::ClientData("another origin"));
    }
    let auth_data = b64(&evidence.assertion.authenticator_data, "authenticator_data")?;
    // rpIdHash (32 bytes), flags (1), signCount (4, big-endian), then what may follow.
    let Some((rp_id_hash, rest)) = auth_data.split_first_chunk::<32>() else {
        return Err(EvidenceError::AuthenticatorData("shorter than 37 bytes"));
    };
    let Some((&flags, rest)) = rest.split_first() else {
        return Err(EvidenceError::AuthenticatorData("shorter than 37 bytes"));
    };
    let Some((count, _)) = rest.split_first_chunk::<4>() else {
        return Err(EvidenceError::AuthenticatorData("shorter than 37 bytes"));
    };
    if rp_id_hash[..] != Sha256::digest(evidence.rp_id.as_bytes())[..] {
        return Err(EvidenceError::AuthenticatorData("another relying party"));
    }
    let (user_present, user_verified) = (flags & 0x01 != 0, flags & 0x04 != 0);
    if !user_present {
        return Err(EvidenceError::AuthenticatorData("the user was not present"));
    }
    let sign_count = u32::from_be_bytes(*count);
    if amr_for(user_verified) != evidence.amr {
        return Err(EvidenceError::Amr);
    }
    let (key, _) = EcPublicKey::from_jwk(&evidence.credential.public_key)
        .map_err(|_| EvidenceError::Malformed("credential.public_key"))?;
    let mut signed = auth_data;
    signed.extend_from_slice(&Sha256::digest(&client_json));
    let signature = b64(&evidence.assertion.signature, "signature")?;
    if !key.verify_es256_der(&signed, &signature) {
        return Err(EvidenceError::Signature);
    }
    Ok(VerifiedEvidence {
        user_present,
        user_verified,
        sign_count,
    })
}

/// The `amr` of a passkey approval (RFC 8176): `hwk` and `user`, and `mfa` when the
/// authenticator verified the user.
pub fn amr_for(user_verified: bool) -> Vec<String> {
    let mut amr = vec!["hwk".to_owned(), "user".to_owned()];
    if user_verified {
        amr.push("mfa".to_owned());
    }
    amr
}

/// The `amr` of an approval by one-time code.
pub fn amr_otp() -> Vec<String> {
    vec!["otp".to_owned()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

    fn terms() -> ApprovalTerms {
        ApprovalTerms {
            request_id: "req1".into(),
            cart_hash: "hash".into(),
            max_amount: "89.99".into(),
            currency: "USD".into(),
            merchant_id: "acme-corp".into(),
            agent_id: "agent-7".into(),
            expires_at: 1_800_000_000,
        }
    }

    /// Evidence signed by a software key standing in for an authenticator.
    fn signed(flags: u8, amr: Vec<String>) -> Evidence {
        let cart = serde_json::json!({"merchant_id":"acme-corp","currency":"USD","total":8999,
            "line_items":[{"id":"shoe-001","title":"Trail Runner","quantity":1,"unit_price":8999}]});
        let mut terms = terms();
        terms.cart_hash = Cart::from_json(cart.to_string().as_bytes())
            .expect("cart")
            .hash()
            .to_string();
        let nonce = "bm9uY2U";
        let challenge = crate::b64::encode(approval_challenge(&terms, nonce).expect("terms"));
        let origin = "http://localhost:8081";
        let client = format!(
            r#"{{"type":"webauthn.get","challenge":"{challenge}","origin":"{origin}","crossOrigin":false}}"#
        );
        let mut auth_data = Sha256::digest(b"localhost").to_vec();
        auth_data.push(flags);
        auth_data.extend_from_slice(&7u32.to_be_bytes());
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("key");
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("key");
        let public = EcPublicKey::from_sec1_uncompressed(pair.public_key().as_ref()).expect("pub");
        let mut message = auth_data.clone();
        message.extend_from_slice(&Sha256::digest(client.as_bytes()));
        let signature = pair.sign(&rng, &message).expect("sign");
        Evidence {
            version: 1,
            terms,
            cart,
            nonce: nonce.into(),
            challenge,
            rp_id: "localhost".into(),
            origin: origin.into(),
            credential: EvidenceCredential {
                id: "Y3JlZA".into(),
                public_key: public.to_jwk(&public.thumbprint()),
            },
            assertion: Assertion {
                authenticator_data: crate::b64::encode(&auth_data),
                client_data_json: crate::b64::encode(client.as_bytes()),
                signature: crate::b64::encode(signature.as_ref()),
            },
            amr,
            approved_at: 1_799_999_000,
        }
    }

    #[test]
    fn spec12_challenge_commits_to_every_term() {
        let base = approval_challenge(&terms(), "n").expect("terms");
        let mut other = terms();
        other.max_amount = "89.98".into();
        assert_ne!(approval_challenge(&other, "n").expect("terms"), base);
        let mut other = terms();
        other.agent_id = "agent-8".into();
        assert_ne!(approval_challenge(&other, "n").expect("terms"), base);
        assert_ne!(approval_challenge(&terms(), "m").expect("terms"), base);
        let mut broken = terms();
        broken.merchant_id = "acme\nagent_id=x".into();
        assert_eq!(
            approval_challenge(&broken, "n"),
            Err(TermsError("merchant_id"))
        );
    }

    #[test]
    fn spec12_evidence_verifies_and_every_change_is_caught() {
        let good = signed(0x05, amr_for(true));
        let verified = verify_evidence(&good).expect("verifies");
        assert!(verified.user_verified && verified.user_present);
        assert_eq!(verified.sign_count, 7);

        let mut e = good.clone();
        e.terms.max_amount = "899.99".into();
        assert_eq!(verify_evidence(&e), Err(EvidenceError::Challenge));
        let mut e = good.clone();
        e.cart["total"] = 1.into();
        assert!(verify_evidence(&e).is_err());
        let mut e = good.clone();
        e.rp_id = "evil.example".into();
        assert!(matches!(
            verify_evidence(&e),
            Err(EvidenceError::AuthenticatorData(_))
        ));
        let mut e = good.clone();
        e.origin = "http://evil.example".into();
        assert!(matches!(
            verify_evidence(&e),
            Err(EvidenceError::ClientData(_))
        ));
        let mut e = good.clone();
        e.amr = amr_otp();
        assert_eq!(verify_evidence(&e), Err(EvidenceError::Amr));
        let mut e = good.clone();
        let mut sig = crate::b64::decode(&e.assertion.signature).expect("b64");
        let last = sig.len() - 1;
        sig[last] ^= 1;
        e.assertion.signature = crate::b64::encode(&sig);
        assert_eq!(verify_evidence(&e), Err(EvidenceError::Signature));
        // Without UV the amr has no mfa; claiming it is caught.
        let no_uv = signed(0x01, amr_for(false));
        assert!(!verify_evidence(&no_uv).expect("verifies").user_verified);
        let mut e = no_uv;
        e.amr = amr_for(true);
        assert_eq!(verify_evidence(&e), Err(EvidenceError::Amr));
        // The user absent: refused.
        assert!(matches!(
            verify_evidence(&signed(0x04, amr_for(true))),
            Err(EvidenceError::AuthenticatorData(_))
        ));
    }
}
