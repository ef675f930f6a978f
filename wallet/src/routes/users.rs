//! `POST /v1/users` and `GET /v1/users/{id}/notifications`.

use ap2_directory_client::ClientError;
use ap2_mandate::{AgentId, Signer};
use ap2_service::problem::{ApiJson, ApiPath, Problem};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Admin, AppState, Caller, stored, stored_or};
use crate::crypto;
use crate::store::UserRow;

/// `POST /v1/users` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    user_id: String,
}

/// `POST /v1/users` answer. The user token is shown once; the wallet keeps only its hash.
#[derive(Debug, Serialize)]
pub struct CreatedUser {
    user_id: String,
    kid: String,
    user_token: String,
}

/// Creates a user: a fresh P-256 key, sealed at rest, registered at the key directory.
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = CreateUser, security(("bearer" = [])),
    responses((status = 201, description = "`{user_id, kid, user_token}`: the token is shown once", body = Object),
        (status = 409, description = "`user_exists`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 422, description = "`user_id_invalid`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 502, description = "`key_directory_refused`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 503, description = "`key_directory_unavailable` (nothing was created), `store_unavailable`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, ApiJson<CreatedUser>), Problem> {
    // User ids share the agent-id alphabet: they travel in paths, logs and `sub`.
    AgentId::check(&body.user_id).map_err(|_| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "user_id_invalid",
            "user_id is 1..=128 chars of [A-Za-z0-9._:-]",
        )
    })?;
    let signer = ap2_mandate::LocalSigner::generate().map_err(Problem::internal)?;
    let der = signer.to_pkcs8_der().map_err(Problem::internal)?;
    let sealed = state
        .master
        .seal(&body.user_id, &der)
        .map_err(Problem::internal)?;
    let token = crypto::random_token(32).map_err(Problem::internal)?;
    let row = UserRow {
        user_id: body.user_id.clone(),
        kid: signer.kid().to_string(),
        token_hash: crypto::token_hash(&token),
        sealed_key: sealed,
        registered: false,
        created_at: state.clock.now_unix(),
        key_revoked_at: None,
    };
    stored(state.store.create_user(row).await)?;
    let jwk = signer.public_key().to_jwk(signer.kid());
    if let Err(err) = state
        .directory
        .register(&state.directory_token, &body.user_id, &jwk)
        .await
    {
        stored(state.store.delete_unregistered_user(&body.user_id).await)?;
        tracing::error!(user_id = %body.user_id, error = %err, "the key directory did not take the key");
        return Err(match err {
            ClientError::Unavailable(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "key_directory_unavailable",
                "the key directory could not be reached; nothing was created",
            ),
            ClientError::Refused { .. } => Problem::new(
                StatusCode::BAD_GATEWAY,
                "key_directory_refused",
                "the key directory refused the key; nothing was created",
            ),
        });
    }
    stored(state.store.mark_registered(&body.user_id).await)?;
    let kid = signer.kid().to_string();
    state
        .signers
        .replaced(&body.user_id, std::sync::Arc::new(signer));
    tracing::info!(user_id = %body.user_id, %kid, "user created and key registered");
    Ok((
        StatusCode::CREATED,
        ApiJson(CreatedUser {
            user_id: body.user_id,
            kid,
            user_token: token,
        }),
    ))
}

/// `POST /v1/users/{id}/keys/rotate` answer.
#[derive(Debug, Serialize)]
pub struct Rotated {
    user_id: String,
    /// The new key's kid: every mandate from now on is signed with it.
    kid: String,
    /// The key it replaces.
    previous_kid: String,
    /// Whether the directory has revoked the previous key yet; if not, the wallet retries
    /// until it has (it never signs with it again either way).
    previous_revoked: bool,
}

/// Gives the user a new key (SPEC §10): the admin, or the user. The new key is registered at
/// the directory first; only then does it replace the old one (in one transaction), and the
/// old one is revoked at the directory. A directory that cannot be reached leaves everything
/// as it was (503); a revocation that fails after the swap is retried in the background.
#[utoipa::path(post, path = "/v1/users/{id}/keys/rotate", tag = "users", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, description = "`{user_id, kid, previous_kid, previous_revoked}`", body = Object),
        (status = 404, description = "`user_not_found`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 502, description = "`key_directory_refused`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 503, description = "`key_directory_unavailable` (the key is unchanged), `store_unavailable`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn rotate(
    State(state): State<AppState>,
    caller: super::AdminOrCaller,
    ApiPath(user_id): ApiPath<String>,
) -> Result<ApiJson<Rotated>, Problem> {
    if let super::AdminOrCaller::Caller(caller) = caller
        && caller.user()? != user_id
    {
        return Err(Problem::forbidden("this is another user's key"));
    }
    stored(state.store.user(&user_id).await)?.ok_or_else(super::user_not_found)?;
    let signer = ap2_mandate::LocalSigner::generate().map_err(Problem::internal)?;
    let der = signer.to_pkcs8_der().map_err(Problem::internal)?;
    let sealed = state
        .master
        .seal(&user_id, &der)
        .map_err(Problem::internal)?;
    let jwk = signer.public_key().to_jwk(signer.kid());
    // A crash after this leaves a registered key nobody holds: harmless, never signed with.
    state
        .directory
        .register(&state.directory_token, &user_id, &jwk)
        .await
        .map_err(|err| {
            tracing::error!(%user_id, error = %err, "rotation: the key directory did not take the new key");
            match err {
                ClientError::Unavailable(_) => Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "key_directory_unavailable",
                    "the key directory could not be reached; the key is unchanged",
                ),
                ClientError::Refused { .. } => Problem::new(
                    StatusCode::BAD_GATEWAY,
                    "key_directory_refused",
                    "the key directory refused the new key; the key is unchanged",
                ),
            }
        })?;
    let kid = signer.kid().to_string();
    let previous = stored_or(
        state
            .store
            .rotate_key(&user_id, &kid, &sealed, state.clock.now_unix())
            .await,
        super::user_not_found,
    )?;
    state
        .signers
        .replaced(&user_id, std::sync::Arc::new(signer));
    let previous_revoked = crate::revoke_retired(&state, &previous).await;
    if !previous_revoked {
        crate::retry_retired_revocations(state.clone());
    }
    tracing::info!(%user_id, %kid, %previous, previous_revoked, "user key rotated");
    Ok(ApiJson(Rotated {
        user_id,
        kid,
        previous_kid: previous,
        previous_revoked,
    }))
}

/// One pending request as the user sees it, with its code: the out-of-band channel.
#[derive(Debug, Serialize)]
pub struct Notification {
    request_id: String,
    merchant_id: String,
    agent_id: String,
    cart: Value,
    max_amount: String,
    currency: String,
    /// Absent when the wallet approves with passkeys only.
    #[serde(skip_serializing_if = "Option::is_none")]
    otp: Option<String>,
    /// The approval page of this request (SPEC §12).
    approval_url: String,
    expires_at: String,
    /// The agent key the mandate will be bound to, so the user can tell a request made with
    /// an unfamiliar key.
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf_jkt: Option<String>,
}

/// `?limit=&cursor=` of the notifications (SPEC §9).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// Notifications per page by default, and at most.
const PAGE_DEFAULT: u32 = 50;
const PAGE_MAX: u32 = 200;

/// A cursor is the last notification's `(created_at, request id)`, base64url, opaque to the
/// client.
fn cursor_of(row: &crate::store::RequestRow) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}.{}", row.created_at, row.id))
}

fn parse_cursor(cursor: &str) -> Option<(i64, String)> {
    use base64::Engine;
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let text = String::from_utf8(text).ok()?;
    let (time, id) = text.split_once('.')?;
    Some((time.parse().ok()?, id.to_owned()))
}

/// The user's pending requests, oldest first, a page at a time.
#[utoipa::path(get, path = "/v1/users/{id}/notifications", tag = "users",
    params(("id" = String, Path), ("limit" = Option<u32>, Query, minimum = 1, maximum = 200), ("cursor" = Option<String>, Query)),
    security(("bearer" = [])),
    responses((status = 200, description = "`{notifications: [...], next_cursor?}`", body = Object)))]
pub async fn notifications(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user_id): ApiPath<String>,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<ApiJson<Value>, Problem> {
    if caller.user()? != user_id {
        return Err(Problem::forbidden("these are another user's notifications"));
    }
    let Query(page) = page.map_err(|e| Problem::bad_request("invalid_query", e.body_text()))?;
    let limit = page.limit.unwrap_or(PAGE_DEFAULT);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(Problem::bad_request(
            "invalid_query",
            format!("limit is 1..={PAGE_MAX}"),
        ));
    }
    let after = match &page.cursor {
        None => None,
        Some(cursor) => Some(parse_cursor(cursor).ok_or_else(|| {
            Problem::bad_request("invalid_query", "the cursor is not one of ours")
        })?),
    };
    let now = state.clock.now_unix();
    let after = after.as_ref().map(|(time, id)| (*time, id.as_str()));
    let mut pending = stored(
        state
            .store
            .pending_for_user(&user_id, now, after, limit + 1)
            .await,
    )?;
    let more = pending.len() > limit as usize;
    pending.truncate(limit as usize);
    let next_cursor = pending.last().filter(|_| more).map(cursor_of);
    let notifications: Vec<Notification> = pending
        .into_iter()
        .map(|r| notification(&state, r))
        .collect::<Result<_, _>>()?;
    Ok(ApiJson(match next_cursor {
        Some(cursor) => {
            serde_json::json!({ "notifications": notifications, "next_cursor": cursor })
        }
        None => serde_json::json!({ "notifications": notifications }),
    }))
}

/// A pending request as the user is told of it: what is bought, the page to approve it at,
/// and the code unless the wallet approves with passkeys only.
pub fn notification(
    state: &AppState,
    r: crate::store::RequestRow,
) -> Result<Notification, Problem> {
    let approval_url = crate::approval::approval_url(&state.master, state.public_url.as_str(), &r)
        .map_err(Problem::internal)?;
    Ok(Notification {
        otp: if state.approval.otp() {
            crate::crypto::open_code(&state.master, &r.id, &r.otp).map(|code| code.to_string())
        } else {
            None
        },
        approval_url,
        cart: serde_json::from_str(&r.cart).unwrap_or(Value::Null),
        request_id: r.id,
        merchant_id: r.merchant_id,
        agent_id: r.agent_id,
        max_amount: r.max_amount,
        currency: r.currency,
        expires_at: ap2_service::rfc3339(r.expires_at),
        cnf_jkt: r.cnf_jkt,
    })
}

/// `POST /v1/users/{id}/enrollment-links` (admin): a link to the page where the user enrols a
/// passkey (SPEC §12), valid for `--enrollment-link-ttl-secs`.
#[utoipa::path(post, path = "/v1/users/{id}/enrollment-links", tag = "users", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 201, description = "`{user_id, url, expires_at}`", body = Object),
        (status = 404, description = "`user_not_found`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn enrollment_link(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(user_id): ApiPath<String>,
) -> Result<(StatusCode, ApiJson<Value>), Problem> {
    let user = stored(state.store.user(&user_id).await)?;
    if !user.is_some_and(|u| u.registered) {
        return Err(super::user_not_found());
    }
    let expires_at = state
        .clock
        .now_unix()
        .saturating_add(state.enrollment_link_ttl_secs);
    let url = crate::approval::enrollment_url(
        &state.master,
        state.public_url.as_str(),
        &user_id,
        expires_at,
    )
    .map_err(Problem::internal)?;
    Ok((
        StatusCode::CREATED,
        ApiJson(serde_json::json!({
            "user_id": user_id,
            "url": url,
            "expires_at": ap2_service::rfc3339(expires_at),
        })),
    ))
}
