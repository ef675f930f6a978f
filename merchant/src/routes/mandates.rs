//! `POST /v1/mandates/verify`: the verifier for a merchant's own backend.

use ap2_mandate::{Cart, Consume};
use ap2_service::problem::{ApiJson, Problem};
use axum::extract::State;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

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

/// Verifies a mandate against a cart and an agent; with `consume` (default true) a success
/// also spends it.
pub async fn verify_mandate(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<VerifyRequest>,
) -> Result<ApiJson<Value>, Problem> {
    let cart = Cart::from_json(body.cart.get().as_bytes())
        .map_err(|e| unprocessable("cart_invalid", e.to_string()))?;
    let consume = body.consume.unwrap_or(true);
    let verified = verify(
        &state,
        &body.mandate,
        &body.agent_id,
        &cart,
        if consume { Consume::Yes } else { Consume::No },
    )
    .await?;
    Ok(ApiJson(json!({
        "valid": true,
        "consumed": consume,
        "kid": verified.kid,
        "claims": verified.claims,
    })))
}
