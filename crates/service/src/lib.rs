//! What the three AP2 services share: configuration helpers, telemetry, problem+json errors,
//! the HTTP layers every router gets, and graceful shutdown.
#![forbid(unsafe_code)]

pub mod auth;
pub mod http;
pub mod problem;
pub mod telemetry;

pub use auth::{NamedToken, TokenSet, bearer_token};
pub use problem::{ApiJson, ApiPath, Problem};

/// Formats a Unix time as RFC 3339 UTC (`2026-11-23T11:26:19Z`).
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
