//! `/healthz`, `/readyz`.

use ap2_service::problem::Problem;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::{AppState, blocking, store_unavailable};

/// Ready when the database answers.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "ready: `{\"status\":\"ready\"}`", body = Object),
    (status = 503, description = "`store_unavailable`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, Problem> {
    match blocking(&state, |store| store.ping()).await? {
        Ok(()) => Ok(Json(json!({"status": "ready"}))),
        Err(e) => Err(store_unavailable(&e.to_string())),
    }
}
