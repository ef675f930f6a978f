//! `/v1/checkout-sessions`: priced from the catalog, completed with a verified mandate.

use std::collections::HashSet;

use ap2_mandate::cart::{MAX_LINE_ITEMS, MAX_QUANTITY};
use ap2_mandate::{AgentId, AuthScheme, Cart, Consume, LineItem, Presentation, ProofPresentation};
use ap2_service::auth::{BearerError, Scheme, authorization};
use ap2_service::problem::{ApiJson, ApiPath, Problem};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{AppState, dpop, stored, unprocessable, verify};
use crate::store::{OrderRow, SessionRow, SessionStatus, StoreError};

/// The header naming the presenting agent.
pub const AGENT_HEADER: &str = "ap2-agent-id";

/// `POST /v1/checkout-sessions` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    line_items: Vec<RequestedItem>,
}

/// A product and how many.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestedItem {
    id: String,
    quantity: i64,
}

/// A session as served.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    id: String,
    /// `ready_for_complete`, `charging`, `completed`.
    #[schema(value_type = String)]
    status: &'static str,
    /// The SPEC §3 cart the merchant priced.
    #[schema(value_type = Object)]
    cart: Value,
    cart_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<String>,
}

impl From<SessionRow> for SessionView {
    fn from(s: SessionRow) -> Self {
        Self {
            status: s.status.as_str(),
            cart: serde_json::from_str(&s.cart).unwrap_or(Value::Null),
            id: s.id,
            cart_hash: s.cart_hash,
            order_id: s.order_id,
        }
    }
}

/// A fresh session or order id: the prefix and a time-ordered id (ap2_service::ids).
fn new_id(prefix: &str, now_unix: i64) -> Result<String, Problem> {
    let id = ap2_service::ids::time_ordered(now_unix).map_err(Problem::internal)?;
    Ok(format!("{prefix}_{id}"))
}

/// Prices the requested items from the catalog and opens a session for the cart, owned by
/// the key of the agent's proof.
#[utoipa::path(post, path = "/v1/checkout-sessions", tag = "checkout", request_body = CreateSession,
    params(("DPoP" = Option<String>, Header, description = "the agent's proof (SPEC §8); the session is its key's")),
    responses(
        (status = 201, description = "opened", body = SessionView),
        (status = 422, description = "`product_unknown`, `quantity_invalid`, `line_items_empty`, `line_item_duplicate`, `too_many_line_items`, `currency_mixed`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 429, description = "`too_many_sessions`: the key's open sessions are at the cap", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 400, description = "`invalid_body`, `agent_id_required`, `agent_id_invalid`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 401, description = "a SPEC §4 or §8 code (`mandate_*`, `dpop_*`), with `WWW-Authenticate`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 503, description = "`key_directory_unavailable`, `replay_store_unavailable`, `store_unavailable`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateSession>,
) -> Result<(StatusCode, ApiJson<SessionView>), Problem> {
    let owner = dpop::agent_key(
        &state,
        &headers,
        "POST",
        "/v1/checkout-sessions",
        dpop::Record::Yes,
    )
    .await?;
    if body.line_items.is_empty() {
        return Err(unprocessable(
            "line_items_empty",
            "a checkout needs at least one item",
        ));
    }
    if body.line_items.len() > MAX_LINE_ITEMS {
        return Err(unprocessable(
            "too_many_line_items",
            format!("a checkout has at most {MAX_LINE_ITEMS} line items"),
        ));
    }
    let mut seen = HashSet::new();
    let mut items = Vec::with_capacity(body.line_items.len());
    let mut currency = None;
    for requested in &body.line_items {
        let product = state.catalog.get(&requested.id).ok_or_else(|| {
            unprocessable("product_unknown", format!("no product {:?}", requested.id))
        })?;
        if !seen.insert(requested.id.as_str()) {
            return Err(unprocessable(
                "line_item_duplicate",
                format!(
                    "{:?} appears twice; ask for a larger quantity",
                    requested.id
                ),
            ));
        }
        let quantity = u32::try_from(requested.quantity)
            .ok()
            .filter(|q| (1..=MAX_QUANTITY).contains(q))
            .ok_or_else(|| {
                unprocessable(
                    "quantity_invalid",
                    format!("quantity is 1..={MAX_QUANTITY}"),
                )
            })?;
        if *currency.get_or_insert(product.currency) != product.currency {
            return Err(unprocessable(
                "currency_mixed",
                "the products are in several currencies",
            ));
        }
        items.push(LineItem {
            id: product.id.clone(),
            title: product.title.clone(),
            quantity,
            unit_price: product.unit_price,
        });
    }
    let currency = currency.ok_or_else(|| Problem::internal("no currency"))?;
    let cart = Cart::new(state.merchant_id.clone(), currency, items)
        .map_err(|e| unprocessable("cart_invalid", e.to_string()))?;
    let now = state.clock.now_unix();
    let row = SessionRow {
        id: new_id("cs", now)?,
        cart: serde_json::to_string(&cart).map_err(Problem::internal)?,
        cart_hash: cart.hash().to_string(),
        status: SessionStatus::ReadyForComplete,
        created_at: now,
        order_id: None,
        owner_jkt: owner.map(|jkt| jkt.to_string()),
    };
    let cap = Some((
        state.max_open_sessions,
        row.created_at.saturating_sub(state.session_ttl_secs),
    ));
    match stored(state.store.create_session(&row, cap).await)? {
        Ok(()) => {}
        Err(StoreError::TooManySessions) => {
            return Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sessions",
                format!(
                    "this agent key has {} open checkout sessions, the most allowed; complete \
                     one or let it expire",
                    state.max_open_sessions
                ),
            ));
        }
        Err(e) => return Err(Problem::internal(e)),
    }
    Ok((StatusCode::CREATED, ApiJson(row.into())))
}

fn session_not_found() -> Problem {
    Problem::not_found("session_not_found", "no such checkout session")
}

/// The session, if the caller (the key of its proof, if any) may see it: a session opened
/// with a proof is another key's business, and looks exactly like one that does not exist.
async fn load(state: &AppState, id: String, caller: Option<&str>) -> Result<SessionRow, Problem> {
    let session = stored(state.store.session(&id).await)?
        .map_err(Problem::internal)?
        .ok_or_else(session_not_found)?;
    match &session.owner_jkt {
        Some(owner) if Some(owner.as_str()) != caller => return Err(session_not_found()),
        _ => {}
    }
    // SPEC §9: an open session lives `--session-ttl-secs`; a completed one stays readable.
    if session.status == SessionStatus::ReadyForComplete
        && state.clock.now_unix() >= session.created_at.saturating_add(state.session_ttl_secs)
    {
        return Err(Problem::new(
            StatusCode::GONE,
            "session_expired",
            "the checkout session has expired; open a new one",
        ));
    }
    Ok(session)
}

/// `GET /v1/checkout-sessions/{id}`.
#[utoipa::path(get, path = "/v1/checkout-sessions/{id}", tag = "checkout",
    params(("id" = String, Path, description = "the session"),
           ("DPoP" = Option<String>, Header, description = "a proof of the opener's key")),
    responses(
        (status = 200, description = "the session", body = SessionView),
        (status = 404, description = "`session_not_found` (also another key's session)", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 410, description = "`session_expired`: open longer than `--session-ttl-secs`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 400, description = "`invalid_body`, `agent_id_required`, `agent_id_invalid`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 401, description = "a SPEC §4 or §8 code (`mandate_*`, `dpop_*`), with `WWW-Authenticate`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 503, description = "`key_directory_unavailable`, `replay_store_unavailable`, `store_unavailable`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<SessionView>, Problem> {
    let caller = dpop::agent_key(&state, &headers, "GET", uri.path(), dpop::Record::No).await?;
    let session = load(&state, id, caller.as_ref().map(|jkt| jkt.as_str())).await?;
    Ok(ApiJson(session.into()))
}

fn already_done(status: SessionStatus) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "session_completed",
        format!("the session is {}", status.as_str()),
    )
}

/// `POST /v1/checkout-sessions/{id}/complete`: verify the mandate and the agent's proof
/// against this session's cart (SPEC §4, §8), charge exactly the cart's total, complete the
/// session, once.
#[utoipa::path(post, path = "/v1/checkout-sessions/{id}/complete", tag = "checkout",
    params(("id" = String, Path, description = "the session"),
           ("AP2-Agent-Id" = String, Header, description = "the presenting agent"),
           ("DPoP" = Option<String>, Header, description = "the agent's proof, with `ath`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`{status, order_id, amount, currency, mandate: {jti, sub, kid, amr}}`", body = Object),
        (status = 402, description = "`payment_failed`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 404, description = "`session_not_found`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 409, description = "`session_completed`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 410, description = "`session_expired`: open longer than `--session-ttl-secs`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 400, description = "`invalid_body`, `agent_id_required`, `agent_id_invalid`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 401, description = "a SPEC §4 or §8 code (`mandate_*`, `dpop_*`), with `WWW-Authenticate`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 503, description = "`key_directory_unavailable`, `replay_store_unavailable`, `store_unavailable`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn complete(
    State(state): State<AppState>,
    uri: Uri,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<ApiJson<Value>, Problem> {
    let (scheme, token) = match authorization(&headers) {
        Ok((Scheme::Bearer, token)) => (AuthScheme::Bearer, token),
        Ok((Scheme::Dpop, token)) => (AuthScheme::Dpop, token),
        Err(BearerError::Missing) => return Err(dpop::mandate_required(&state)),
        Err(BearerError::Malformed) => {
            return Err(super::refusal(
                &ap2_mandate::VerifyError::Malformed(
                    "the Authorization header is not DPoP <mandate> or Bearer <mandate>",
                ),
                state.binding_required(),
            ));
        }
    };
    let agent_id = match headers.get(AGENT_HEADER) {
        None => {
            return Err(Problem::bad_request(
                "agent_id_required",
                "the AP2-Agent-Id header is required",
            ));
        }
        Some(value) => match value.to_str().ok().filter(|v| AgentId::check(v).is_ok()) {
            Some(id) => id.to_owned(),
            // Present but not an agent id (empty, non-ASCII, another alphabet): no mandate
            // can name it, and it is not logged.
            None => {
                return Err(Problem::bad_request(
                    "agent_id_invalid",
                    "AP2-Agent-Id is 1..=128 characters of [A-Za-z0-9._:-]",
                ));
            }
        },
    };
    // The proof's form and signature first: its key decides whose session this is, before
    // the mandate is looked at (SPEC §8).
    let proof = dpop::parse(&state, &headers)?;
    let session = load(&state, id, proof.as_ref().map(|p| p.jkt().as_str())).await?;
    // A finished session is refused before the mandate is looked at, so it is not spent.
    if session.status != SessionStatus::ReadyForComplete {
        return Err(already_done(session.status));
    }
    let cart = Cart::from_json(session.cart.as_bytes()).map_err(Problem::internal)?;
    let htu = match &proof {
        Some(_) => Some(dpop::htu(&state, uri.path())?),
        None => None,
    };
    let presentation = Presentation {
        token,
        scheme,
        agent_id: &agent_id,
        cart: &cart,
        proof: proof
            .as_ref()
            .zip(htu.as_ref())
            .map(|(proof, htu)| ProofPresentation {
                proof,
                htm: "POST",
                htu,
            }),
    };
    let verified = verify(&state, &presentation, Consume::Yes).await?;
    let claims = &verified.claims;
    let amount = cart.total();
    let now = state.clock.now_unix();
    let order = OrderRow {
        id: new_id("ord", now)?,
        session_id: session.id.clone(),
        amount: i64::try_from(amount.minor_units()).map_err(Problem::internal)?,
        currency: amount.currency().code().to_owned(),
        mandate: token.to_owned(),
        claims: serde_json::to_string(claims).map_err(Problem::internal)?,
        iss: claims.iss.clone(),
        jti: claims.jti.to_string(),
        sub: claims.sub.clone(),
        kid: verified.kid.to_string(),
        agent_id: agent_id.clone(),
        charge_id: None,
        created_at: now,
        agent_jkt: verified.proof_jkt.as_ref().map(|jkt| jkt.to_string()),
    };
    match stored(state.store.begin_order(&order).await)? {
        Ok(()) => {}
        Err(StoreError::NotReady(status)) => return Err(already_done(status)),
        Err(StoreError::MandateUsed) => {
            return Err(super::refusal(
                &ap2_mandate::VerifyError::Replayed,
                scheme == AuthScheme::Dpop || state.binding_required(),
            ));
        }
        Err(StoreError::NotFound) => return Err(session_not_found()),
        Err(
            e @ (StoreError::Backend(_) | StoreError::TooManySessions | StoreError::OrderNotHeld),
        ) => {
            return Err(Problem::internal(e));
        }
    }
    let charge = match state.payments.charge(&order.id, amount).await {
        Ok(charge) => charge,
        Err(e) => {
            stored(state.store.abort_order(&order.id).await)?.map_err(Problem::internal)?;
            tracing::warn!(order_id = %order.id, error = %e, "charge failed");
            return Err(Problem::new(
                StatusCode::PAYMENT_REQUIRED,
                "payment_failed",
                e.to_string(),
            ));
        }
    };
    // The money moved: the order must be recorded paid. A store that fails now is tried a few
    // more times (about 3 s); if it is still down the answer is 503 and the merchant's sweep
    // finishes the order later (the same idempotency key charges once).
    let mut tries = 0u32;
    loop {
        let recorded = stored(
            state
                .store
                .finish_order(&order.session_id, &order.id, &charge.charge_id)
                .await,
        );
        match recorded {
            Ok(Ok(())) => break,
            // Besides its own completion (on a failed charge), only the sweep aborts a begun
            // order, one older than `--stuck-order-secs` whose charge the processor refused:
            // that refusal and this charge disagree, and the money is to be returned by hand.
            Ok(Err(StoreError::OrderNotHeld)) => {
                tracing::error!(
                    order_id = %order.id, session_id = %order.session_id,
                    charge_id = %charge.charge_id, amount = %amount,
                    "charged, but the order no longer holds its session; refund the charge"
                );
                return Err(Problem::internal(StoreError::OrderNotHeld));
            }
            Ok(Err(e)) => return Err(Problem::internal(e)),
            Err(unavailable) => {
                tries += 1;
                if tries >= 6 {
                    tracing::error!(order_id = %order.id, "charged, but the order is not recorded yet; the sweep will finish it");
                    return Err(unavailable);
                }
                tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(tries))).await;
            }
        }
    }
    tracing::info!(
        order_id = %order.id, session_id = %order.session_id, amount = %amount,
        currency = %amount.currency(), jti = %claims.jti, sub = %claims.sub, %agent_id,
        "order paid"
    );
    Ok(ApiJson(serde_json::json!({
        "status": "completed",
        "order_id": order.id,
        "amount": amount.minor_units(),
        "currency": amount.currency(),
        "mandate": {"jti": claims.jti, "sub": claims.sub, "kid": verified.kid, "amr": claims.amr},
    })))
}
