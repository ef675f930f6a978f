//! AP2 intent mandates: the protocol, with no I/O.
//!
//! - [`money`]: ISO 4217 currencies and exact amounts in minor units.
//! - [`cart`]: the merchant's cart and its `cart_hash` (RFC 8785 + SHA-256).
//! - [`keys`]: P-256 public JWKs, RFC 7638 thumbprints, signing keys.
//! - [`mandate`]: the claims and minting.
//! - [`verify`]: SPEC §4 (and §8 step 6b), in order, over injected key lookups, replay set
//!   and clock.
//! - [`dpop`]: SPEC §8, the agent's proof of possession: thumbprints, `ath`, `htu`
//!   normalisation, DPoP proofs made and checked, nonces.
//! - [`memory`]: in-memory lookups for tests, tools and the single-process demo.
//!
//! # Minting and verifying (SPEC §2, §4)
//!
//! The wallet signs the claims with the user's key; the merchant verifies them against the
//! registered key, its own cart and its replay set. Here the lookups are in memory
//! ([`memory`]); a service puts its key directory and Redis behind [`KeyResolver`] and
//! [`ReplayGuard`].
//!
//! ```
//! use ap2_mandate::memory::{MemoryKeys, MemoryReplayGuard};
//! use ap2_mandate::{
//!     AgentId, Ap2Scope, Cart, Consume, FixedClock, IntentMandate, Jti, KeyRecord, KeyStatus,
//!     LocalSigner, MerchantId, Presentation, Signer, Verifier, VerifierConfig,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cart = Cart::from_json(br#"{"merchant_id":"acme-corp","currency":"USD","total":8999,
//!   "line_items":[{"id":"shoe-001","title":"Trail Runner","quantity":1,"unit_price":8999}]}"#)?;
//! let now = 1_800_000_000;
//!
//! // The wallet mints, once the user approved.
//! let user = LocalSigner::generate()?;
//! let claims = IntentMandate {
//!     iss: "https://wallet.example".into(),
//!     sub: "alice".into(),
//!     aud: MerchantId::parse("acme-corp")?,
//!     iat: now,
//!     nbf: None,
//!     exp: now + 300,
//!     jti: Jti::random()?,
//!     scope: Ap2Scope {
//!         max_amount: cart.total(),
//!         cart_hash: cart.hash().clone(),
//!         allow_agent_id: AgentId::parse("agent-7")?,
//!     },
//!     cnf: None,
//!     amr: Some(vec!["otp".into()]),
//! };
//! let token = ap2_mandate::mint(&user, &claims)?;
//!
//! // The merchant knows the user's key (from the key directory) and verifies.
//! let keys = MemoryKeys::new();
//! keys.insert(KeyRecord {
//!     kid: user.kid().clone(),
//!     issuer: "https://wallet.example".into(),
//!     subject: "alice".into(),
//!     status: KeyStatus::Active,
//!     key: user.public_key().verification_key()?,
//! });
//! let merchant = MerchantId::parse("acme-corp")?;
//! let verifier = Verifier::new(
//!     VerifierConfig::without_binding(merchant), // SPEC §4 alone: no agent binding
//!     keys,
//!     MemoryReplayGuard::new(),
//!     FixedClock(now + 10),
//! );
//! let runtime = tokio::runtime::Builder::new_current_thread().build()?;
//! let presented = Presentation::bearer(&token, "agent-7", &cart);
//! let verified = runtime.block_on(verifier.verify(&presented, Consume::Yes))?;
//! assert_eq!(verified.claims.sub, "alice");
//!
//! // Spent: the same mandate again is a replay; another agent is refused too.
//! let again = runtime.block_on(verifier.verify(&presented, Consume::Yes));
//! assert_eq!(again.unwrap_err().code().as_str(), "mandate_replayed");
//! # Ok(())
//! # }
//! ```
//!
//! # Agent binding (SPEC §8)
//!
//! A bound mandate names the agent's key (`cnf.jkt`); the merchant accepts it only with a DPoP
//! proof (RFC 9449) signed by that key for this very request.
//!
//! ```
//! use ap2_mandate::memory::{MemoryKeys, MemoryReplayGuard};
//! use ap2_mandate::{
//!     AgentId, Ap2Scope, Cart, Consume, DpopProof, FixedClock, Htu, IntentMandate, Jkt, Jti,
//!     KeyRecord, KeyStatus, LocalSigner, MerchantId, Presentation, ProofPresentation,
//!     ProofRequest, Signer, Verifier, VerifierConfig, make_proof, mint,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cart = Cart::from_json(br#"{"merchant_id":"acme-corp","currency":"EUR","total":1200,
//!   "line_items":[{"id":"socks","title":"Wool socks","quantity":2,"unit_price":600}]}"#)?;
//! let now = 1_800_000_000;
//! let (user, agent) = (LocalSigner::generate()?, LocalSigner::generate()?);
//! let token = mint(&user, &IntentMandate {
//!     iss: "https://wallet.example".into(),
//!     sub: "alice".into(),
//!     aud: MerchantId::parse("acme-corp")?,
//!     iat: now,
//!     nbf: None,
//!     exp: now + 300,
//!     jti: Jti::random()?,
//!     scope: Ap2Scope {
//!         max_amount: cart.total(),
//!         cart_hash: cart.hash().clone(),
//!         allow_agent_id: AgentId::parse("agent-7")?,
//!     },
//!     cnf: Some(Jkt::of(agent.public_key())), // bound to the agent's key
//!     amr: None,
//! })?;
//!
//! let keys = MemoryKeys::new();
//! keys.insert(KeyRecord {
//!     kid: user.kid().clone(),
//!     issuer: "https://wallet.example".into(),
//!     subject: "alice".into(),
//!     status: KeyStatus::Active,
//!     key: user.public_key().verification_key()?,
//! });
//! let verifier = Verifier::new(
//!     VerifierConfig::new(MerchantId::parse("acme-corp")?), // binding required
//!     keys,
//!     MemoryReplayGuard::new(),
//!     FixedClock(now + 10),
//! );
//! let runtime = tokio::runtime::Builder::new_current_thread().build()?;
//!
//! // The agent proves its key for this request, over the mandate (`ath`).
//! let url = "https://acme.example/v1/checkout-sessions/s1/complete";
//! let proof = make_proof(&agent, &ProofRequest {
//!     htm: "POST",
//!     htu: url,
//!     iat: now + 10,
//!     jti: None,
//!     token: Some(&token),
//!     nonce: None,
//! })?;
//! let proof = DpopProof::parse(&proof)?;
//! let htu = Htu::parse(url)?;
//! let with_proof = ProofPresentation { proof: &proof, htm: "POST", htu: &htu };
//!
//! // A thief with the token but not the key: presented as Bearer it is refused.
//! let stolen = Presentation::bearer(&token, "agent-7", &cart);
//! let refused = runtime.block_on(verifier.verify(&stolen, Consume::Yes));
//! assert_eq!(refused.unwrap_err().code().as_str(), "dpop_proof_required");
//!
//! let presented = Presentation::dpop(&token, "agent-7", &cart, with_proof);
//! let verified = runtime.block_on(verifier.verify(&presented, Consume::Yes))?;
//! assert_eq!(verified.proof_jkt, Some(Jkt::of(agent.public_key())));
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod b64;
pub mod cart;
pub mod dpop;
pub mod evidence;
pub mod ids;
mod json;
pub mod keys;
pub mod mandate;
pub mod memory;
pub mod money;
pub mod verify;

pub use cart::{Cart, CartError, CartHash, LineItem};
pub use dpop::{DpopNonces, DpopProof, Htu, Jkt, ProofCheck, ProofRequest, PublicUrl, make_proof};
pub use ids::{AgentId, IdError, Jti, Kid, MerchantId};
pub use keys::{EcPublicKey, KeyError, LocalSigner, SignError, Signer, VerificationKey};
pub use mandate::{Ap2Scope, IntentMandate, MintError, mint};
pub use money::{Currency, CurrencyError, Money, MoneyError};
pub use verify::{
    AuthScheme, Clock, Consume, FixedClock, KeyRecord, KeyResolver, KeyStatus, Presentation,
    ProblemCode, ProofPresentation, ReplayEntry, ReplayError, ReplayGuard, ReplayKey, ResolveError,
    SystemClock, VerifiedMandate, Verifier, VerifierConfig, VerifyError,
};
