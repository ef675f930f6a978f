//! OpenAPI 3.1 documents (SPEC §13): each service derives its document from its handlers'
//! `#[utoipa::path]` attributes and types; this module adds what every service shares — the
//! problem body with the service's own list of codes, the bearer scheme — and serves it.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The codes every service may answer, whatever the route (the standard layers' and the
/// extractors').
pub const COMMON_CODES: &[&str] = &[
    "body_too_large",
    "internal_error",
    "invalid_body",
    "invalid_path",
    "method_not_allowed",
    "not_found",
    "timeout",
    "unsupported_media_type",
];

/// RFC 9457 problem details, as every error is answered (`application/problem+json`).
#[derive(utoipa::ToSchema)]
#[schema(as = Problem)]
#[allow(dead_code)]
pub struct ProblemSchema {
    /// Always `about:blank`.
    #[schema(rename = "type")]
    kind: String,
    /// The status's reason phrase.
    title: String,
    /// The HTTP status.
    status: u16,
    /// The stable code a client branches on.
    code: String,
    /// What went wrong, for a person.
    detail: String,
}

/// `doc` as JSON, with the problem schema's `code` restricted to `codes` (and the common
/// ones), sorted, and the `bearer` security scheme.
pub fn finish(doc: utoipa::openapi::OpenApi, codes: &[&str]) -> Value {
    let mut value = serde_json::to_value(&doc).unwrap_or(Value::Null);
    let mut all: Vec<&str> = codes.iter().chain(COMMON_CODES).copied().collect();
    all.sort_unstable();
    all.dedup();
    if let Some(code) = value.pointer_mut("/components/schemas/Problem/properties/code") {
        code["enum"] = json!(all);
    }
    if let Some(components) = value.get_mut("components").and_then(Value::as_object_mut) {
        components.insert(
            "securitySchemes".into(),
            json!({"bearer": {"type": "http", "scheme": "bearer"}}),
        );
    }
    value
}

/// `GET /openapi.json`: the document.
pub fn serve(document: &Value) -> Response {
    let mut response = axum::Json(document).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}
