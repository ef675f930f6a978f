//! `/readyz`: the store answers and the key directory is reachable.

use ap2_service::problem::Problem;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{AppState, stored};

/// Ready when the store and the key directory answer.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "ready", body = Object),
    (status = 503, description = "a dependency does not answer", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, Problem> {
    stored(state.store.ping().await)?;
    let directory = state
        .http
        .get(format!("{}/healthz", state.key_directory_url))
        .send()
        .await;
    match directory {
        Ok(r) if r.status().is_success() => Ok(Json(json!({"status": "ready"}))),
        _ => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "key_directory_unavailable",
            "the key directory does not answer",
        )),
    }
}
