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
#![forbid(unsafe_code)]

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
