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

/// The answers any operation may give, added to each one that does not describe them itself:
/// the standard layers' and extractors' problems.
const COMMON_RESPONSES: &[(&str, &str)] = &[
    (
        "400",
        "`invalid_body`, `invalid_path`, `invalid_query`: the request is not what the operation takes",
    ),
    ("413", "`body_too_large`"),
    ("415", "`unsupported_media_type`"),
    ("500", "`internal_error`"),
    (
        "503",
        "`timeout`, or a dependency is unavailable (`store_unavailable`, …)",
    ),
];

/// What an operation that needs a bearer token may answer besides.
const SECURED_RESPONSES: &[(&str, &str)] = &[
    ("401", "`unauthorized`: no token, or not a valid one"),
    (
        "403",
        "`forbidden`: the token's holder may not do this here",
    ),
];

/// `doc` as JSON: the problem schema's `code` restricted to `codes` (and the common ones),
/// sorted; the common problem answers on every operation (and 401, 403 on those that need a
/// token) unless the operation describes them; the `bearer` security scheme.
pub fn finish(doc: utoipa::openapi::OpenApi, codes: &[&str]) -> Value {
    let mut value = serde_json::to_value(&doc).unwrap_or(Value::Null);
    let problem =
        json!({"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}});
    if let Some(paths) = value.get_mut("paths").and_then(Value::as_object_mut) {
        for operation in paths
            .values_mut()
            .filter_map(Value::as_object_mut)
            .flat_map(|item| item.values_mut())
        {
            let secured = operation.get("security").is_some();
            let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            let extra = if secured { SECURED_RESPONSES } else { &[] };
            for (status, description) in COMMON_RESPONSES.iter().chain(extra) {
                responses
                    .entry(*status)
                    .or_insert_with(|| json!({"description": description, "content": problem}));
            }
        }
    }
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

/// [`finish`] for a service that answers SPEC §4 and §8's codes ([`ap2_mandate::ProblemCode`])
/// besides its own `codes`.
pub fn finish_with_spec_codes(doc: utoipa::openapi::OpenApi, codes: &[&str]) -> Value {
    let mut all: Vec<&str> = codes.to_vec();
    all.extend(ap2_mandate::ProblemCode::ALL.iter().map(|c| c.as_str()));
    finish(doc, &all)
}

/// Defines a service's `pub fn openapi() -> &'static Value`, its document built once from
/// `$doc` (a `utoipa::OpenApi`) by `$finish` ([`finish`] or [`finish_with_spec_codes`]) with
/// the problem codes `$codes`, and the `GET /openapi.json` handler `openapi_json` that serves
/// it (list it in `$doc`'s paths). The calling crate depends on `utoipa`, `serde_json` and
/// `axum`.
#[macro_export]
macro_rules! openapi_document {
    ($doc:ty, $finish:path, $codes:expr) => {
        /// The OpenAPI 3.1 document (SPEC §13).
        pub fn openapi() -> &'static serde_json::Value {
            static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
            DOC.get_or_init(|| $finish(<$doc as utoipa::OpenApi>::openapi(), $codes))
        }

        /// `GET /openapi.json`.
        #[utoipa::path(get, path = "/openapi.json", tag = "operations",
                    responses((status = 200, description = "this document", body = Object)))]
        async fn openapi_json() -> axum::response::Response {
            $crate::openapi::serve(openapi())
        }
    };
}
