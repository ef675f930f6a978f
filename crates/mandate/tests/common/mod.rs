//! The shared fixture: the SPEC vector's key, registered for its issuer and subject, a clock
//! inside the vector token's validity, and helpers that sign whatever header and payload a
//! test (or an attacker) writes.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use ap2_mandate::memory::{MemoryKeys, MemoryReplayGuard};
use ap2_mandate::{
    Cart, Consume, EcPublicKey, FixedClock, KeyRecord, KeyStatus, Kid, LocalSigner, MerchantId,
    Presentation, Signer, VerifiedMandate, Verifier, VerifierConfig, VerifyError,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

pub const JWT_VECTOR: &str = include_str!("../vectors/jwt_vector.json");
pub const CART_VECTORS: &str = include_str!("../vectors/cart_vectors.json");
/// Inside the vector token's validity: iat 1798761600, exp 1798761900.
pub const NOW: i64 = 1_798_761_700;
pub const ISSUER: &str = "https://wallet.example";
pub const SUBJECT: &str = "user-123";
pub const AGENT: &str = "agent-7";

pub fn vector() -> Value {
    serde_json::from_str(JWT_VECTOR).unwrap()
}

pub fn cart_vector(i: usize) -> Value {
    let all: Value = serde_json::from_str(CART_VECTORS).unwrap();
    all[i]["cart"].clone()
}

pub fn cart(value: &Value) -> Cart {
    Cart::from_json(value.to_string().as_bytes()).unwrap()
}

/// The cart the vector token was signed for.
pub fn shoe_cart() -> Cart {
    cart(&cart_vector(0))
}

pub fn signer() -> LocalSigner {
    LocalSigner::from_pkcs8_pem(vector()["private_key_pem"].as_str().unwrap(), None).unwrap()
}

pub fn record(key: &EcPublicKey, kid: &str, issuer: &str, subject: &str) -> KeyRecord {
    KeyRecord {
        kid: Kid::parse(kid).unwrap(),
        issuer: issuer.into(),
        subject: subject.into(),
        status: KeyStatus::Active,
        key: key.verification_key().unwrap(),
    }
}

pub type TestVerifier = Verifier<Arc<MemoryKeys>, Arc<MemoryReplayGuard>, FixedClock>;

pub struct Fixture {
    pub keys: Arc<MemoryKeys>,
    pub replay: Arc<MemoryReplayGuard>,
    pub verifier: TestVerifier,
    pub signer: LocalSigner,
}

impl Fixture {
    pub fn new() -> Self {
        Self::at(NOW)
    }

    pub fn at(now: i64) -> Self {
        let signer = signer();
        let keys = Arc::new(MemoryKeys::new());
        keys.insert(record(
            signer.public_key(),
            signer.kid().as_str(),
            ISSUER,
            SUBJECT,
        ));
        let replay = Arc::new(MemoryReplayGuard::new());
        let verifier = Verifier::new(
            VerifierConfig::without_binding(MerchantId::parse("acme-corp").unwrap()),
            keys.clone(),
            replay.clone(),
            FixedClock(now),
        );
        Self {
            keys,
            replay,
            verifier,
            signer,
        }
    }

    pub fn kid(&self) -> String {
        self.signer.kid().to_string()
    }

    /// The header the wallet writes.
    pub fn header(&self) -> Value {
        json!({"alg": "ES256", "typ": "ap2-intent+jwt", "kid": self.kid()})
    }

    /// Signs arbitrary header and payload JSON text with the vector key.
    pub fn sign_raw(&self, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header), b64(payload));
        let sig = self.signer.sign_es256(input.as_bytes()).unwrap();
        format!("{input}.{}", b64(sig))
    }

    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        self.sign_raw(&header.to_string(), &claims.to_string())
    }

    /// A valid token with the vector's claims, changed by `edit`.
    pub fn token_with(&self, edit: impl FnOnce(&mut Value)) -> String {
        let mut claims = vector()["claims"].clone();
        edit(&mut claims);
        self.sign(&self.header(), &claims)
    }

    pub async fn check(&self, token: &str) -> Result<VerifiedMandate, VerifyError> {
        self.check_for(token, AGENT, &shoe_cart()).await
    }

    pub async fn check_for(
        &self,
        token: &str,
        agent: &str,
        cart: &Cart,
    ) -> Result<VerifiedMandate, VerifyError> {
        self.verifier
            .verify(&Presentation::bearer(token, agent, cart), Consume::Yes)
            .await
    }

    /// The problem code a token gets, or "ok".
    pub async fn code(&self, token: &str) -> &'static str {
        match self.check(token).await {
            Ok(_) => "ok",
            Err(e) => e.code().as_str(),
        }
    }
}

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).unwrap()
}
