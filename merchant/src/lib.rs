//! The AP2 merchant (SPEC §4, §5): prices checkout sessions from its catalog and completes them
//! only with a mandate that passes every check of SPEC §4, then charges exactly the cart.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod config;
pub mod payment;
pub mod replay;
pub mod routes;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use ap2_directory_client::{DirectoryClient, DirectoryClientConfig};
use ap2_mandate::memory::MemoryReplayGuard;
use ap2_mandate::{Clock, DpopNonces, MerchantId, SystemClock, Verifier, VerifierConfig};
use ap2_service::http::{Limits, with_standard_layers};
pub use ap2_service::http::{Running, Server};
use axum::Router;
use axum::routing::{get, post};
use secrecy::ExposeSecret;

use catalog::Catalog;
pub use config::Config;
use payment::{MockProcessor, PaymentProcessor};
use replay::{RedisReplayGuard, ReplayStore};
use routes::{App, AppState};
use store::{MerchantStore, PgStore, SqliteStore, StoreError};

/// What a build may inject instead of the defaults.
pub struct Parts {
    /// The clock (default: the system's).
    pub clock: Arc<dyn Clock>,
    /// The payment processor (default: the recording mock).
    pub payments: Arc<dyn PaymentProcessor>,
}

impl Default for Parts {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            payments: Arc::new(MockProcessor::default()),
        }
    }
}

/// Opens the store, sets up the key cache and the replay set, binds the listener.
pub async fn build(config: Config) -> anyhow::Result<Server> {
    build_with(config, Parts::default()).await
}

/// As [`build`], with injected parts.
pub async fn build_with(config: Config, parts: Parts) -> anyhow::Result<Server> {
    // The recorder first: the background tasks started below count from their first step.
    ap2_service::telemetry::metrics();
    let merchant_id = MerchantId::parse(&config.merchant_id)
        .map_err(|e| anyhow::anyhow!("--merchant-id: {e}"))?;
    let catalog = match &config.catalog {
        Some(path) => {
            Catalog::load(path).map_err(|e| anyhow::anyhow!("--catalog {}: {e}", path.display()))?
        }
        None => Catalog::demo(),
    };
    let redis_timeout = Duration::from_millis(config.redis_timeout_ms);
    let replay = match (&config.redis_url, config.redis_cluster_nodes.as_slice()) {
        (Some(url), _) => ReplayStore::Redis(
            RedisReplayGuard::new(url.expose(), &config.replay_prefix, redis_timeout)?
                .with_min_replicas(config.replay_min_replicas),
        ),
        (None, [_, ..]) => ReplayStore::Redis(
            RedisReplayGuard::cluster(
                &config
                    .redis_cluster_nodes
                    .iter()
                    .map(|node| node.expose().to_owned())
                    .collect::<Vec<_>>(),
                &config.replay_prefix,
                redis_timeout,
            )?
            .with_min_replicas(config.replay_min_replicas),
        ),
        (None, []) => {
            tracing::warn!(
                "no --redis-url: the replay set is in this process's memory. This is NOT SAFE \
                 with more than one merchant instance, and a restart forgets spent mandates"
            );
            ReplayStore::Memory(MemoryReplayGuard::new())
        }
    };
    let directory_url = config.key_directory_url.trim_end_matches('/').to_owned();
    let keys = DirectoryClient::new(
        &directory_url,
        DirectoryClientConfig {
            fresh_for: Duration::from_secs(config.key_cache_secs),
            fetch_rate: (config.key_fetch_rate > 0.0).then_some(config.key_fetch_rate),
            fetch_burst: config.key_fetch_burst,
            ..DirectoryClientConfig::default()
        },
    )?;
    anyhow::ensure!(
        (1..=3600).contains(&config.dpop_max_age_secs),
        "--dpop-max-age-secs is 1..=3600"
    );
    let (listener, public_url) =
        ap2_service::http::bind_public(config.listen, config.public_url.as_deref()).await?;
    let mut verifier_config = VerifierConfig::new(merchant_id.clone());
    verifier_config.leeway_secs = config.leeway_secs;
    verifier_config.max_lifetime_secs = config.max_lifetime_secs;
    verifier_config.require_binding = config.require_agent_binding;
    verifier_config.dpop_max_age_secs = config.dpop_max_age_secs;
    if config.dpop_nonce {
        anyhow::ensure!(
            config.dpop_nonce_period_secs > 0,
            "--dpop-nonce-period-secs must be positive"
        );
        let nonces = match &config.dpop_nonce_secret {
            Some(secret) => {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(secret.expose_secret().trim())
                    .ok()
                    .filter(|b| b.len() >= 32)
                    .ok_or_else(|| {
                        anyhow::anyhow!("MERCHANT_DPOP_NONCE_SECRET is base64 of 32 bytes or more")
                    })?;
                DpopNonces::new(&bytes, config.dpop_nonce_period_secs)
            }
            None => {
                tracing::warn!(
                    "--dpop-nonce without MERCHANT_DPOP_NONCE_SECRET: this process draws its own \
                     secret, so other instances behind the same URL will refuse its nonces"
                );
                DpopNonces::random(config.dpop_nonce_period_secs)?
            }
        };
        verifier_config.dpop_nonces = Some(Arc::new(nonces));
    }
    if !config.require_agent_binding {
        tracing::warn!(
            "--require-agent-binding false: unbound mandates are accepted as bearer tokens, and \
             a stolen one can be spent by whoever holds it"
        );
    }
    anyhow::ensure!(
        config.session_ttl_secs > 0,
        "--session-ttl-secs must be positive"
    );
    let backends =
        ap2_service::TokenSet::new(&config.backend_tokens).map_err(anyhow::Error::msg)?;
    if backends.is_empty() {
        tracing::warn!(
            "no --backend-token configured: POST /v1/mandates/verify answers 401 to everyone"
        );
    }
    let internal = match config.internal_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
        None => None,
    };
    let store: Arc<dyn MerchantStore> = match config.database_url.clone() {
        Some(url) => {
            let max = config.database_max_connections;
            Arc::new(PgStore::open(url.expose(), max).await?)
        }
        None => {
            let data_dir = config.data_dir.clone();
            Arc::new(tokio::task::spawn_blocking(move || SqliteStore::open(&data_dir)).await??)
        }
    };
    anyhow::ensure!(
        config.stuck_order_secs > 0,
        "--stuck-order-secs must be positive"
    );
    sweep_expired_sessions(
        store.clone(),
        parts.payments.clone(),
        parts.clock.clone(),
        (config.session_ttl_secs, config.stuck_order_secs),
    );
    // Revocations reach this merchant in about a second, not at the cache's max-age (SPEC §10).
    let follower = tokio::spawn(keys.clone().follow_revocations(None, |_| {}));
    let state = AppState::new(App {
        verifier: Verifier::new(verifier_config, keys, replay, parts.clock.clone()),
        store,
        catalog: Arc::new(catalog),
        payments: parts.payments,
        merchant_id,
        public_url,
        session_ttl_secs: config.session_ttl_secs,
        max_open_sessions: config.max_open_sessions_per_agent,
        backends,
        refusal_log: ap2_service::rate::Bucket::new(
            config.refusal_log_rate,
            config.refusal_log_rate,
        ),
        clock: parts.clock.clone(),
        key_directory_url: directory_url,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?,
    });
    let limits = Limits {
        max_body_bytes: config.max_body_bytes,
        ..Limits::default()
    };
    let server = match internal {
        Some(internal) => Server::from_listener(listener, router(state.clone(), limits, false))
            .also(internal, internal_router(state, limits)),
        None => Server::from_listener(listener, router(state, limits, true)),
    };
    Ok(server
        .with_limits(config.http)
        .on_stop(move || follower.abort()))
}

/// Deletes the open sessions past their lifetime, every minute (or every lifetime, if
/// shorter), so sessions nobody completes do not pile up (SPEC §9); and finishes the orders a
/// process that died left charging.
fn sweep_expired_sessions(
    store: Arc<dyn MerchantStore>,
    payments: Arc<dyn PaymentProcessor>,
    clock: Arc<dyn Clock>,
    (ttl_secs, stuck_secs): (i64, i64),
) {
    let every = ttl_secs.min(stuck_secs).clamp(1, 60);
    let every = Duration::from_secs(u64::try_from(every).unwrap_or(60));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let before = clock.now_unix().saturating_sub(ttl_secs);
            match store.delete_expired_sessions(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "expired checkout sessions deleted"),
                Err(e) => tracing::warn!(error = %e, "expired sessions not deleted"),
            }
            finish_stuck_orders(&store, payments.as_ref(), clock.now_unix() - stuck_secs).await;
        }
    });
}

/// Rolls forward the orders begun before `begun_before` whose charge was never recorded: the
/// mandate was verified and spent for them, so each is charged again with its own order id,
/// the processor's idempotency key (charged once whatever happened before), and recorded as
/// paid; a charge the processor refuses reopens the session, as at completion.
async fn finish_stuck_orders(
    store: &Arc<dyn MerchantStore>,
    payments: &dyn PaymentProcessor,
    begun_before: i64,
) {
    let stuck = match store.stuck_orders(begun_before).await {
        Ok(stuck) => stuck,
        Err(e) => return tracing::warn!(error = %e, "stuck orders not looked at"),
    };
    for order in stuck {
        let amount = ap2_mandate::Currency::parse(&order.currency)
            .ok()
            .and_then(|c| {
                ap2_mandate::Money::from_minor_units(u64::try_from(order.amount).ok()?, c).ok()
            });
        let Some(amount) = amount else {
            tracing::error!(order_id = %order.id, "a stuck order has an unreadable amount");
            continue;
        };
        let done = match payments.charge(&order.id, amount).await {
            Ok(charge) => {
                let recorded = store
                    .finish_order(&order.session_id, &order.id, &charge.charge_id)
                    .await;
                if matches!(recorded, Err(StoreError::OrderNotHeld)) {
                    // Aborted meanwhile (its completion's charge failed and the session
                    // reopened), and yet charged now: the processor took money for an order
                    // that is gone.
                    tracing::error!(
                        order_id = %order.id, session_id = %order.session_id,
                        charge_id = %charge.charge_id, amount = %amount,
                        "a stuck order was charged after it was aborted; refund the charge"
                    );
                }
                recorded
            }
            Err(e) => {
                tracing::warn!(order_id = %order.id, error = %e, "a stuck order's charge was refused; the session is open again");
                store.abort_order(&order.id).await
            }
        };
        match done {
            Ok(()) => {
                tracing::warn!(order_id = %order.id, session_id = %order.session_id, "a charge cut short was finished")
            }
            Err(StoreError::OrderNotHeld) => {}
            Err(e) => {
                tracing::warn!(order_id = %order.id, error = %e, "a stuck order is still stuck")
            }
        }
    }
}

/// Builds and starts the merchant on a background task.
pub async fn spawn(config: Config, parts: Parts) -> anyhow::Result<Running> {
    Ok(build_with(config, parts).await?.spawn()?)
}

/// The routes of SPEC §5 with the standard layers; `/v1/mandates/verify` among them unless
/// it is served on an internal listener.
pub fn router(state: AppState, limits: Limits, with_verify: bool) -> Router {
    let mut agent = Router::new()
        .route("/v1/checkout-sessions", post(routes::sessions::create))
        .route("/v1/checkout-sessions/{id}", get(routes::sessions::get))
        .route(
            "/v1/checkout-sessions/{id}/complete",
            post(routes::sessions::complete),
        );
    if with_verify {
        agent = agent.route(
            "/v1/mandates/verify",
            post(routes::mandates::verify_mandate),
        );
    }
    let api = Router::new()
        .route("/v1/products", get(routes::products::list))
        .merge(with_nonces(agent, &state))
        .route("/healthz", get(ap2_service::http::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(ap2_service::http::metrics_handler))
        .route("/openapi.json", get(openapi_json))
        .with_state(state);
    with_standard_layers(api, "merchant", limits)
}

/// What `--internal-listen` serves: the verify endpoint, `/healthz` and `/metrics`.
pub fn internal_router(state: AppState, limits: Limits) -> Router {
    let verify = Router::new().route(
        "/v1/mandates/verify",
        post(routes::mandates::verify_mandate),
    );
    let api = with_nonces(verify, &state)
        .route("/healthz", get(ap2_service::http::healthz))
        .route("/metrics", get(ap2_service::http::metrics_handler))
        .with_state(state);
    with_standard_layers(api, "merchant-internal", limits)
}

/// Sends `DPoP-Nonce` on `routes` when nonces are on.
fn with_nonces(routes: Router<AppState>, state: &AppState) -> Router<AppState> {
    if state.verifier.config().dpop_nonces.is_some() {
        routes.route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::dpop::nonce_header,
        ))
    } else {
        routes
    }
}

/// The merchant's API (SPEC §4, §5, §8), derived from its handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "AP2 merchant",
        description = "Checkout sessions priced by the merchant, completed with an intent mandate and the agent's proof (SPEC §4, §5, §8); mandate verification for the merchant's backend."
    ),
    paths(
        routes::products::list,
        routes::sessions::create,
        routes::sessions::get,
        routes::sessions::complete,
        routes::mandates::verify_mandate,
        routes::health::readyz,
        ap2_service::http::healthz,
        ap2_service::http::metrics_handler,
        openapi_json,
    ),
    components(schemas(ap2_service::openapi::ProblemSchema))
)]
pub struct ApiDoc;

/// The merchant's own problem codes (SPEC §4 and §8's come from [`ap2_mandate::ProblemCode`]).
pub const PROBLEM_CODES: &[&str] = &[
    "agent_id_invalid",
    "agent_id_required",
    "cart_invalid",
    "currency_mixed",
    "dpop_request_incomplete",
    "forbidden",
    "htu_invalid",
    "key_directory_unavailable",
    "line_item_duplicate",
    "line_items_empty",
    "payment_failed",
    "product_unknown",
    "quantity_invalid",
    "replay_store_unavailable",
    "session_completed",
    "session_expired",
    "session_not_found",
    "store_unavailable",
    "too_many_line_items",
    "too_many_sessions",
    "unauthorized",
];

ap2_service::openapi_document!(
    ApiDoc,
    ap2_service::openapi::finish_with_spec_codes,
    PROBLEM_CODES
);
