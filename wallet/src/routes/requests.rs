//! `/v1/mandate-requests`: an agent asks, the user approves with the code, the wallet mints.

use ap2_mandate::{
    AgentId, Ap2Scope, Cart, CartHash, DpopProof, IntentMandate, Jkt, Jti, MerchantId, Money,
    VerifyError,
};
use ap2_service::dpop::{proof_header, refusal};
use ap2_service::problem::{ApiJson, ApiPath, Problem};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{AppState, Caller, MAX_OTP_ATTEMPTS, signer_for, stored, stored_or};
use crate::crypto;
use crate::store::{Approval, Attempt, RequestRow, Status};

fn unprocessable(code: &'static str, detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
}

fn request_not_found() -> Problem {
    Problem::not_found("request_not_found", "no such mandate request")
}

/// `POST /v1/mandate-requests` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    user_id: String,
    merchant_id: String,
    /// The merchant's SPEC §3 cart.
    #[schema(value_type = Object)]
    cart: Box<RawValue>,
    #[serde(default)]
    max_amount: Option<String>,
    #[serde(default)]
    ttl_seconds: Option<i64>,
}

/// `POST /v1/mandate-requests` answer.
#[derive(Debug, Serialize)]
pub struct Created {
    id: String,
    status: &'static str,
    cart_hash: String,
    expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf_jkt: Option<String>,
}

/// The path agents ask at: the `htu` of their proofs.
const PATH: &str = "/v1/mandate-requests";

/// SPEC §8 at the wallet: the request's DPoP proof, checked as a merchant checks it (no
/// `ath`: no token is presented), gives the key the mandate will be bound to, and the
/// proof's replay key with its deadline. Without a proof: refused, unless unbound mandates
/// are allowed.
fn agent_key(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<(Jkt, ap2_mandate::ReplayKey, i64)>, Problem> {
    let refuse = |e: VerifyError| refusal(&e, true);
    let Some(proof) = proof_header(headers).map_err(refuse)? else {
        if state.allow_unbound_mandates {
            return Ok(None);
        }
        return Err(refuse(VerifyError::ProofRequired(
            "a mandate request needs a DPoP proof of the agent's key",
        )));
    };
    let proof = DpopProof::parse(proof).map_err(refuse)?;
    let htu = state.public_url.htu(PATH).map_err(Problem::internal)?;
    let check = ap2_mandate::ProofCheck {
        htm: "POST",
        htu: &htu,
        ath: None,
        max_age_secs: state.dpop_max_age_secs,
        nonces: None,
    };
    proof
        .check(&check, state.clock.now_unix())
        .map_err(refuse)?;
    Ok(Some((
        proof.jkt().clone(),
        proof.replay_key(),
        proof.replay_until(state.dpop_max_age_secs),
    )))
}

/// An agent asks for a mandate for itself, bound to the key of its proof; the user gets a
/// code.
#[utoipa::path(post, path = "/v1/mandate-requests", tag = "mandate-requests", request_body = CreateRequest,
    params(("DPoP" = Option<String>, Header, description = "the agent's proof: the mandate is bound to its key")),
    security(("bearer" = [])),
    responses((status = 201, description = "`{id, status, cart_hash, expires_at, cnf_jkt?}`", body = Object),
        (status = 404, description = "`user_not_found`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 409, description = "`user_key_revoked`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 422, description = "`cart_invalid`, `merchant_id_invalid`, `merchant_mismatch`, `max_amount_invalid`, `max_amount_below_total`, `ttl_invalid`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 429, description = "`too_many_pending_requests`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateRequest>,
) -> Result<(StatusCode, ApiJson<Created>), Problem> {
    let agent = caller.agent()?;
    let agent_id = AgentId::parse(&agent).map_err(Problem::internal)?;
    let binding = agent_key(&state, &headers)?;
    let cart = Cart::from_json(body.cart.get().as_bytes())
        .map_err(|e| unprocessable("cart_invalid", e.to_string()))?;
    let merchant = MerchantId::parse(&body.merchant_id)
        .map_err(|e| unprocessable("merchant_id_invalid", e.to_string()))?;
    if cart.merchant_id() != &merchant {
        return Err(unprocessable(
            "merchant_mismatch",
            "merchant_id is not the cart's merchant_id",
        ));
    }
    let max_amount = match &body.max_amount {
        None => cart.total(),
        Some(text) => Money::parse(text, cart.currency())
            .map_err(|e| unprocessable("max_amount_invalid", format!("max_amount: {e}")))?,
    };
    if max_amount.minor_units() < cart.total().minor_units() {
        return Err(unprocessable(
            "max_amount_below_total",
            "max_amount is below the cart's total",
        ));
    }
    let ttl = body.ttl_seconds.unwrap_or(state.max_mandate_ttl_secs);
    if !(1..=state.max_mandate_ttl_secs).contains(&ttl) {
        return Err(unprocessable(
            "ttl_invalid",
            format!("ttl_seconds is 1..={}", state.max_mandate_ttl_secs),
        ));
    }
    let user = stored(state.store.user(&body.user_id).await)?;
    if !user.is_some_and(|u| u.registered) {
        return Err(super::user_not_found());
    }
    let now = state.clock.now_unix();
    let id = ap2_service::ids::time_ordered(now).map_err(Problem::internal)?;
    let code = crypto::otp().map_err(Problem::internal)?;
    let sealed_code = crypto::seal_code(&state.master, &id, &code).map_err(Problem::internal)?;
    let row = RequestRow {
        id,
        user_id: body.user_id,
        agent_id: agent_id.to_string(),
        merchant_id: merchant.to_string(),
        cart: serde_json::to_string(&cart).map_err(Problem::internal)?,
        cart_hash: cart.hash().to_string(),
        max_amount: max_amount.to_string(),
        currency: cart.currency().code().to_owned(),
        ttl_secs: ttl,
        otp: sealed_code,
        attempts: 0,
        status: Status::PendingApproval,
        created_at: now,
        expires_at: now.saturating_add(state.approval_ttl_secs),
        mandate: None,
        mandate_exp: None,
        cnf_jkt: binding.as_ref().map(|(jkt, _, _)| jkt.to_string()),
    };
    let created = Created {
        id: row.id.clone(),
        status: Status::PendingApproval.as_str(),
        cart_hash: row.cart_hash.clone(),
        expires_at: ap2_service::rfc3339(row.expires_at),
        cnf_jkt: row.cnf_jkt.clone(),
    };
    tracing::info!(
        request_id = %row.id, user_id = %row.user_id, agent_id = %row.agent_id,
        merchant_id = %row.merchant_id, total = %cart.total(), currency = %cart.currency(),
        cnf_jkt = row.cnf_jkt.as_deref().unwrap_or("-"),
        "mandate requested; approval code sent to the user"
    );
    let max_pending = state.max_pending_per_user;
    let proof = binding.map(|(_, key, until)| (key.as_str().to_owned(), until));
    stored(
        state
            .store
            .create_request(row.clone(), proof, max_pending)
            .await,
    )?;
    if let Some(notifier) = &state.notifier {
        let user_id = row.user_id.clone();
        match super::users::notification(&state, row) {
            Ok(notification) => notifier.send(&serde_json::json!({
                "type": "mandate_request",
                "user_id": user_id,
                "notification": notification,
            })),
            Err(_) => tracing::warn!("a notification could not be made for the webhook"),
        }
    }
    Ok((StatusCode::CREATED, ApiJson(created)))
}

/// A request as its agent or its user sees it; the mandate once approved.
#[derive(Debug, Serialize)]
pub struct View {
    id: String,
    status: &'static str,
    user_id: String,
    agent_id: String,
    merchant_id: String,
    cart: Value,
    cart_hash: String,
    max_amount: String,
    currency: String,
    expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf_jkt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mandate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mandate_expires_at: Option<String>,
}

fn view(row: RequestRow, now: i64) -> View {
    View {
        status: row.status_at(now).as_str(),
        cart: serde_json::from_str(&row.cart).unwrap_or(Value::Null),
        expires_at: ap2_service::rfc3339(row.expires_at),
        mandate_expires_at: row.mandate_exp.map(ap2_service::rfc3339),
        id: row.id,
        user_id: row.user_id,
        agent_id: row.agent_id,
        merchant_id: row.merchant_id,
        cart_hash: row.cart_hash,
        max_amount: row.max_amount,
        currency: row.currency,
        cnf_jkt: row.cnf_jkt,
        mandate: row.mandate,
    }
}

pub(crate) async fn load(state: &AppState, id: String) -> Result<RequestRow, Problem> {
    stored(state.store.request(&id).await)?.ok_or_else(request_not_found)
}

/// `GET /v1/mandate-requests/{id}`: for the agent that asked or the user it is for.
#[utoipa::path(get, path = "/v1/mandate-requests/{id}", tag = "mandate-requests", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, description = "the request, with the mandate once approved", body = Object),
        (status = 404, description = "`request_not_found`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<View>, Problem> {
    let row = load(&state, id).await?;
    let allowed = match &caller {
        Caller::Agent(agent) => *agent == row.agent_id,
        Caller::User(user) => *user == row.user_id,
    };
    if !allowed {
        return Err(Problem::forbidden(
            "this request belongs to another agent or user",
        ));
    }
    Ok(ApiJson(view(row, state.clock.now_unix())))
}

/// `POST /v1/mandate-requests/{id}/approve` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Approve {
    otp: String,
}

/// The user approves with the code: the mandate is minted, once.
#[utoipa::path(post, path = "/v1/mandate-requests/{id}/approve", tag = "mandate-requests", request_body = Approve, params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, description = "approved: the request with its mandate", body = Object),
        (status = 403, description = "`otp_not_allowed` (`--approval passkey`), `forbidden` (another user's request)", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 404, description = "`request_not_found`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 409, description = "`request_not_pending`, `user_key_revoked`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 410, description = "`request_expired`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 422, description = "`otp_invalid`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 423, description = "`request_locked`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Approve>,
) -> Result<ApiJson<View>, Problem> {
    let user_id = caller.user()?;
    let row = finish_approval(&state, id, user_id, Check::Otp(body.otp)).await?;
    Ok(ApiJson(view(row, state.clock.now_unix())))
}

/// How an approval was made.
pub enum Check {
    /// The one-time code the user typed.
    Otp(String),
    /// A passkey assertion, verified before: its `amr` and the evidence to keep.
    Passkey {
        /// `["hwk","user"]`, plus `"mfa"` when the user was verified.
        amr: Vec<String>,
        /// The evidence's JSON.
        evidence: String,
    },
}

/// 403 `otp_not_allowed`: this wallet approves with passkeys only (`--approval passkey`).
pub fn otp_not_allowed() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "otp_not_allowed",
        "this wallet approves with passkeys only",
    )
}

/// Approves `user_id`'s request `id` by `check` and mints the mandate, once; the shared part of
/// the code endpoint and the approval page.
pub async fn finish_approval(
    state: &AppState,
    id: String,
    user_id: String,
    check: Check,
) -> Result<RequestRow, Problem> {
    if matches!(check, Check::Otp(_)) && !state.approval.otp() {
        return Err(otp_not_allowed());
    }
    let row = load(state, id.clone()).await?;
    if row.user_id != user_id {
        return Err(Problem::forbidden("this request belongs to another user"));
    }
    let now = state.clock.now_unix();
    let master = state.master.clone();
    let (otp, amr, evidence) = match check {
        Check::Otp(code) => (Some(code), ap2_mandate::evidence::amr_otp(), None),
        Check::Passkey { amr, evidence } => (None, amr, Some(evidence)),
    };
    let request_id = id.clone();
    let code_matches = move |stored: &str| match &otp {
        Some(typed) => crypto::open_code(&master, &request_id, stored)
            .is_some_and(|code| crypto::ct_eq(typed, &code)),
        None => true,
    };
    // Signed here, from the request as read, in parallel with other approvals; the store
    // keeps it only if the request is still pending when the approval commits. A request that
    // is not pending, or a wrong code, signs nothing.
    let mandate = if row.status_at(now) == Status::PendingApproval && code_matches(&row.otp) {
        let signer = signer_for(state, &user_id).await?;
        let claims = claims_for(&row, &state.issuer, now, amr).map_err(Problem::internal)?;
        let token = ap2_mandate::mint(signer.as_ref(), &claims).map_err(Problem::internal)?;
        Some((token, claims.exp))
    } else {
        None
    };
    let attempt = Attempt {
        id,
        user_id,
        code_matches: Box::new(code_matches),
        now,
        max_attempts: MAX_OTP_ATTEMPTS,
        mandate,
        evidence,
    };
    let outcome = stored_or(state.store.approve(attempt).await, request_not_found)?;
    match outcome {
        Approval::Approved(row) => {
            tracing::info!(request_id = %row.id, user_id = %row.user_id, "request approved; mandate minted");
            Ok(*row)
        }
        Approval::WrongCode { remaining } => Err(unprocessable(
            "otp_invalid",
            format!("the code is wrong; {remaining} tries left"),
        )),
        Approval::Locked => Err(Problem::new(
            StatusCode::LOCKED,
            "request_locked",
            "too many wrong codes: the request is locked",
        )),
        Approval::Expired => Err(Problem::new(
            StatusCode::GONE,
            "request_expired",
            "the approval window has passed",
        )),
        Approval::NotPending(status) => Err(Problem::new(
            StatusCode::CONFLICT,
            "request_not_pending",
            format!("the request is {}", status.as_str()),
        )),
    }
}

/// The claims for an approved request: issued now, living `ttl_secs`.
fn claims_for(
    row: &RequestRow,
    issuer: &str,
    now: i64,
    amr: Vec<String>,
) -> Result<IntentMandate, String> {
    let currency = ap2_mandate::Currency::parse(&row.currency).map_err(|e| e.to_string())?;
    Ok(IntentMandate {
        iss: issuer.to_owned(),
        sub: row.user_id.clone(),
        aud: MerchantId::parse(&row.merchant_id).map_err(|e| e.to_string())?,
        iat: now,
        nbf: None,
        exp: now.saturating_add(row.ttl_secs),
        jti: Jti::random().map_err(|e| e.to_string())?,
        scope: Ap2Scope {
            max_amount: Money::parse(&row.max_amount, currency).map_err(|e| e.to_string())?,
            cart_hash: CartHash::parse(&row.cart_hash).map_err(|e| e.to_string())?,
            allow_agent_id: AgentId::parse(&row.agent_id).map_err(|e| e.to_string())?,
        },
        cnf: row
            .cnf_jkt
            .as_deref()
            .map(Jkt::parse)
            .transpose()
            .map_err(|e| e.to_string())?,
        amr: Some(amr),
    })
}

/// The user says no.
#[utoipa::path(post, path = "/v1/mandate-requests/{id}/deny", tag = "mandate-requests", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, description = "denied", body = Object),
        (status = 404, description = "`request_not_found`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 409, description = "`request_not_pending`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn deny(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<View>, Problem> {
    let user_id = caller.user()?;
    let row = finish_denial(&state, id, user_id).await?;
    Ok(ApiJson(view(row, state.clock.now_unix())))
}

/// Denies `user_id`'s pending request `id`.
pub async fn finish_denial(
    state: &AppState,
    id: String,
    user_id: String,
) -> Result<RequestRow, Problem> {
    let row = load(state, id.clone()).await?;
    if row.user_id != user_id {
        return Err(Problem::forbidden("this request belongs to another user"));
    }
    let now = state.clock.now_unix();
    match stored_or(
        state.store.deny(&id, &user_id, now).await,
        request_not_found,
    )? {
        Ok(row) => {
            tracing::info!(request_id = %row.id, user_id = %row.user_id, "request denied");
            Ok(row)
        }
        Err(status) => Err(Problem::new(
            StatusCode::CONFLICT,
            "request_not_pending",
            format!("the request is {}", status.as_str()),
        )),
    }
}

/// `GET /v1/mandate-requests/{id}/evidence` (SPEC §12): the stored assertion of a passkey
/// approval, for the request's user or the admin. 404 `evidence_not_found` when the request
/// was not approved with a passkey.
#[utoipa::path(get, path = "/v1/mandate-requests/{id}/evidence", tag = "mandate-requests", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, description = "the evidence of a passkey approval (SPEC §12)", body = Object),
        (status = 404, description = "`request_not_found`, `evidence_not_found`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn evidence(
    State(state): State<AppState>,
    caller: super::AdminOrCaller,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<Value>, Problem> {
    let row = load(&state, id.clone()).await?;
    match caller {
        super::AdminOrCaller::Admin => {}
        super::AdminOrCaller::Caller(caller) => {
            if caller.user()? != row.user_id {
                return Err(Problem::forbidden("this request belongs to another user"));
            }
        }
    }
    let stored = stored(state.store.evidence(&id).await)?;
    let stored = stored.ok_or_else(|| {
        Problem::not_found(
            "evidence_not_found",
            "the request was not approved with a passkey",
        )
    })?;
    serde_json::from_str(&stored)
        .map(ApiJson)
        .map_err(Problem::internal)
}
