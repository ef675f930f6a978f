//! SPEC §4: everything a merchant checks before it charges, in the SPEC's order. Key lookups
//! and the replay set are traits the services implement; the clock is injected.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::cart::{Cart, CartHash};
use crate::dpop::{DEFAULT_DPOP_MAX_AGE_SECS, DpopNonces, DpopProof, Htu, Jkt, ProofCheck};
use crate::ids::{AgentId, Jti, Kid, MerchantId};
use crate::json::{
    Aud, Field, RawAmr, RawClaims, RawCnf, RawHeader, RawScope, StrictJsonError, parse_claims,
    parse_header,
};
use crate::keys::VerificationKey;
use crate::mandate::{Ap2Scope, INTENT_CART_PURCHASE_V1, IntentMandate, MANDATE_TYP};
use crate::money::{Currency, Money};

/// A token is at most this many bytes (SPEC §4 step 1); longer ones are refused unread.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Default clock leeway for `exp`, `nbf` and `iat` (SPEC §4 step 5).
pub const DEFAULT_LEEWAY_SECS: i64 = 30;
/// Default longest lifetime, `exp - iat` (SPEC §2).
pub const DEFAULT_MAX_LIFETIME_SECS: i64 = 300;

/// Header members that would let the token choose its own key; refused outright (step 2).
const FORBIDDEN_HEADER_MEMBERS: [&str; 7] = ["jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256", "crit"];

/// The problem codes of SPEC §4, as they appear on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemCode {
    /// `mandate_required`: no `Authorization` header (raised by the HTTP layer).
    MandateRequired,
    /// `mandate_malformed`.
    Malformed,
    /// `mandate_header_rejected`.
    HeaderRejected,
    /// `mandate_algorithm_unsupported`.
    AlgorithmUnsupported,
    /// `mandate_key_unknown`.
    KeyUnknown,
    /// `mandate_key_revoked`.
    KeyRevoked,
    /// `mandate_signature_invalid`.
    SignatureInvalid,
    /// `mandate_issuer_mismatch`.
    IssuerMismatch,
    /// `mandate_audience_mismatch`.
    AudienceMismatch,
    /// `mandate_expired`.
    Expired,
    /// `mandate_not_yet_valid`.
    NotYetValid,
    /// `mandate_lifetime_too_long`.
    LifetimeTooLong,
    /// `mandate_intent_unsupported`.
    IntentUnsupported,
    /// `mandate_scope_invalid`.
    ScopeInvalid,
    /// `mandate_agent_mismatch`.
    AgentMismatch,
    /// `mandate_cart_mismatch`.
    CartMismatch,
    /// `mandate_currency_mismatch`.
    CurrencyMismatch,
    /// `mandate_amount_exceeded`.
    AmountExceeded,
    /// `mandate_replayed`.
    Replayed,
    /// `key_directory_unavailable`.
    KeyDirectoryUnavailable,
    /// `replay_store_unavailable`.
    ReplayStoreUnavailable,
    /// `mandate_binding_required` (SPEC §8): an unbound mandate where binding is required.
    BindingRequired,
    /// `dpop_proof_required`: no proof, or a bound mandate presented as `Bearer`.
    ProofRequired,
    /// `dpop_proof_invalid`: the proof's shape, `typ`, `alg`, `jwk` or signature.
    ProofInvalid,
    /// `dpop_proof_mismatch`: the proof's `htm`, `htu` or `ath`.
    ProofMismatch,
    /// `dpop_proof_stale`: the proof's `iat` is outside the window.
    ProofStale,
    /// `dpop_proof_replayed`.
    ProofReplayed,
    /// `dpop_key_mismatch`: the proof's key is not the mandate's `cnf.jkt`.
    DpopKeyMismatch,
    /// `use_dpop_nonce`: the proof lacks the server's current nonce.
    UseDpopNonce,
}

impl ProblemCode {
    /// Every code, for exhaustive tests and documentation.
    pub const ALL: [ProblemCode; 29] = [
        Self::MandateRequired,
        Self::Malformed,
        Self::HeaderRejected,
        Self::AlgorithmUnsupported,
        Self::KeyUnknown,
        Self::KeyRevoked,
        Self::SignatureInvalid,
        Self::IssuerMismatch,
        Self::AudienceMismatch,
        Self::Expired,
        Self::NotYetValid,
        Self::LifetimeTooLong,
        Self::IntentUnsupported,
        Self::ScopeInvalid,
        Self::AgentMismatch,
        Self::CartMismatch,
        Self::CurrencyMismatch,
        Self::AmountExceeded,
        Self::Replayed,
        Self::KeyDirectoryUnavailable,
        Self::ReplayStoreUnavailable,
        Self::BindingRequired,
        Self::ProofRequired,
        Self::ProofInvalid,
        Self::ProofMismatch,
        Self::ProofStale,
        Self::ProofReplayed,
        Self::DpopKeyMismatch,
        Self::UseDpopNonce,
    ];

    /// The stable `code` member of the problem+json body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MandateRequired => "mandate_required",
            Self::Malformed => "mandate_malformed",
            Self::HeaderRejected => "mandate_header_rejected",
            Self::AlgorithmUnsupported => "mandate_algorithm_unsupported",
            Self::KeyUnknown => "mandate_key_unknown",
            Self::KeyRevoked => "mandate_key_revoked",
            Self::SignatureInvalid => "mandate_signature_invalid",
            Self::IssuerMismatch => "mandate_issuer_mismatch",
            Self::AudienceMismatch => "mandate_audience_mismatch",
            Self::Expired => "mandate_expired",
            Self::NotYetValid => "mandate_not_yet_valid",
            Self::LifetimeTooLong => "mandate_lifetime_too_long",
            Self::IntentUnsupported => "mandate_intent_unsupported",
            Self::ScopeInvalid => "mandate_scope_invalid",
            Self::AgentMismatch => "mandate_agent_mismatch",
            Self::CartMismatch => "mandate_cart_mismatch",
            Self::CurrencyMismatch => "mandate_currency_mismatch",
            Self::AmountExceeded => "mandate_amount_exceeded",
            Self::Replayed => "mandate_replayed",
            Self::KeyDirectoryUnavailable => "key_directory_unavailable",
            Self::ReplayStoreUnavailable => "replay_store_unavailable",
            Self::BindingRequired => "mandate_binding_required",
            Self::ProofRequired => "dpop_proof_required",
            Self::ProofInvalid => "dpop_proof_invalid",
            Self::ProofMismatch => "dpop_proof_mismatch",
            Self::ProofStale => "dpop_proof_stale",
            Self::ProofReplayed => "dpop_proof_replayed",
            Self::DpopKeyMismatch => "dpop_key_mismatch",
            Self::UseDpopNonce => "use_dpop_nonce",
        }
    }

    /// The `error` of the `WWW-Authenticate: DPoP` challenge (SPEC §8): `invalid_dpop_proof`
    /// for the proof's codes, `use_dpop_nonce` for that code, `invalid_token` for the
    /// mandate's own; `None` for the outages (503, no challenge).
    pub fn dpop_error(self) -> Option<&'static str> {
        match self {
            Self::KeyDirectoryUnavailable | Self::ReplayStoreUnavailable => None,
            Self::UseDpopNonce => Some("use_dpop_nonce"),
            Self::ProofRequired
            | Self::ProofInvalid
            | Self::ProofMismatch
            | Self::ProofStale
            | Self::ProofReplayed
            | Self::DpopKeyMismatch => Some("invalid_dpop_proof"),
            _ => Some("invalid_token"),
        }
    }

    /// The HTTP status: 401 for every refusal of the mandate, 503 when a dependency is down.
    pub fn http_status(self) -> u16 {
        match self {
            Self::KeyDirectoryUnavailable | Self::ReplayStoreUnavailable => 503,
            _ => 401,
        }
    }
}

impl fmt::Display for ProblemCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a mandate was refused. Each variant is exactly one [`ProblemCode`]; the `&'static str`
/// details say which rule, in words safe for a `WWW-Authenticate` quoted string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Step 1 (or a claim of the wrong type): not a well-formed mandate.
    #[error("malformed mandate: {0}")]
    Malformed(&'static str),
    /// Step 2: a header member is missing, wrong or forbidden.
    #[error("header rejected: {0}")]
    HeaderRejected(&'static str),
    /// Step 2: `alg` is not exactly `ES256`.
    #[error("the algorithm is not ES256")]
    AlgorithmUnsupported,
    /// Step 3: no key with this kid.
    #[error("no key is registered under this kid")]
    KeyUnknown,
    /// Step 3: the key was revoked.
    #[error("the key was revoked")]
    KeyRevoked,
    /// Step 4: the signature does not verify.
    #[error("the signature does not verify")]
    SignatureInvalid,
    /// Step 5: `iss`/`sub` are not those registered for the key.
    #[error("iss or sub is not the one registered for this key")]
    IssuerMismatch,
    /// Step 5: `aud` is not this merchant (alone).
    #[error("the mandate is not for this merchant")]
    AudienceMismatch,
    /// Step 5: past `exp` (plus leeway).
    #[error("the mandate has expired")]
    Expired,
    /// Step 5: before `nbf`, or `iat` in the future, beyond the leeway.
    #[error("the mandate is not valid yet")]
    NotYetValid,
    /// Step 5: `exp - iat` over the maximum lifetime.
    #[error("the mandate lives longer than this merchant accepts")]
    LifetimeTooLong,
    /// Step 5: `ap2_intent` missing or unknown.
    #[error("the intent is not CART_PURCHASE_V1")]
    IntentUnsupported,
    /// Step 5: `ap2_scope` missing, incomplete or ill-formed.
    #[error("invalid ap2_scope: {0}")]
    ScopeInvalid(&'static str),
    /// Step 6: presented by another agent.
    #[error("the mandate is for another agent")]
    AgentMismatch,
    /// Step 6: approved for another cart.
    #[error("the mandate is for another cart")]
    CartMismatch,
    /// Step 6: the cart is in another currency.
    #[error("the cart is in another currency than the mandate")]
    CurrencyMismatch,
    /// Step 6: the cart's total is above `max_amount`.
    #[error("the cart total exceeds the approved maximum")]
    AmountExceeded,
    /// Step 7: this `(iss, jti)` was already presented.
    #[error("the mandate was already used")]
    Replayed,
    /// Step 3: the key directory could not be asked (nothing was accepted).
    #[error("the key directory is unavailable")]
    KeyDirectoryUnavailable(String),
    /// Step 7: the replay set could not record the jti (nothing was accepted).
    #[error("the replay store is unavailable")]
    ReplayStoreUnavailable(String),
    /// Step 6b: the mandate has no `cnf` and this verifier requires binding.
    #[error("the mandate is not bound to an agent key (cnf.jkt) and binding is required")]
    BindingRequired,
    /// Step 6b: no proof, or a bound mandate presented as `Bearer`.
    #[error("{0}")]
    ProofRequired(&'static str),
    /// Step 6b: the proof's form, header, key or signature.
    #[error("invalid DPoP proof: {0}")]
    ProofInvalid(&'static str),
    /// Step 6b: the proof was made for another request or token.
    #[error("DPoP proof mismatch: {0}")]
    ProofMismatch(&'static str),
    /// Step 6b: the proof's `iat` is outside the accepted window.
    #[error("the DPoP proof's iat is outside the accepted window")]
    ProofStale,
    /// Step 7: this proof's `(jkt, jti)` was already presented.
    #[error("the DPoP proof was already used")]
    ProofReplayed,
    /// Step 6b: the proof is signed by another key than the mandate's `cnf.jkt`.
    #[error("the DPoP proof is signed by another key than the one the mandate is bound to")]
    DpopKeyMismatch,
    /// Step 6b: the proof does not carry the server's current nonce.
    #[error("the DPoP proof must carry the nonce of the DPoP-Nonce header")]
    UseDpopNonce,
}

impl VerifyError {
    /// The one place a refusal becomes a wire code.
    pub fn code(&self) -> ProblemCode {
        match self {
            Self::Malformed(_) => ProblemCode::Malformed,
            Self::HeaderRejected(_) => ProblemCode::HeaderRejected,
            Self::AlgorithmUnsupported => ProblemCode::AlgorithmUnsupported,
            Self::KeyUnknown => ProblemCode::KeyUnknown,
            Self::KeyRevoked => ProblemCode::KeyRevoked,
            Self::SignatureInvalid => ProblemCode::SignatureInvalid,
            Self::IssuerMismatch => ProblemCode::IssuerMismatch,
            Self::AudienceMismatch => ProblemCode::AudienceMismatch,
            Self::Expired => ProblemCode::Expired,
            Self::NotYetValid => ProblemCode::NotYetValid,
            Self::LifetimeTooLong => ProblemCode::LifetimeTooLong,
            Self::IntentUnsupported => ProblemCode::IntentUnsupported,
            Self::ScopeInvalid(_) => ProblemCode::ScopeInvalid,
            Self::AgentMismatch => ProblemCode::AgentMismatch,
            Self::CartMismatch => ProblemCode::CartMismatch,
            Self::CurrencyMismatch => ProblemCode::CurrencyMismatch,
            Self::AmountExceeded => ProblemCode::AmountExceeded,
            Self::Replayed => ProblemCode::Replayed,
            Self::KeyDirectoryUnavailable(_) => ProblemCode::KeyDirectoryUnavailable,
            Self::ReplayStoreUnavailable(_) => ProblemCode::ReplayStoreUnavailable,
            Self::BindingRequired => ProblemCode::BindingRequired,
            Self::ProofRequired(_) => ProblemCode::ProofRequired,
            Self::ProofInvalid(_) => ProblemCode::ProofInvalid,
            Self::ProofMismatch(_) => ProblemCode::ProofMismatch,
            Self::ProofStale => ProblemCode::ProofStale,
            Self::ProofReplayed => ProblemCode::ProofReplayed,
            Self::DpopKeyMismatch => ProblemCode::DpopKeyMismatch,
            Self::UseDpopNonce => ProblemCode::UseDpopNonce,
        }
    }
}

/// The current time in NumericDate seconds. Injected so expiry is testable.
pub trait Clock: Send + Sync {
    /// Seconds since the Unix epoch.
    fn now_unix(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place the real clock is read
    fn now_unix(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    }
}

/// A clock stopped at one instant (tests, offline checks of old tokens).
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub i64);

impl Clock for FixedClock {
    fn now_unix(&self) -> i64 {
        self.0
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_unix(&self) -> i64 {
        (**self).now_unix()
    }
}

/// Whether a key may still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// Mandates signed with it verify.
    Active,
    /// Refused with `mandate_key_revoked`.
    Revoked,
}

/// What the key directory knows of a kid: whose key it is, and the key, parsed once.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// The key id.
    pub kid: Kid,
    /// The wallet that registered it; the mandate's `iss` must equal it.
    pub issuer: String,
    /// The user it belongs to; the mandate's `sub` must equal it.
    pub subject: String,
    /// Active or revoked.
    pub status: KeyStatus,
    /// The public key.
    pub key: VerificationKey,
}

/// Why a kid could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The directory has no such kid.
    #[error("unknown kid")]
    Unknown,
    /// The directory could not be asked and no fresh entry is cached.
    #[error("key directory unavailable: {0}")]
    Unavailable(String),
}

/// Looks keys up by kid (the merchant's directory client with its cache).
pub trait KeyResolver: Send + Sync {
    /// The record for `kid`.
    fn resolve(
        &self,
        kid: &Kid,
    ) -> impl Future<Output = Result<Arc<KeyRecord>, ResolveError>> + Send;
}

impl<T: KeyResolver + ?Sized> KeyResolver for Arc<T> {
    fn resolve(
        &self,
        kid: &Kid,
    ) -> impl Future<Output = Result<Arc<KeyRecord>, ResolveError>> + Send {
        (**self).resolve(kid)
    }
}

/// The replay set's key for one mandate: SHA-256 over the length-prefixed `iss` and the `jti`,
/// in hex. Keyed on `(iss, jti)`, never on the token bytes: a high-S twin of a signature, or
/// a re-encoded token, is the same mandate.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ReplayKey(String);

impl ReplayKey {
    /// The key for `(iss, jti)`.
    pub fn new(iss: &str, jti: &Jti) -> Self {
        let mut hasher = Sha256::new();
        hasher.update((iss.len() as u64).to_be_bytes());
        hasher.update(iss.as_bytes());
        hasher.update(jti.as_str().as_bytes());
        Self::from_digest(hasher)
    }

    /// The key for a DPoP proof's `(jkt, jti)` (SPEC §8 step 7). Its input starts with eight
    /// `0xff` bytes, a length no `iss` can have, so it never equals a mandate's key.
    pub fn proof(jkt: &Jkt, jti: &Jti) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(u64::MAX.to_be_bytes());
        hasher.update((jkt.as_str().len() as u64).to_be_bytes());
        hasher.update(jkt.as_str().as_bytes());
        hasher.update(jti.as_str().as_bytes());
        Self::from_digest(hasher)
    }

    fn from_digest(hasher: Sha256) -> Self {
        let digest = hasher.finalize();
        let mut hex = String::with_capacity(64);
        for byte in digest {
            for nibble in [byte >> 4, byte & 0x0f] {
                // A nibble is always a hex digit.
                hex.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
            }
        }
        Self(hex)
    }

    /// 64 lower-case hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ReplayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplayKey({})", self.0)
    }
}

/// One key to record, and until when.
#[derive(Debug, Clone, Copy)]
pub struct ReplayEntry<'a> {
    /// The key.
    pub key: &'a ReplayKey,
    /// Unix seconds after which the key may be forgotten.
    pub until_unix: i64,
}

/// Why a jti could not be consumed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The entry at this index was recorded before (nothing was recorded now).
    #[error("already used")]
    AlreadyUsed(usize),
    /// The store could not be reached in time: the caller must refuse (fail closed).
    #[error("replay store unavailable: {0}")]
    Unavailable(String),
}

/// The replay set: records mandates (and DPoP proofs) as used until their deadlines.
pub trait ReplayGuard: Send + Sync {
    /// Records every entry, atomically: all of them are new and all are recorded, or none is
    /// recorded and the first one that was already there is reported (its index in
    /// `entries`, checked in order).
    fn consume(
        &self,
        entries: &[ReplayEntry<'_>],
        now_unix: i64,
    ) -> impl Future<Output = Result<(), ReplayError>> + Send;
}

impl<T: ReplayGuard + ?Sized> ReplayGuard for Arc<T> {
    fn consume(
        &self,
        entries: &[ReplayEntry<'_>],
        now_unix: i64,
    ) -> impl Future<Output = Result<(), ReplayError>> + Send {
        (**self).consume(entries, now_unix)
    }
}

/// The verifier's settings.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// This merchant's id: the only `aud` accepted.
    pub audience: MerchantId,
    /// Clock leeway for `exp`, `nbf`, `iat`, in seconds.
    pub leeway_secs: i64,
    /// Longest accepted `exp - iat`, in seconds.
    pub max_lifetime_secs: i64,
    /// Whether an unbound mandate (no `cnf`) is refused (SPEC §8, default true). A bound
    /// mandate always needs its proof.
    pub require_binding: bool,
    /// How old a DPoP proof's `iat` may be, in seconds.
    pub dpop_max_age_secs: i64,
    /// The server's DPoP nonces, when proofs must carry one.
    pub dpop_nonces: Option<Arc<DpopNonces>>,
}

impl VerifierConfig {
    /// The SPEC's defaults for `audience`: 30 s leeway, 300 s maximum lifetime, binding
    /// required, proofs at most 60 s old, no nonces.
    pub fn new(audience: MerchantId) -> Self {
        Self {
            audience,
            leeway_secs: DEFAULT_LEEWAY_SECS,
            max_lifetime_secs: DEFAULT_MAX_LIFETIME_SECS,
            require_binding: true,
            dpop_max_age_secs: DEFAULT_DPOP_MAX_AGE_SECS,
            dpop_nonces: None,
        }
    }

    /// SPEC §4 alone, as a merchant with `--require-agent-binding false`: unbound mandates
    /// are accepted as `Bearer` tokens; a bound one still needs its proof.
    pub fn without_binding(audience: MerchantId) -> Self {
        Self {
            require_binding: false,
            ..Self::new(audience)
        }
    }

    /// What a proof must match for the request `htm` `htu`, presenting `ath` (if any).
    pub fn proof_check<'a>(
        &'a self,
        htm: &'a str,
        htu: &'a Htu,
        ath: Option<&'a str>,
    ) -> ProofCheck<'a> {
        ProofCheck {
            htm,
            htu,
            ath,
            max_age_secs: self.dpop_max_age_secs,
            nonces: self.dpop_nonces.as_deref(),
        }
    }
}

/// How the mandate was presented: RFC 6750 `Bearer` or RFC 9449 `DPoP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthScheme {
    /// `Authorization: Bearer <mandate>` (SPEC §4 alone; unbound mandates only).
    Bearer,
    /// `Authorization: DPoP <mandate>` with a `DPoP` proof (SPEC §8).
    Dpop,
}

/// The agent's proof and the request it came with.
#[derive(Debug, Clone, Copy)]
pub struct ProofPresentation<'a> {
    /// The proof, its form and signature already checked ([`DpopProof::parse`]).
    pub proof: &'a DpopProof,
    /// The request's method.
    pub htm: &'a str,
    /// The request's URL, normalised.
    pub htu: &'a Htu,
}

/// What the presenter brings: the token, who presents it, and the merchant's own cart.
#[derive(Debug, Clone, Copy)]
pub struct Presentation<'a> {
    /// The JWS compact token, as received.
    pub token: &'a str,
    /// The `Authorization` scheme it came under.
    pub scheme: AuthScheme,
    /// The presenting agent (`AP2-Agent-Id`).
    pub agent_id: &'a str,
    /// The merchant's cart for this checkout, never one the agent supplied.
    pub cart: &'a Cart,
    /// The agent's DPoP proof, if it sent one.
    pub proof: Option<ProofPresentation<'a>>,
}

impl<'a> Presentation<'a> {
    /// A mandate presented as `Bearer`, without a proof (SPEC §4 alone).
    pub fn bearer(token: &'a str, agent_id: &'a str, cart: &'a Cart) -> Self {
        Self {
            token,
            scheme: AuthScheme::Bearer,
            agent_id,
            cart,
            proof: None,
        }
    }

    /// A mandate presented as `DPoP` with the agent's proof for the request.
    pub fn dpop(
        token: &'a str,
        agent_id: &'a str,
        cart: &'a Cart,
        proof: ProofPresentation<'a>,
    ) -> Self {
        Self {
            token,
            scheme: AuthScheme::Dpop,
            agent_id,
            cart,
            proof: Some(proof),
        }
    }
}

/// Whether step 7 records the jti.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consume {
    /// Record it: the mandate is being spent.
    Yes,
    /// Check everything but leave the replay set alone (a dry run).
    No,
}

/// A mandate that passed every step.
#[derive(Debug, Clone)]
pub struct VerifiedMandate {
    /// The key it was signed with.
    pub kid: Kid,
    /// Its claims.
    pub claims: IntentMandate,
    /// The key of the DPoP proof it was presented with, if any.
    pub proof_jkt: Option<Jkt>,
}

/// Runs SPEC §4 steps 1–7, in order, cheapest first.
#[derive(Debug)]
pub struct Verifier<K, R, C = SystemClock> {
    config: VerifierConfig,
    keys: K,
    replay: R,
    clock: C,
}

impl<K: KeyResolver, R: ReplayGuard, C: Clock> Verifier<K, R, C> {
    /// A verifier over the given key resolver, replay set and clock.
    pub fn new(config: VerifierConfig, keys: K, replay: R, clock: C) -> Self {
        Self {
            config,
            keys,
            replay,
            clock,
        }
    }

    /// The settings.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// The key resolver.
    pub fn keys(&self) -> &K {
        &self.keys
    }

    /// The replay set.
    pub fn replay(&self) -> &R {
        &self.replay
    }

    /// Verifies `presentation`; with [`Consume::Yes`] a success also records the jti (and
    /// the proof's), so the same mandate never verifies twice.
    pub async fn verify(
        &self,
        presentation: &Presentation<'_>,
        consume: Consume,
    ) -> Result<VerifiedMandate, VerifyError> {
        let now = self.clock.now_unix();
        // Steps 1 and 2: shape and header, no key and no state needed.
        let parsed = ParsedToken::parse(presentation.token)?;
        // Step 3.
        let record = self.keys.resolve(&parsed.kid).await.map_err(|e| match e {
            ResolveError::Unknown => VerifyError::KeyUnknown,
            ResolveError::Unavailable(why) => VerifyError::KeyDirectoryUnavailable(why),
        })?;
        if record.status == KeyStatus::Revoked {
            return Err(VerifyError::KeyRevoked);
        }
        // Step 4.
        if !record
            .key
            .verify_es256(parsed.signing_input, &parsed.signature)
        {
            return Err(VerifyError::SignatureInvalid);
        }
        // Step 5.
        let claims = check_claims(parsed.payload, &record, &self.config, now)?;
        // Step 6.
        check_binding(&claims, presentation, &self.config)?;
        // Step 6b (SPEC §8).
        let proof = self.check_proof(&claims, presentation, now)?;
        // Step 7: the proof's (jkt, jti) and the mandate's (iss, jti), both or neither. The
        // proof comes first, so a captured request replayed whole is reported as such.
        if consume == Consume::Yes {
            let mandate_key = ReplayKey::new(&claims.iss, &claims.jti);
            let mandate = ReplayEntry {
                key: &mandate_key,
                until_unix: claims.exp.saturating_add(self.config.leeway_secs),
            };
            let proof_key = proof.map(DpopProof::replay_key);
            let result = match (proof, &proof_key) {
                (Some(proof), Some(key)) => {
                    let entry = ReplayEntry {
                        key,
                        until_unix: proof.replay_until(self.config.dpop_max_age_secs),
                    };
                    self.replay.consume(&[entry, mandate], now).await
                }
                _ => self.replay.consume(&[mandate], now).await,
            };
            result.map_err(|e| match e {
                ReplayError::AlreadyUsed(0) if proof.is_some() => VerifyError::ProofReplayed,
                ReplayError::AlreadyUsed(_) => VerifyError::Replayed,
                ReplayError::Unavailable(why) => VerifyError::ReplayStoreUnavailable(why),
            })?;
        }
        Ok(VerifiedMandate {
            kid: parsed.kid,
            claims,
            proof_jkt: proof.map(|p| p.jkt().clone()),
        })
    }

    /// SPEC §8 step 6b: a bound mandate needs `DPoP` and a proof for this request, signed by
    /// its `cnf.jkt`; an unbound one is refused when binding is required, and a proof that
    /// comes with it must still be right.
    fn check_proof<'p>(
        &self,
        claims: &IntentMandate,
        presentation: &Presentation<'p>,
        now: i64,
    ) -> Result<Option<&'p DpopProof>, VerifyError> {
        if claims.cnf.is_none() && self.config.require_binding {
            return Err(VerifyError::BindingRequired);
        }
        let presented = match (presentation.scheme, presentation.proof) {
            (AuthScheme::Dpop, Some(presented)) => presented,
            (AuthScheme::Dpop, None) => {
                return Err(VerifyError::ProofRequired(
                    "Authorization: DPoP needs a DPoP proof header",
                ));
            }
            (AuthScheme::Bearer, _) if claims.cnf.is_some() => {
                return Err(VerifyError::ProofRequired(
                    "the mandate is bound to an agent key: present it as Authorization: DPoP \
                     with a DPoP proof",
                ));
            }
            (AuthScheme::Bearer, _) => return Ok(None),
        };
        let ath = crate::dpop::ath(presentation.token);
        let check = self
            .config
            .proof_check(presented.htm, presented.htu, Some(&ath));
        presented.proof.check(&check, now)?;
        if let Some(cnf) = &claims.cnf
            && presented.proof.jkt() != cnf
        {
            return Err(VerifyError::DpopKeyMismatch);
        }
        Ok(Some(presented.proof))
    }
}

/// A token after steps 1 and 2: its kid, the bytes that were signed, the signature and the
/// payload's members (not yet interpreted: claims are judged only after the signature
/// verifies).
#[derive(Debug)]
pub struct ParsedToken<'a> {
    /// The header's kid.
    pub kid: Kid,
    /// `BASE64URL(header) || '.' || BASE64URL(payload)`.
    pub signing_input: &'a [u8],
    /// The decoded signature segment.
    pub signature: Vec<u8>,
    /// The payload's members the verifier reads (the payload is a JSON object without
    /// duplicate members; the rest of it was checked and dropped).
    pub(crate) payload: RawClaims,
}

impl<'a> ParsedToken<'a> {
    /// SPEC §4 steps 1 and 2.
    pub fn parse(token: &'a str) -> Result<Self, VerifyError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::Malformed("the token is longer than 8 KiB"));
        }
        let Some((header_b64, payload_b64, signature_b64)) = crate::b64::three_segments(token)
        else {
            return Err(VerifyError::Malformed(
                "a mandate has exactly three segments",
            ));
        };
        if header_b64.is_empty() || payload_b64.is_empty() || signature_b64.is_empty() {
            return Err(VerifyError::Malformed("a segment is empty"));
        }
        let not_b64 = || VerifyError::Malformed("a segment is not unpadded base64url");
        let header_bytes = crate::b64::decode(header_b64).ok_or_else(not_b64)?;
        let payload_bytes = crate::b64::decode(payload_b64).ok_or_else(not_b64)?;
        let signature = crate::b64::decode(signature_b64).ok_or_else(not_b64)?;
        let header = parse_header(&header_bytes, MANDATE_TYP, &FORBIDDEN_HEADER_MEMBERS).map_err(
            |e| match e {
                StrictJsonError::DuplicateMember => {
                    VerifyError::HeaderRejected("duplicate member in the header")
                }
                StrictJsonError::Syntax => {
                    VerifyError::Malformed("the header is not a JSON object")
                }
            },
        )?;
        let kid = check_header(header)?;
        let payload =
            parse_claims(&payload_bytes, INTENT_CART_PURCHASE_V1).map_err(|e| match e {
                StrictJsonError::DuplicateMember => {
                    VerifyError::Malformed("duplicate member in the payload")
                }
                StrictJsonError::Syntax => {
                    VerifyError::Malformed("the payload is not a JSON object")
                }
            })?;
        let signing_input_len = header_b64.len() + 1 + payload_b64.len();
        let signing_input = token
            .as_bytes()
            .get(..signing_input_len)
            .ok_or_else(not_b64)?;
        Ok(Self {
            kid,
            signing_input,
            signature,
            payload,
        })
    }
}

fn check_header(header: RawHeader) -> Result<Kid, VerifyError> {
    if header.alg != Field::Present(true) {
        return Err(VerifyError::AlgorithmUnsupported);
    }
    if let Some(member) = FORBIDDEN_HEADER_MEMBERS
        .iter()
        .enumerate()
        .find(|(i, _)| header.forbidden & (1 << i) != 0)
        .map(|(_, m)| *m)
    {
        return Err(VerifyError::HeaderRejected(match member {
            "crit" => "crit is not accepted",
            "jwk" => "an embedded jwk is not accepted: keys come from the directory",
            "jku" | "x5u" => "a key URL is not accepted: keys come from the directory",
            _ => "certificates are not accepted: keys come from the directory",
        }));
    }
    if header.typ != Field::Present(true) {
        return Err(VerifyError::HeaderRejected("typ must be ap2-intent+jwt"));
    }
    match header.kid {
        Field::Present(kid) => Kid::parse(&kid).map_err(|_| {
            VerifyError::HeaderRejected("kid is not 1..=128 chars of [A-Za-z0-9._:-]")
        }),
        _ => Err(VerifyError::HeaderRejected("kid is missing")),
    }
}

/// Reads a NumericDate: a non-negative JSON integer.
fn numeric_date(value: Field<u64>) -> Result<Option<i64>, VerifyError> {
    match value {
        Field::Absent => Ok(None),
        Field::Present(v) => i64::try_from(v)
            .map(Some)
            .map_err(|_| VerifyError::Malformed("exp, iat and nbf are non-negative integers")),
        Field::WrongType => Err(VerifyError::Malformed(
            "exp, iat and nbf are non-negative integers",
        )),
    }
}

fn required(value: Field<String>, why: &'static str) -> Result<String, VerifyError> {
    match value {
        Field::Present(text) => Ok(text),
        _ => Err(VerifyError::Malformed(why)),
    }
}

fn check_claims(
    payload: RawClaims,
    record: &KeyRecord,
    config: &VerifierConfig,
    now: i64,
) -> Result<IntentMandate, VerifyError> {
    let iss = required(payload.iss, "iss is a required string")?;
    let sub = required(payload.sub, "sub is a required string")?;
    if iss != record.issuer || sub != record.subject {
        return Err(VerifyError::IssuerMismatch);
    }
    check_audience(&payload.aud, &config.audience)?;
    let exp = numeric_date(payload.exp)?.ok_or(VerifyError::Malformed("exp is required"))?;
    let iat = numeric_date(payload.iat)?.ok_or(VerifyError::Malformed("iat is required"))?;
    let nbf = numeric_date(payload.nbf)?;
    if exp <= iat {
        return Err(VerifyError::Malformed("exp is after iat"));
    }
    if now >= exp.saturating_add(config.leeway_secs) {
        return Err(VerifyError::Expired);
    }
    let latest_start = now.saturating_add(config.leeway_secs);
    if iat > latest_start || nbf.is_some_and(|nbf| nbf > latest_start) {
        return Err(VerifyError::NotYetValid);
    }
    if exp - iat > config.max_lifetime_secs {
        return Err(VerifyError::LifetimeTooLong);
    }
    let jti = Jti::parse(&required(payload.jti, "jti is a required string")?)
        .map_err(|_| VerifyError::Malformed("jti is 1..=128 chars of [A-Za-z0-9_-]"))?;
    if payload.ap2_intent != Field::Present(true) {
        return Err(VerifyError::IntentUnsupported);
    }
    let scope = parse_scope(payload.ap2_scope)?;
    let cnf = match payload.cnf {
        RawCnf::Absent => None,
        RawCnf::Jkt(jkt) => Some(Jkt::parse(&jkt).map_err(|_| {
            VerifyError::Malformed("cnf.jkt is not a base64url SHA-256 thumbprint")
        })?),
        RawCnf::Invalid => {
            return Err(VerifyError::Malformed(
                "cnf is an object with exactly one member, jkt",
            ));
        }
    };
    let amr = match payload.amr {
        RawAmr::Absent => None,
        RawAmr::Methods(methods) => Some(methods),
        RawAmr::Invalid => {
            return Err(VerifyError::Malformed(
                "amr is an array of 1..=8 strings of 1..=32 characters of [A-Za-z0-9_-]",
            ));
        }
    };
    Ok(IntentMandate {
        iss,
        sub,
        aud: config.audience.clone(),
        iat,
        nbf,
        exp,
        jti,
        scope,
        cnf,
        amr,
    })
}

/// `aud` is this merchant: a string, or an array of exactly that one string.
fn check_audience(aud: &Aud, audience: &MerchantId) -> Result<(), VerifyError> {
    let single = match aud {
        Aud::One(aud) => aud,
        Aud::Array {
            len: 1,
            first: Field::Present(aud),
        } => aud,
        Aud::Array { len: 1, .. } | Aud::WrongType => {
            return Err(VerifyError::Malformed(
                "aud is a string or an array of strings",
            ));
        }
        Aud::Array { .. } => return Err(VerifyError::AudienceMismatch),
        Aud::Absent => return Err(VerifyError::Malformed("aud is required")),
    };
    if single != audience.as_str() {
        return Err(VerifyError::AudienceMismatch);
    }
    Ok(())
}

fn parse_scope(scope: RawScope) -> Result<Ap2Scope, VerifyError> {
    let (max_amount, currency, cart_hash, allow_agent_id) = match scope {
        RawScope::Object {
            unknown_member: true,
            ..
        } => return Err(VerifyError::ScopeInvalid("ap2_scope has an unknown member")),
        RawScope::Object {
            max_amount,
            currency,
            cart_hash,
            allow_agent_id,
            ..
        } => (max_amount, currency, cart_hash, allow_agent_id),
        RawScope::Absent => return Err(VerifyError::ScopeInvalid("ap2_scope is missing")),
        RawScope::NotObject => {
            return Err(VerifyError::ScopeInvalid("ap2_scope is not an object"));
        }
    };
    let text = |value: Field<String>, why: &'static str| match value {
        Field::Present(text) => Ok(text),
        _ => Err(VerifyError::ScopeInvalid(why)),
    };
    let currency = Currency::parse(&text(currency, "currency is a required string")?)
        .map_err(|_| VerifyError::ScopeInvalid("currency is not an ISO 4217 code in upper case"))?;
    let max_amount = Money::parse(
        &text(max_amount, "max_amount is a required decimal string")?,
        currency,
    )
    .map_err(|_| VerifyError::ScopeInvalid("max_amount is not an exact amount of the currency"))?;
    let cart_hash = CartHash::parse(&text(cart_hash, "cart_hash is a required string")?)
        .map_err(|_| VerifyError::ScopeInvalid("cart_hash is not sha256-<base64url>"))?;
    let allow_agent_id = AgentId::parse(&text(
        allow_agent_id,
        "allow_agent_id is a required string",
    )?)
    .map_err(|_| VerifyError::ScopeInvalid("allow_agent_id is not a valid agent id"))?;
    Ok(Ap2Scope {
        max_amount,
        cart_hash,
        allow_agent_id,
    })
}

fn check_binding(
    claims: &IntentMandate,
    presentation: &Presentation<'_>,
    config: &VerifierConfig,
) -> Result<(), VerifyError> {
    let scope = &claims.scope;
    if scope.allow_agent_id.as_str() != presentation.agent_id {
        return Err(VerifyError::AgentMismatch);
    }
    let cart = presentation.cart;
    if cart.hash() != &scope.cart_hash || cart.merchant_id() != &config.audience {
        return Err(VerifyError::CartMismatch);
    }
    if cart.currency() != scope.max_amount.currency() {
        return Err(VerifyError::CurrencyMismatch);
    }
    if cart.total().minor_units() > scope.max_amount.minor_units() {
        return Err(VerifyError::AmountExceeded);
    }
    Ok(())
}
