//! The AP2 key directory (SPEC §5): issuers register their users' public keys, anyone fetches
//! them by kid, issuers revoke them. Keys live in a SQLite file and survive restarts.
#![forbid(unsafe_code)]

pub mod config;
pub mod routes;
pub mod store;

use std::sync::Arc;

use ap2_mandate::{Clock, SystemClock};
use ap2_service::TokenSet;
use ap2_service::http::{Limits, with_standard_layers};
pub use ap2_service::http::{Running, Server};
use axum::Router;
use axum::routing::{get, post};

pub use config::Config;
use routes::AppState;
use store::{KeyStore, PgStore, SqliteStore};

/// Opens the store and binds the listener (port 0 picks a free port).
pub async fn build(config: Config) -> anyhow::Result<Server> {
    build_with_clock(config, Arc::new(SystemClock)).await
}

/// As [`build`], with the clock that stamps `created_at`/`revoked_at`.
pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Server> {
    let issuers = TokenSet::new(&config.issuer_tokens).map_err(anyhow::Error::msg)?;
    if issuers.is_empty() {
        tracing::warn!("no --issuer-token configured: nobody can register or revoke keys");
    }
    let (store, shared): (Arc<dyn KeyStore>, bool) = match config.database_url.clone() {
        Some(url) => {
            let max = config.database_max_connections;
            let store =
                tokio::task::spawn_blocking(move || PgStore::open(url.expose(), max)).await??;
            (Arc::new(store), true)
        }
        None => {
            let db = config.db.clone();
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(&db)).await??;
            (Arc::new(store), false)
        }
    };
    let latest = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.last_revocation()).await??
    };
    let events = Arc::new(routes::events::EventHub::new(latest));
    let watcher = shared.then(|| tokio::spawn(watch_revocations(store.clone(), events.clone())));
    let state = AppState {
        events: events.clone(),
        store,
        issuers: Arc::new(issuers),
        clock,
        key_max_age_secs: config.key_max_age_secs,
    };
    let limits = Limits {
        max_body_bytes: config.max_body_bytes,
        ..Limits::default()
    };
    Ok(Server::bind(config.listen, router(state, limits))
        .await?
        .with_limits(config.http)
        .on_stop(move || {
            events.close();
            if let Some(watcher) = watcher {
                watcher.abort();
            }
        }))
}

/// With a shared store, other instances revoke keys too: their revocations wake this
/// instance's event streams within half a second (SPEC §10).
async fn watch_revocations(store: Arc<dyn KeyStore>, events: Arc<routes::events::EventHub>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.last_revocation()).await {
            Ok(Ok(latest)) => events.committed(latest),
            Ok(Err(e)) => tracing::warn!(error = %e, "revocations not read"),
            Err(e) => tracing::warn!(error = %e, "revocations not read"),
        }
    }
}

/// Builds and starts the service on a background task.
pub async fn spawn(config: Config) -> anyhow::Result<Running> {
    Ok(build(config).await?.spawn()?)
}

/// The routes of SPEC §5 with the standard layers.
pub fn router(state: AppState, limits: Limits) -> Router {
    let api = Router::new()
        .route("/v1/keys", post(routes::keys::register))
        .route("/v1/keys/{kid}", get(routes::keys::get))
        .route("/v1/keys/{kid}/revoke", post(routes::keys::revoke))
        .route("/.well-known/jwks.json", get(routes::keys::jwks))
        .route("/v1/events", get(routes::events::events))
        .route("/healthz", get(ap2_service::http::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(ap2_service::http::metrics_handler))
        .route("/openapi.json", get(openapi_json))
        .with_state(state);
    with_standard_layers(api, "key-directory", limits)
}

/// The key directory's API (SPEC §5, §10), derived from its handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "AP2 key directory",
        description = "Users' public keys: register, fetch by kid, revoke, follow revocations (SPEC §5, §10)."
    ),
    paths(
        routes::keys::register,
        routes::keys::get,
        routes::keys::revoke,
        routes::keys::jwks,
        routes::events::events,
        routes::health::readyz,
        ap2_service::http::healthz,
        ap2_service::http::metrics_handler,
        openapi_json,
    ),
    components(schemas(ap2_service::openapi::ProblemSchema))
)]
pub struct ApiDoc;

/// Every problem code the key directory answers.
pub const PROBLEM_CODES: &[&str] = &[
    "forbidden",
    "invalid_last_event_id",
    "jwk_invalid",
    "jwk_invalid_coordinates",
    "jwk_invalid_usage",
    "jwk_not_on_curve",
    "jwk_private_member",
    "jwk_unsupported_curve",
    "jwk_unsupported_key_type",
    "key_conflict",
    "key_not_found",
    "key_revoked",
    "kid_invalid",
    "store_unavailable",
    "subject_invalid",
    "unauthorized",
];

ap2_service::openapi_document!(ApiDoc, ap2_service::openapi::finish, PROBLEM_CODES);
