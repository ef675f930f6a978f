//! The AP2 key directory (SPEC §5): issuers register their users' public keys, anyone fetches
//! them by kid, issuers revoke them. Keys live in a SQLite file and survive restarts.
#![forbid(unsafe_code)]

pub mod config;
pub mod routes;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use ap2_mandate::{Clock, SystemClock};
use ap2_service::TokenSet;
use ap2_service::http::{Limits, with_standard_layers};
use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;

pub use config::Config;
use routes::AppState;
use store::SqliteStore;

/// The service, bound to its port and ready to run.
pub struct Application {
    listener: TcpListener,
    router: Router,
}

impl Application {
    /// Opens the store and binds the listener (port 0 picks a free port).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// As [`Application::build`], with the clock that stamps `created_at`/`revoked_at`.
    pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let issuers = TokenSet::new(&config.issuer_tokens).map_err(anyhow::Error::msg)?;
        if issuers.is_empty() {
            tracing::warn!("no --issuer-token configured: nobody can register or revoke keys");
        }
        let db = config.db.clone();
        let store = tokio::task::spawn_blocking(move || SqliteStore::open(&db)).await??;
        let state = AppState {
            store: Arc::new(store),
            issuers: Arc::new(issuers),
            clock,
            key_max_age_secs: config.key_max_age_secs,
        };
        let limits = Limits {
            max_body_bytes: config.max_body_bytes,
            ..Limits::default()
        };
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self {
            listener,
            router: router(state, limits),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until SIGTERM or Ctrl-C.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(ap2_service::http::shutdown_signal()).await
    }

    /// Serves until `shutdown` resolves, then finishes requests in flight.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        ap2_service::http::serve(self.listener, self.router, shutdown).await
    }
}

/// A directory serving in the background of this process (tests, the demo).
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it gracefully and waits until it has.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

/// Builds and starts the service on a background task.
pub async fn spawn(config: Config) -> anyhow::Result<Running> {
    let app = Application::build(config).await?;
    let addr = app.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    Ok(Running { addr, stop, task })
}

/// The routes of SPEC §5 with the standard layers.
pub fn router(state: AppState, limits: Limits) -> Router {
    let api = Router::new()
        .route("/v1/keys", post(routes::keys::register))
        .route("/v1/keys/{kid}", get(routes::keys::get))
        .route("/v1/keys/{kid}/revoke", post(routes::keys::revoke))
        .route("/.well-known/jwks.json", get(routes::keys::jwks))
        .route("/healthz", get(ap2_service::http::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(ap2_service::http::metrics_handler))
        .with_state(state);
    with_standard_layers(api, "key-directory", limits)
}
