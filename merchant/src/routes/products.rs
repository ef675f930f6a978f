//! `GET /v1/products`.

use ap2_service::problem::ApiJson;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;

/// The catalog.
#[utoipa::path(get, path = "/v1/products", tag = "checkout",
    responses((status = 200, description = "`{products: [{id, title, unit_price, currency}]}`", body = Object)))]
pub async fn list(State(state): State<AppState>) -> ApiJson<Value> {
    ApiJson(json!({ "products": state.catalog.products() }))
}
