//! `POST /v1/mandates/verify`: the verifier for a merchant's own backend.

use ap2_mandate::{
    Cart, Consume, DpopProof, Htu, IntentMandate, Jkt, Kid, Presentation, ProofPresentation,
    VerifiedMandate,
};
use ap2_service::problem::{ApiJson, Problem};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{AppState, refusal, unprocessable, verify};

/// The backend a request authenticated as, from `Authorization: Bearer <backend token>`
/// (SPEC §9). Extracted before the body, so a caller without a token learns nothing.
#[derive(Debug, Clone)]
pub struct Backend(pub String);

impl FromRequestParts<AppState> for Backend {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        ap2_service::auth::authenticate(&parts.headers, &state.backends, "backend token")
            .map(|name| Backend(name.to_owned()))
    }
}

/// The request body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    mandate: String,
    agent_id: String,
    /// The merchant's own SPEC §3 cart.
    #[schema(value_type = Object)]
    cart: Box<RawValue>,
    #[serde(default)]
    consume: Option<bool>,
    /// The DPoP proof the backend received with the mandate (SPEC §8), with the method and
    /// URL of the request it came with.
    #[serde(default)]
    dpop: Option<String>,
    #[serde(default)]
    htm: Option<String>,
    #[serde(default)]
    htu: Option<String>,
}

/// The answer to a mandate that passed.
#[derive(Debug, Serialize)]
struct Verified<'a> {
    valid: bool,
    consumed: bool,
    kid: &'a Kid,
    claims: &'a IntentMandate,
    #[serde(skip_serializing_if = "Option::is_none")]
    proof_jkt: Option<&'a Jkt>,
}

/// Verifies a mandate against a cart and an agent, and the agent's proof when the backend
/// passes it on (`dpop`, `htm`, `htu`: a bound mandate needs them); with `consume` (default
/// true) a success also spends the mandate and the proof.
#[utoipa::path(post, path = "/v1/mandates/verify", tag = "backend", request_body = VerifyRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`{valid, consumed, kid, claims, proof_jkt?}`", body = Object),
        (status = 422, description = "`cart_invalid`, `dpop_request_incomplete`, `htu_invalid`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 400, description = "`invalid_body`, `agent_id_required`, `agent_id_invalid`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 401, description = "a SPEC §4 or §8 code (`mandate_*`, `dpop_*`), with `WWW-Authenticate`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 503, description = "`key_directory_unavailable`, `replay_store_unavailable`, `store_unavailable`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn verify_mandate(
    Backend(backend): Backend,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<VerifyRequest>,
) -> Result<Response, Problem> {
    let cart = Cart::from_json(body.cart.get().as_bytes())
        .map_err(|e| unprocessable("cart_invalid", e.to_string()))?;
    let consume = body.consume.unwrap_or(true);
    let target = match (&body.dpop, &body.htm, &body.htu) {
        (None, None, None) => None,
        (Some(proof), Some(htm), Some(htu)) => {
            let htu =
                Htu::parse(htu).map_err(|e| unprocessable("htu_invalid", format!("htu: {e}")))?;
            let proof = DpopProof::parse(proof).map_err(|e| refusal(&e, true))?;
            Some((proof, htm.as_str(), htu))
        }
        _ => {
            return Err(unprocessable(
                "dpop_request_incomplete",
                "dpop, htm and htu go together",
            ));
        }
    };
    let presentation = match &target {
        Some((proof, htm, htu)) => Presentation::dpop(
            &body.mandate,
            &body.agent_id,
            &cart,
            ProofPresentation { proof, htm, htu },
        ),
        None => Presentation::bearer(&body.mandate, &body.agent_id, &cart),
    };
    let VerifiedMandate {
        kid,
        claims,
        proof_jkt,
    } = verify(
        &state,
        &presentation,
        if consume { Consume::Yes } else { Consume::No },
    )
    .await?;
    tracing::debug!(%backend, consume, "mandate verified for a backend");
    Ok(ApiJson(Verified {
        valid: true,
        consumed: consume,
        kid: &kid,
        claims: &claims,
        proof_jkt: proof_jkt.as_ref(),
    })
    .into_response())
}
