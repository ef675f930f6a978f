//! `/healthz`, `/readyz`.

use ap2_service::problem::Problem;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::{AppState, blocking, store_unavailable};

/// Ready when the database answers.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, Problem> {
    match blocking(&state, |store| store.ping()).await? {
        Ok(()) => Ok(Json(json!({"status": "ready"}))),
        Err(e) => Err(store_unavailable(&e.to_string())),
    }
}
