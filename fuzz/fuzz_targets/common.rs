#![allow(dead_code)] // each target uses part of the fixture
// The fuzzing fixture: the SPEC vector's key registered for its issuer and subject, a clock
// inside the vector token's validity, and the vector's cart.
use ap2_mandate::memory::{MemoryKeys, MemoryReplayGuard};
use ap2_mandate::{
    Cart, Consume, EcPublicKey, FixedClock, KeyRecord, KeyStatus, LocalSigner, MerchantId,
    Presentation, Verifier, VerifierConfig,
};

pub const VECTOR: &str = include_str!("../../crates/mandate/tests/vectors/jwt_vector.json");
pub const CART: &str = include_str!("../../crates/mandate/tests/vectors/cart_v1.json");

pub struct Fixture {
    pub verifier: Verifier<MemoryKeys, MemoryReplayGuard, FixedClock>,
    pub signer: LocalSigner,
    pub cart: Cart,
    runtime: tokio::runtime::Runtime,
}

impl Fixture {
    pub fn new() -> Option<Self> {
        let vector: serde_json::Value = serde_json::from_str(VECTOR).ok()?;
        let signer = LocalSigner::from_pkcs8_pem(vector["private_key_pem"].as_str()?, None).ok()?;
        let (public, kid) = EcPublicKey::from_jwk(&vector["jwk"]).ok()?;
        let keys = MemoryKeys::new();
        keys.insert(KeyRecord {
            kid: kid?,
            issuer: "https://wallet.example".into(),
            subject: "user-123".into(),
            status: KeyStatus::Active,
            key: public.verification_key().ok()?,
        });
        let verifier = Verifier::new(
            VerifierConfig::without_binding(MerchantId::parse("acme-corp").ok()?),
            keys,
            MemoryReplayGuard::new(),
            FixedClock(1_798_761_700),
        );
        Some(Self {
            verifier,
            signer,
            cart: Cart::from_json(CART.as_bytes()).ok()?,
            runtime: tokio::runtime::Builder::new_current_thread().build().ok()?,
        })
    }

    /// The problem code, or "ok". Dry runs: the replay set stays empty.
    pub fn code(&self, token: &str) -> &'static str {
        let presentation = Presentation::bearer(token, "agent-7", &self.cart);
        match self
            .runtime
            .block_on(self.verifier.verify(&presentation, Consume::No))
        {
            Ok(_) => "ok",
            Err(e) => e.code().as_str(),
        }
    }
}
