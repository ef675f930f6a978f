//! SPEC §8 at the merchant: every agent call carries a DPoP proof of its own, whose key owns
//! the sessions it opens; the `mandate_required` challenge; the `DPoP-Nonce` header.

use ap2_mandate::{DpopProof, Htu, Jkt, ReplayEntry, ReplayError, ReplayGuard, VerifyError};
use ap2_service::problem::Problem;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use ap2_service::dpop::proof_header;

use super::{AppState, refusal};

/// The response header holding the merchant's current nonce (RFC 9449 §8).
pub static DPOP_NONCE_HEADER: HeaderName = HeaderName::from_static("dpop-nonce");

/// The request's `htu`: the public URL joined with its path.
pub fn htu(state: &AppState, path: &str) -> Result<Htu, Problem> {
    state.public_url.htu(path).map_err(Problem::internal)
}

/// The proof of a call that presents no mandate, form and signature checked, or `None`
/// where there is none and binding is not required.
pub fn parse(state: &AppState, headers: &HeaderMap) -> Result<Option<DpopProof>, Problem> {
    let refuse = |e: VerifyError| refusal(&e, true);
    match proof_header(headers).map_err(refuse)? {
        Some(proof) => DpopProof::parse(proof).map(Some).map_err(refuse),
        None if state.binding_required() => Err(refuse(VerifyError::ProofRequired(
            "agent calls need a DPoP proof",
        ))),
        None => Ok(None),
    }
}

/// Whether a call's proof is recorded in the replay set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A call that changes something (opening a session): a captured proof must not open
    /// another one.
    Yes,
    /// A safe call (reading a session): a replay within the proof's 60 s reads what the
    /// captured answer already showed, so the proof is checked but not written to Redis.
    No,
}

/// The agent key of a call without a mandate (opening or reading a session): the proof is
/// checked against the request (no `ath`) and, for a call that changes something, its
/// `(jkt, jti)` recorded, so a captured proof cannot be sent again.
pub async fn agent_key(
    state: &AppState,
    headers: &HeaderMap,
    htm: &str,
    path: &str,
    record: Record,
) -> Result<Option<Jkt>, Problem> {
    let Some(proof) = parse(state, headers)? else {
        return Ok(None);
    };
    let now = state.clock.now_unix();
    let htu = htu(state, path)?;
    let config = state.verifier.config();
    let refuse = |e: VerifyError| refusal(&e, true);
    proof
        .check(&config.proof_check(htm, &htu, None), now)
        .map_err(refuse)?;
    if record == Record::No {
        return Ok(Some(proof.jkt().clone()));
    }
    let key = proof.replay_key();
    let entry = ReplayEntry {
        key: &key,
        until_unix: proof.replay_until(config.dpop_max_age_secs),
    };
    state
        .verifier
        .replay()
        .consume(&[entry], now)
        .await
        .map_err(|e| match e {
            ReplayError::AlreadyUsed(_) => refuse(VerifyError::ProofReplayed),
            ReplayError::Unavailable(why) => refuse(VerifyError::ReplayStoreUnavailable(why)),
        })?;
    Ok(Some(proof.jkt().clone()))
}

/// `401 mandate_required`, challenging with the scheme this merchant wants.
pub fn mandate_required(state: &AppState) -> Problem {
    let (detail, challenge) = if state.binding_required() {
        (
            "present the mandate as Authorization: DPoP <mandate> with a DPoP proof",
            r#"DPoP algs="ES256""#,
        )
    } else {
        (
            "present the mandate as Authorization: Bearer <mandate>",
            "Bearer",
        )
    };
    Problem::new(StatusCode::UNAUTHORIZED, "mandate_required", detail)
        .with_challenge(HeaderValue::from_static(challenge))
}

/// Adds `DPoP-Nonce: <current>` to every answer of the agent routes when nonces are on, so
/// an agent learns the next nonce before the old one lapses (RFC 9449 §8.2).
pub async fn nonce_header(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    if let Some(nonces) = &state.verifier.config().dpop_nonces
        && let Ok(value) = HeaderValue::from_str(&nonces.current(state.clock.now_unix()))
    {
        response
            .headers_mut()
            .insert(DPOP_NONCE_HEADER.clone(), value);
    }
    response
}
