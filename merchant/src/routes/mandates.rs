//! `POST /v1/mandates/verify`: the verifier for a merchant's own backend.

use ap2_mandate::{Cart, Consume, IntentMandate, Kid, VerifiedMandate};
use ap2_service::problem::{ApiJson, Problem};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{AppState, unprocessable, verify};

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    mandate: String,
    agent_id: String,
    cart: Box<RawValue>,
    #[serde(default)]
    consume: Option<bool>,
}

/// The answer to a mandate that passed.
#[derive(Debug, Serialize)]
struct Verified<'a> {
    valid: bool,
    consumed: bool,
    kid: &'a Kid,
    claims: &'a IntentMandate,
}

/// Verifies a mandate against a cart and an agent; with `consume` (default true) a success
/// also spends it.
pub async fn verify_mandate(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<VerifyRequest>,
) -> Result<Response, Problem> {
    let cart = Cart::from_json(body.cart.get().as_bytes())
        .map_err(|e| unprocessable("cart_invalid", e.to_string()))?;
    let consume = body.consume.unwrap_or(true);
    let VerifiedMandate { kid, claims } = verify(
        &state,
        &body.mandate,
        &body.agent_id,
        &cart,
        if consume { Consume::Yes } else { Consume::No },
    )
    .await?;
    Ok(ApiJson(Verified {
        valid: true,
        consumed: consume,
        kid: &kid,
        claims: &claims,
    })
    .into_response())
}
