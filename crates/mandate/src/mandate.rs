//! The intent mandate's claims (SPEC §2) and minting them as an ES256 JWS.

use serde::Serialize;
use serde::ser::SerializeStruct;

use crate::cart::CartHash;
use crate::dpop::Jkt;
use crate::ids::{AgentId, Jti, Kid, MerchantId};
use crate::keys::{SignError, Signer};
use crate::money::Money;

/// The JOSE `typ` of an intent mandate.
pub const MANDATE_TYP: &str = "ap2-intent+jwt";
/// The only `ap2_intent` this version knows.
pub const INTENT_CART_PURCHASE_V1: &str = "CART_PURCHASE_V1";

/// What the user approved: at most `max_amount` for exactly the cart behind `cart_hash`,
/// presented only by `allow_agent_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ap2Scope {
    /// The ceiling, in the scope's currency (`max_amount` and `currency` on the wire).
    pub max_amount: Money,
    /// The hash of the exact cart.
    pub cart_hash: CartHash,
    /// The one agent that may present the mandate.
    pub allow_agent_id: AgentId,
}

/// The claims of an intent mandate. Times are NumericDate seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentMandate {
    /// The wallet; equals the issuer registered for the key.
    pub iss: String,
    /// The user; equals the subject registered for the key.
    pub sub: String,
    /// The one merchant that may accept it.
    pub aud: MerchantId,
    /// Issued at.
    pub iat: i64,
    /// Not before, when present.
    pub nbf: Option<i64>,
    /// Expiry.
    pub exp: i64,
    /// The token id the replay set records.
    pub jti: Jti,
    /// The approved scope (`ap2_intent` is always [`INTENT_CART_PURCHASE_V1`]).
    pub scope: Ap2Scope,
    /// The agent key the mandate is bound to (`cnf.jkt`, SPEC §8): only a request with a
    /// DPoP proof signed by that key may present it. `None` for an unbound mandate.
    pub cnf: Option<Jkt>,
    /// How the user approved (RFC 8176, SPEC §12): `["hwk", "user"]` (plus `"mfa"` when the
    /// authenticator verified the user) for a passkey, `["otp"]` for the one-time code. `None`
    /// when the issuer does not say.
    pub amr: Option<Vec<String>>,
}

#[derive(Serialize)]
struct Cnf<'a> {
    jkt: &'a Jkt,
}

/// The SPEC §2 payload, members in the SPEC's order.
impl Serialize for IntentMandate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("IntentMandate", 11)?;
        s.serialize_field("iss", &self.iss)?;
        s.serialize_field("sub", &self.sub)?;
        s.serialize_field("aud", &self.aud)?;
        s.serialize_field("iat", &self.iat)?;
        if let Some(nbf) = self.nbf {
            s.serialize_field("nbf", &nbf)?;
        } else {
            s.skip_field("nbf")?;
        }
        s.serialize_field("exp", &self.exp)?;
        s.serialize_field("jti", &self.jti)?;
        s.serialize_field("ap2_intent", INTENT_CART_PURCHASE_V1)?;
        s.serialize_field("ap2_scope", &self.scope)?;
        if let Some(jkt) = &self.cnf {
            s.serialize_field("cnf", &Cnf { jkt })?;
        } else {
            s.skip_field("cnf")?;
        }
        if let Some(amr) = &self.amr {
            s.serialize_field("amr", amr)?;
        } else {
            s.skip_field("amr")?;
        }
        s.end()
    }
}

impl Serialize for Ap2Scope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Ap2Scope", 4)?;
        s.serialize_field("max_amount", &self.max_amount.to_string())?;
        s.serialize_field("currency", &self.max_amount.currency())?;
        s.serialize_field("cart_hash", &self.cart_hash)?;
        s.serialize_field("allow_agent_id", &self.allow_agent_id)?;
        s.end()
    }
}

/// Why a mandate could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The claims break a SPEC §2 rule (empty `iss`/`sub`, `exp` not after `iat`, …).
    #[error("the claims are not a valid mandate: {0}")]
    InvalidClaims(&'static str),
    /// The signer failed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The claims could not be serialised.
    #[error("the claims could not be serialised")]
    Json,
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a Kid,
}

/// Mints a mandate: the header `{"alg":"ES256","typ":"ap2-intent+jwt","kid"}` and the claims,
/// signed by `signer`, in JWS compact form.
pub fn mint(signer: &dyn Signer, claims: &IntentMandate) -> Result<String, MintError> {
    if claims.iss.is_empty() || claims.sub.is_empty() {
        return Err(MintError::InvalidClaims("iss and sub are non-empty"));
    }
    if claims.iat < 0 || claims.exp <= claims.iat {
        return Err(MintError::InvalidClaims("0 <= iat < exp"));
    }
    if claims.nbf.is_some_and(|nbf| nbf < 0 || nbf >= claims.exp) {
        return Err(MintError::InvalidClaims("0 <= nbf < exp"));
    }
    if let Some(amr) = &claims.amr
        && !crate::json::amr_is_valid(amr)
    {
        return Err(MintError::InvalidClaims(
            "amr is 1..=8 strings of 1..=32 characters of [A-Za-z0-9_-]",
        ));
    }
    let header = serde_json::to_vec(&Header {
        alg: "ES256",
        typ: MANDATE_TYP,
        kid: signer.kid(),
    })
    .map_err(|_| MintError::Json)?;
    let payload = serde_json::to_vec(claims).map_err(|_| MintError::Json)?;
    let mut token = crate::b64::encode(header);
    token.push('.');
    token.push_str(&crate::b64::encode(payload));
    let signature = signer.sign_es256(token.as_bytes())?;
    token.push('.');
    token.push_str(&crate::b64::encode(signature));
    Ok(token)
}
