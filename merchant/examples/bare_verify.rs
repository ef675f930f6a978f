//! The reference point of the load harness (`bench/load.sh`): the least a verification endpoint
//! can do. An axum handler that decodes an ES256 JWT with `jsonwebtoken` (aws-lc backend, key
//! parsed once) and records its `jti` with one Redis `SET NX PX` over one multiplexed
//! connection. No header hygiene, no issuer or cart binding, no metrics, no request ids: it is
//! NOT a verifier, only the floor the merchant's full SPEC §4 path is measured against.
//!
//! `cargo run --release -p merchant --example bare_verify -- <listen> <redis-url> <jwk-file> <audience>`
//! serves `POST /v1/mandates/verify` with the merchant's request body.

use std::sync::Arc;
use std::time::Duration;

use ap2_mandate::{Clock, SystemClock};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use redis::aio::ConnectionManager;
use serde::Deserialize;
use serde_json::{Value, json};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    key: DecodingKey,
    validation: Validation,
    redis: ConnectionManager,
}

#[derive(Deserialize)]
struct Body {
    mandate: String,
}

#[derive(Deserialize)]
struct Claims {
    jti: String,
    exp: u64,
}

async fn verify(
    State(bare): State<Arc<Bare>>,
    Json(body): Json<Body>,
) -> (StatusCode, Json<Value>) {
    let claims = match jsonwebtoken::decode::<Claims>(&body.mandate, &bare.key, &bare.validation) {
        Ok(data) => data.claims,
        Err(e) => {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": e.to_string()})),
            );
        }
    };
    let mut redis = bare.redis.clone();
    let ttl_secs = claims
        .exp
        .saturating_sub(SystemClock.now_unix().try_into().unwrap_or(0));
    let mut command = redis::cmd("SET");
    command
        .arg(format!("bare:{}", claims.jti))
        .arg(1)
        .arg("NX")
        .arg("PX")
        .arg(ttl_secs.max(1).saturating_mul(1000));
    let set = command.query_async::<Option<String>>(&mut redis);
    match tokio::time::timeout(Duration::from_millis(250), set).await {
        Ok(Ok(Some(_))) => (StatusCode::OK, Json(json!({"valid": true}))),
        Ok(Ok(None)) => (StatusCode::UNAUTHORIZED, Json(json!({"error": "replayed"}))),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "redis"})),
        ),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, redis_url, jwk_file, audience] = args.as_slice() else {
        anyhow::bail!("usage: bare_verify <listen> <redis-url> <jwk-file> <audience>");
    };
    let jwk: Jwk = serde_json::from_str(&std::fs::read_to_string(jwk_file)?)?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[audience]);
    let client = redis::Client::open(redis_url.as_str())?;
    let bare = Arc::new(Bare {
        key: DecodingKey::from_jwk(&jwk)?,
        validation,
        redis: ConnectionManager::new(client).await?,
    });
    let app = Router::new()
        .route("/v1/mandates/verify", post(verify))
        .with_state(bare);
    let listener = tokio::net::TcpListener::bind(listen.as_str()).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
