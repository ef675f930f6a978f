//! `/readyz`: the store, the key directory and the replay set answer.

use ap2_service::problem::Problem;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{AppState, stored};

fn down(code: &'static str, detail: &str) -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, detail.to_owned())
}

/// Ready when every dependency answers.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "ready", body = Object),
    (status = 503, description = "a dependency does not answer", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, Problem> {
    stored(state.store.ping().await)?
        .map_err(|_| down("store_unavailable", "the store does not answer"))?;
    let directory = state
        .http
        .get(format!("{}/healthz", state.key_directory_url))
        .send()
        .await;
    if !directory.is_ok_and(|r| r.status().is_success()) {
        return Err(down(
            "key_directory_unavailable",
            "the key directory does not answer",
        ));
    }
    state.verifier.replay().ping().await.map_err(|_| {
        down(
            "replay_store_unavailable",
            "the replay store does not answer",
        )
    })?;
    Ok(Json(json!({"status": "ready"})))
}
