//! The HTTP API (SPEC §5, merchant) and the one place a refusal becomes an HTTP answer.

pub mod dpop;
pub mod health;
pub mod mandates;
pub mod products;
pub mod sessions;

use std::sync::Arc;
use std::time::Instant;

use ap2_directory_client::DirectoryClient;
use ap2_mandate::{
    AuthScheme, Clock, Consume, MerchantId, Presentation, PublicUrl, VerifiedMandate, Verifier,
    VerifyError,
};
use ap2_service::problem::Problem;
use axum::http::StatusCode;

use crate::catalog::Catalog;
use crate::payment::PaymentProcessor;
use crate::replay::ReplayStore;
use crate::store::{MerchantStore, StoreError};

/// The merchant's verifier: keys from the directory (cached), the replay set, the clock.
pub type MerchantVerifier = Verifier<DirectoryClient, ReplayStore, Arc<dyn Clock>>;

/// What every handler shares: one `Arc`, so extracting it per request is one reference count.
#[derive(Clone)]
pub struct AppState(Arc<App>);

impl AppState {
    /// Shares `app` with every handler.
    pub fn new(app: App) -> Self {
        Self(Arc::new(app))
    }
}

impl App {
    /// Whether unbound mandates and agent calls without a proof are refused.
    pub fn binding_required(&self) -> bool {
        self.verifier.config().require_binding
    }
}

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

/// The merchant's parts.
pub struct App {
    /// SPEC §4.
    pub verifier: MerchantVerifier,
    /// Sessions and orders.
    pub store: Arc<dyn MerchantStore>,
    /// Prices.
    pub catalog: Arc<Catalog>,
    /// Charges.
    pub payments: Arc<dyn PaymentProcessor>,
    /// This merchant.
    pub merchant_id: MerchantId,
    /// Where agents reach it: the base of every proof's `htu`.
    pub public_url: PublicUrl,
    /// How long a session stays open.
    pub session_ttl_secs: i64,
    /// Most open sessions per agent key.
    pub max_open_sessions: u32,
    /// The backends that may call `/v1/mandates/verify`.
    pub backends: ap2_service::TokenSet,
    /// Refusal log lines left this second.
    pub refusal_log: ap2_service::rate::Bucket,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// For `/readyz`.
    pub key_directory_url: String,
    /// For `/readyz`.
    pub http: reqwest::Client,
}

pub use ap2_service::dpop::refusal;

/// Runs the verifier and records the result and its latency.
pub async fn verify(
    state: &AppState,
    presentation: &Presentation<'_>,
    consume: Consume,
) -> Result<VerifiedMandate, Problem> {
    let started = Instant::now();
    let result = state.verifier.verify(presentation, consume).await;
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => e.code().as_str(),
    };
    metrics::counter!("ap2_mandate_verifications_total", "result" => label).increment(1);
    metrics::histogram!("ap2_mandate_verification_seconds").record(started.elapsed().as_secs_f64());
    result.map_err(|e| {
        // Counted above every time; logged at most `--refusal-log-rate` lines a second, so a
        // flood of bad mandates cannot flood the log (SPEC §9).
        if state.refusal_log.take() {
            match &e {
                VerifyError::KeyDirectoryUnavailable(why)
                | VerifyError::ReplayStoreUnavailable(why) => {
                    tracing::error!(code = e.code().as_str(), error = %why, "mandate refused: dependency down");
                }
                _ => {
                    // The verify endpoint's agent id is the caller's free text: logged only
                    // when it is a well-formed id.
                    let agent_id = match ap2_mandate::AgentId::check(presentation.agent_id) {
                        Ok(()) => presentation.agent_id,
                        Err(_) => "<not an agent id>",
                    };
                    tracing::info!(code = e.code().as_str(), %agent_id, "mandate refused");
                }
            }
        }
        refusal(&e, state.binding_required() || presentation.scheme == AuthScheme::Dpop)
    })
}

/// A store call's result, with a failing store as 503 (`store_unavailable`).
pub fn stored<T>(result: Result<T, StoreError>) -> Result<Result<T, StoreError>, Problem> {
    match result {
        Err(StoreError::Backend(why)) => {
            tracing::error!(error = %why, "merchant store failed");
            Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the merchant's store is unavailable",
            ))
        }
        other => Ok(other),
    }
}

/// 422 with `code`.
pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
}
