//! The HTTP API (SPEC §5, key-directory).

pub mod events;
pub mod health;
pub mod keys;

use std::sync::Arc;

use ap2_mandate::Clock;
use ap2_service::TokenSet;
use ap2_service::problem::Problem;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;

use crate::store::{KeyStore, StoreError};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The registry.
    pub store: Arc<dyn KeyStore>,
    /// Issuer tokens.
    pub issuers: Arc<TokenSet>,
    /// Time, for `created_at` and `revoked_at`.
    pub clock: Arc<dyn Clock>,
    /// `max-age` of key responses.
    pub key_max_age_secs: u32,
    /// Wakes the event streams.
    pub events: Arc<events::EventHub>,
}

/// The issuer a request authenticated as, from `Authorization: Bearer <issuer token>`.
/// Extracted before the body, so an unauthenticated caller learns nothing from validation.
#[derive(Debug, Clone)]
pub struct Issuer(pub String);

impl FromRequestParts<AppState> for Issuer {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        ap2_service::auth::authenticate(&parts.headers, &state.issuers, "issuer token")
            .map(|name| Issuer(name.to_owned()))
    }
}

/// Runs a store call on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&dyn KeyStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<Result<T, StoreError>, Problem> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(Problem::internal)
}

/// The answer for a failing store: 503, and the cause in the log only.
pub fn store_unavailable(cause: &str) -> Problem {
    tracing::error!(error = cause, "key store failed");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the key store is unavailable",
    )
}
