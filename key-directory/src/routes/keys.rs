//! `/v1/keys`, `/v1/keys/{kid}`, `/v1/keys/{kid}/revoke`, `/.well-known/jwks.json`.

use ap2_mandate::{EcPublicKey, KeyError, Kid};
use ap2_service::problem::{ApiJson, ApiPath, Problem};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{AppState, Issuer, blocking, store_unavailable};
use crate::store::{KeyEntry, Registered, StoreError};

/// Longest subject accepted, in bytes.
pub const MAX_SUBJECT_LEN: usize = 256;

/// `POST /v1/keys` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The user the key belongs to (1..=256 bytes, no control characters).
    #[schema(min_length = 1, max_length = 256, pattern = "^[^\\x00-\\x1f\\x7f]+$")]
    pub subject: String,
    /// The public JWK: `kty` `EC`, `crv` `P-256`, `x`, `y`; `kid` optional (default: its RFC
    /// 7638 thumbprint).
    #[schema(value_type = Object)]
    pub jwk: Value,
}

/// A key as served.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyView<'a> {
    /// Its id.
    kid: &'a str,
    /// The wallet that registered it.
    issuer: &'a str,
    /// Its user.
    subject: &'a str,
    /// `active` or `revoked`.
    #[schema(value_type = String, pattern = "^(active|revoked)$")]
    status: &'static str,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339, once revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
    /// The public JWK.
    #[schema(value_type = Object)]
    jwk: &'a Value,
}

/// `GET /.well-known/jwks.json`: the active keys (RFC 7517 JWK Set).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Jwks {
    /// The public JWKs.
    #[schema(value_type = Vec<Object>)]
    keys: Vec<Value>,
}

impl<'a> KeyView<'a> {
    fn of(entry: &'a KeyEntry) -> Self {
        Self {
            kid: &entry.kid,
            issuer: &entry.issuer,
            subject: &entry.subject,
            status: if entry.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            },
            created_at: ap2_service::rfc3339(entry.created_at),
            revoked_at: entry.revoked_at.map(ap2_service::rfc3339),
            jwk: &entry.jwk,
        }
    }
}

fn unprocessable(code: &'static str, detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
}

fn jwk_problem(err: &KeyError) -> Problem {
    let code = match err {
        KeyError::PrivateMember(_) => "jwk_private_member",
        KeyError::KeyType => "jwk_unsupported_key_type",
        KeyError::Curve => "jwk_unsupported_curve",
        KeyError::Coordinates => "jwk_invalid_coordinates",
        KeyError::NotOnCurve => "jwk_not_on_curve",
        KeyError::Usage => "jwk_invalid_usage",
        KeyError::Kid(_) => "kid_invalid",
        _ => "jwk_invalid",
    };
    unprocessable(code, err.to_string())
}

fn check_subject(subject: &str) -> Result<(), Problem> {
    if subject.is_empty()
        || subject.len() > MAX_SUBJECT_LEN
        || subject.chars().any(char::is_control)
    {
        return Err(unprocessable(
            "subject_invalid",
            format!("subject is 1..={MAX_SUBJECT_LEN} bytes without control characters"),
        ));
    }
    Ok(())
}

fn check_kid(kid: &str) -> Result<(), Problem> {
    Kid::check(kid).map_err(|e| Problem::bad_request("kid_invalid", e.to_string()))
}

fn with_max_age(mut response: Response, max_age: u32) -> Response {
    if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    response
}

/// Registers a key under the caller's issuer.
#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = RegisterRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "registered", body = KeyView),
        (status = 200, description = "the same key, issuer and subject again", body = KeyView),
        (status = 400, description = "`invalid_body`: not JSON, or not this object", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 401, description = "`unauthorized`: not an issuer's token", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 409, description = "`key_conflict`, `key_revoked`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 422, description = "`subject_invalid`, `jwk_*`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn register(
    State(state): State<AppState>,
    Issuer(issuer): Issuer,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<Response, Problem> {
    check_subject(&request.subject)?;
    let (public, kid) = EcPublicKey::from_jwk(&request.jwk).map_err(|e| jwk_problem(&e))?;
    let thumbprint = public.thumbprint();
    let kid = kid.unwrap_or_else(|| thumbprint.clone());
    let entry = KeyEntry {
        kid: kid.to_string(),
        issuer,
        subject: request.subject,
        thumbprint: thumbprint.to_string(),
        jwk: public.to_jwk(&kid),
        created_at: state.clock.now_unix(),
        revoked_at: None,
    };
    let outcome = blocking(&state, move |store| store.register(entry)).await?;
    let (status, entry) = match outcome {
        Ok(Registered::Created(entry)) => {
            tracing::info!(kid = %entry.kid, issuer = %entry.issuer, subject = %entry.subject, "key registered");
            (StatusCode::CREATED, entry)
        }
        Ok(Registered::Existing(entry)) => (StatusCode::OK, entry),
        Err(StoreError::KidTaken) => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "key_conflict",
                "this kid is registered with another key, issuer or subject",
            ));
        }
        Err(StoreError::KeyTaken) => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "key_conflict",
                "this public key is registered under another kid",
            ));
        }
        Err(StoreError::Revoked) => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "key_revoked",
                "this key was revoked and cannot be registered again",
            ));
        }
        Err(e) => return Err(store_unavailable(&e.to_string())),
    };
    let mut response = (status, axum::Json(KeyView::of(&entry))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/keys/{}", entry.kid)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Fetches a key by kid, active or revoked.
#[utoipa::path(get, path = "/v1/keys/{kid}", tag = "keys",
    params(("kid" = String, Path, pattern = "^[A-Za-z0-9._:-]{1,128}$", description = "1..=128 characters of [A-Za-z0-9._:-]")),
    responses(
        (status = 200, description = "the key (`Cache-Control: max-age`)", body = KeyView),
        (status = 400, description = "`kid_invalid`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 404, description = "`key_not_found`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(kid): ApiPath<String>,
) -> Result<Response, Problem> {
    check_kid(&kid)?;
    match blocking(&state, move |store| store.get(&kid)).await? {
        Ok(Some(entry)) => Ok(with_max_age(
            axum::Json(KeyView::of(&entry)).into_response(),
            state.key_max_age_secs,
        )),
        Ok(None) => Err(Problem::not_found("key_not_found", "no key has this kid")),
        Err(e) => Err(store_unavailable(&e.to_string())),
    }
}

/// Revokes a key; only its issuer may.
#[utoipa::path(post, path = "/v1/keys/{kid}/revoke", tag = "keys",
    params(("kid" = String, Path, pattern = "^[A-Za-z0-9._:-]{1,128}$", description = "the key's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "revoked (again: unchanged)", body = KeyView),
        (status = 400, description = "`kid_invalid`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 401, description = "`unauthorized`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: another issuer's key", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 404, description = "`key_not_found`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn revoke(
    State(state): State<AppState>,
    Issuer(issuer): Issuer,
    ApiPath(kid): ApiPath<String>,
) -> Result<Response, Problem> {
    check_kid(&kid)?;
    let now = state.clock.now_unix();
    let caller = issuer.clone();
    let revoked = blocking(&state, move |store| {
        let entry = store.revoke(&kid, &caller, now)?;
        Ok((entry, store.last_revocation()?))
    });
    match revoked.await? {
        Ok((entry, last)) => {
            state.events.committed(last);
            tracing::info!(kid = %entry.kid, issuer = %issuer, "key revoked");
            Ok(axum::Json(KeyView::of(&entry)).into_response())
        }
        Err(StoreError::NotFound) => {
            Err(Problem::not_found("key_not_found", "no key has this kid"))
        }
        Err(StoreError::NotYours) => Err(Problem::forbidden(
            "only the issuer that registered a key may revoke it",
        )),
        Err(e) => Err(store_unavailable(&e.to_string())),
    }
}

/// The active keys as a JWK Set.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "keys",
    responses(
        (status = 200, description = "the active keys", body = Jwks),
        (status = 503, description = "`store_unavailable`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn jwks(State(state): State<AppState>) -> Result<Response, Problem> {
    match blocking(&state, |store| store.active()).await? {
        Ok(entries) => {
            let keys: Vec<&Value> = entries.iter().map(|e| &e.jwk).collect();
            Ok(with_max_age(
                axum::Json(serde_json::json!({ "keys": keys })).into_response(),
                state.key_max_age_secs,
            ))
        }
        Err(e) => Err(store_unavailable(&e.to_string())),
    }
}
