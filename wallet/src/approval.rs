//! The user's side of an approval (SPEC §12): the links that authorise one page, the WebAuthn
//! relying party, and the ceremonies' state, sealed and handed to the browser so that any
//! instance can finish what another began.

use ap2_mandate::evidence::{ApprovalTerms, approval_challenge};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use webauthn_rs::prelude::{
    CreationChallengeResponse, Passkey, PasskeyAuthentication, PasskeyRegistration,
    RequestChallengeResponse, Url, Uuid,
};
use webauthn_rs::{Webauthn, WebauthnBuilder};

use crate::crypto::MasterKey;
use crate::store::RequestRow;

/// How users may approve (`--approval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ApprovalMode {
    /// Only with a passkey: the code is not offered (nor shown in notifications).
    Passkey,
    /// Only with the one-time code.
    Otp,
    /// A passkey when the user has one, the code otherwise (the default).
    Either,
}

impl ApprovalMode {
    /// Whether a passkey may approve.
    pub fn passkey(self) -> bool {
        matches!(self, Self::Passkey | Self::Either)
    }

    /// Whether the code may approve.
    pub fn otp(self) -> bool {
        matches!(self, Self::Otp | Self::Either)
    }
}

/// The relying party and its id: the id is the host of the wallet's public URL, its origin
/// that URL's.
pub fn relying_party(public_url: &str) -> anyhow::Result<(Webauthn, String)> {
    let url = Url::parse(public_url)?;
    let host = url
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("the public URL has no host"))?;
    anyhow::ensure!(
        host.parse::<std::net::IpAddr>().is_err() && !host.starts_with('['),
        "passkeys need the public URL to name a host (WebAuthn's relying party id cannot be an \
         IP address): use e.g. http://localhost:PORT"
    );
    let origin = Url::parse(&url.origin().ascii_serialization())?;
    let rp = WebauthnBuilder::new(host, &origin)?
        .rp_name("AP2 wallet")
        .build()?;
    Ok((rp, host.to_owned()))
}

fn link_aad(kind: &str, parts: &[&str]) -> String {
    format!("link:{kind}:{}", parts.join(":"))
}

/// A tag that authorises a link: an AES-GCM seal of nothing under the link's terms, so only
/// the master key makes one and it opens for those terms only.
fn tag(master: &MasterKey, aad: &str) -> anyhow::Result<String> {
    Ok(URL_SAFE_NO_PAD.encode(master.seal(aad, b"")?))
}

fn tag_matches(master: &MasterKey, aad: &str, tag: &str) -> bool {
    URL_SAFE_NO_PAD
        .decode(tag)
        .ok()
        .is_some_and(|sealed| master.open(aad, &sealed).is_ok())
}

/// The approval page's link for `request` (SPEC §12): it authorises that request for its
/// user, and nothing else, until the request ends.
pub fn approval_url(
    master: &MasterKey,
    public_url: &str,
    request: &RequestRow,
) -> anyhow::Result<String> {
    let t = tag(
        master,
        &link_aad("approve", &[&request.id, &request.user_id]),
    )?;
    Ok(format!(
        "{}/approve/{}?t={t}",
        public_url.trim_end_matches('/'),
        request.id
    ))
}

/// Whether `t` is the approval link's tag for `request`.
pub fn approval_tag_ok(master: &MasterKey, request: &RequestRow, t: &str) -> bool {
    tag_matches(
        master,
        &link_aad("approve", &[&request.id, &request.user_id]),
        t,
    )
}

/// The enrolment page's link for `user_id`, valid until `expires_at`.
pub fn enrollment_url(
    master: &MasterKey,
    public_url: &str,
    user_id: &str,
    expires_at: i64,
) -> anyhow::Result<String> {
    let e = expires_at.to_string();
    let t = tag(master, &link_aad("enroll", &[user_id, &e]))?;
    Ok(format!(
        "{}/enroll/{user_id}?e={e}&t={t}",
        public_url.trim_end_matches('/')
    ))
}

/// Whether `t` is the enrolment link's tag for `user_id` and `expires_at`.
pub fn enrollment_tag_ok(master: &MasterKey, user_id: &str, expires_at: i64, t: &str) -> bool {
    tag_matches(
        master,
        &link_aad("enroll", &[user_id, &expires_at.to_string()]),
        t,
    )
}

/// The WebAuthn user handle of `user_id`: derived, so every instance finds the same one and
/// it tells nothing of the id.
pub fn user_handle(user_id: &str) -> Uuid {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("ap2-user-handle:{user_id}").as_bytes());
    let mut bytes = [0u8; 16];
    if let Some(first) = digest.first_chunk::<16>() {
        bytes = *first;
    }
    Uuid::from_bytes(bytes)
}

/// The terms a passkey approval of `request` signs over.
pub fn terms_of(request: &RequestRow) -> ApprovalTerms {
    ApprovalTerms {
        request_id: request.id.clone(),
        cart_hash: request.cart_hash.clone(),
        max_amount: request.max_amount.clone(),
        currency: request.currency.clone(),
        merchant_id: request.merchant_id.clone(),
        agent_id: request.agent_id.clone(),
        expires_at: request.expires_at,
    }
}

/// A sealed ceremony state, as the browser carries it between the two calls.
#[derive(Serialize, Deserialize)]
struct AuthenticationCeremony {
    state: PasskeyAuthentication,
    nonce: String,
}

fn seal_json(master: &MasterKey, aad: &str, value: &impl Serialize) -> anyhow::Result<String> {
    let json = serde_json::to_vec(value)?;
    Ok(URL_SAFE_NO_PAD.encode(master.seal(aad, &json)?))
}

fn open_json<T: serde::de::DeserializeOwned>(
    master: &MasterKey,
    aad: &str,
    sealed: &str,
) -> Option<T> {
    let sealed = URL_SAFE_NO_PAD.decode(sealed).ok()?;
    let json = master.open(aad, &sealed).ok()?;
    serde_json::from_slice(&json).ok()
}

/// Starts a passkey approval of `request` with the user's `passkeys`: the options for
/// `navigator.credentials.get` (their challenge committing to the request's terms) and the
/// sealed state.
pub fn start_approval(
    webauthn: &Webauthn,
    master: &MasterKey,
    request: &RequestRow,
    passkeys: &[Passkey],
) -> anyhow::Result<(Value, String)> {
    let (options, state) = webauthn.start_passkey_authentication(passkeys)?;
    let nonce = crate::crypto::random_token(16)?;
    let challenge = URL_SAFE_NO_PAD.encode(approval_challenge(&terms_of(request), &nonce)?);
    // webauthn-rs draws a random challenge; the one used is the request's, set in both the
    // options the browser gets and the state the answer is checked against.
    let mut options = serde_json::to_value::<RequestChallengeResponse>(options)?;
    *options
        .pointer_mut("/publicKey/challenge")
        .ok_or_else(|| anyhow::anyhow!("the options have no challenge"))? =
        Value::String(challenge.clone());
    let mut state = serde_json::to_value(state)?;
    *state
        .pointer_mut("/ast/challenge")
        .ok_or_else(|| anyhow::anyhow!("the state has no challenge"))? = Value::String(challenge);
    let state: PasskeyAuthentication = serde_json::from_value(state)?;
    let sealed = seal_json(
        master,
        &format!("ceremony:approve:{}", request.id),
        &AuthenticationCeremony { state, nonce },
    )?;
    Ok((options, sealed))
}

/// Opens the sealed state of a passkey approval of `request_id`: the state and the nonce.
pub fn open_approval(
    master: &MasterKey,
    request_id: &str,
    sealed: &str,
) -> Option<(PasskeyAuthentication, String)> {
    open_json::<AuthenticationCeremony>(master, &format!("ceremony:approve:{request_id}"), sealed)
        .map(|c| (c.state, c.nonce))
}

/// Starts enrolling a passkey for `user_id`: the options for `navigator.credentials.create`
/// and the sealed state.
pub fn start_enrollment(
    webauthn: &Webauthn,
    master: &MasterKey,
    user_id: &str,
    existing: &[Passkey],
) -> anyhow::Result<(CreationChallengeResponse, String)> {
    let exclude = existing.iter().map(|p| p.cred_id().clone()).collect();
    let (options, state) = webauthn.start_passkey_registration(
        user_handle(user_id),
        user_id,
        user_id,
        Some(exclude),
    )?;
    let sealed = seal_json(master, &format!("ceremony:enroll:{user_id}"), &state)?;
    Ok((options, sealed))
}

/// Opens the sealed state of an enrolment for `user_id`.
pub fn open_enrollment(
    master: &MasterKey,
    user_id: &str,
    sealed: &str,
) -> Option<PasskeyRegistration> {
    open_json(master, &format!("ceremony:enroll:{user_id}"), sealed)
}

/// A passkey's public key as a P-256 JWK, for the evidence.
pub fn public_jwk(passkey: &Passkey) -> Option<Value> {
    use webauthn_rs::prelude::{COSEKeyType, ECDSACurve};
    match &passkey.get_public_key().key {
        COSEKeyType::EC_EC2(ec) if ec.curve == ECDSACurve::SECP256R1 => {
            let x: [u8; 32] = ec.x.as_ref().try_into().ok()?;
            let y: [u8; 32] = ec.y.as_ref().try_into().ok()?;
            let key = ap2_mandate::EcPublicKey::from_coordinates(x, y).ok()?;
            Some(key.to_jwk(&key.thumbprint()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_master() -> MasterKey {
        let dir = tempfile::tempdir().expect("dir");
        MasterKey::load(None, dir.path()).expect("key")
    }

    #[test]
    fn spec12_links_authorise_their_own_terms_only() {
        let master = new_master();
        let url = enrollment_url(&master, "http://localhost:1", "alice", 100).expect("url");
        let t = url.rsplit_once("t=").expect("tag").1;
        assert!(enrollment_tag_ok(&master, "alice", 100, t));
        assert!(!enrollment_tag_ok(&master, "alice", 101, t));
        assert!(!enrollment_tag_ok(&master, "bob", 100, t));
        assert!(!enrollment_tag_ok(&master, "alice", 100, "AAAA"));
        assert!(!enrollment_tag_ok(&new_master(), "alice", 100, t));
    }

    #[test]
    fn spec12_relying_party_needs_a_host_name() {
        assert!(relying_party("http://localhost:8081").is_ok());
        assert!(relying_party("http://127.0.0.1:8081").is_err());
    }
}
