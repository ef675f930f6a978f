//! A merchant's own axum service that accepts AP2 intent mandates: the verifier of
//! `ap2-mandate`, keys from the key directory (cached, `ap2-directory-client`), a replay set
//! (in memory here; Redis behind [`ap2_mandate::ReplayGuard`] for several instances).
//!
//! ```sh
//! cargo run -p ap2-directory-client --example third_party_merchant -- http://127.0.0.1:8083
//! ```
//! then `POST http://127.0.0.1:3000/orders/o1/pay` with `Authorization: DPoP <mandate>`, `DPoP:
//! <proof>` and `AP2-Agent-Id`: `200` with what to charge, or `401` with the SPEC's code.
use std::sync::Arc;

use ap2_directory_client::{DirectoryClient, DirectoryClientConfig};
use ap2_mandate::memory::MemoryReplayGuard;
use ap2_mandate::{
    Cart, Consume, DpopProof, Htu, MerchantId, Presentation, ProofPresentation, SystemClock,
    Verifier, VerifierConfig, VerifyError,
};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Json, Router, routing::post};
use serde_json::{Value, json};

type Ap2 = Arc<Verifier<DirectoryClient, MemoryReplayGuard, SystemClock>>;

/// The merchant's own cart for an order: never one the agent sends.
fn cart_of(_order: &str) -> Option<Cart> {
    Cart::from_json(
        br#"{"merchant_id":"acme-corp","currency":"USD","total":8999,
        "line_items":[{"id":"shoe-001","title":"Trail Runner","quantity":1,"unit_price":8999}]}"#,
    )
    .ok()
}

async fn pay(
    State(ap2): State<Ap2>,
    Path(order): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, (StatusCode, String)> {
    let refuse = |e: VerifyError| (StatusCode::UNAUTHORIZED, e.code().as_str().to_owned());
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let cart = cart_of(&order).ok_or((StatusCode::NOT_FOUND, "no such order".into()))?;
    let token = header("authorization").strip_prefix("DPoP ").unwrap_or("");
    let proof = DpopProof::parse(header("dpop")).map_err(refuse)?;
    let url = format!("http://127.0.0.1:3000/orders/{order}/pay");
    let htu = Htu::parse(&url).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let with_proof = ProofPresentation {
        proof: &proof,
        htm: "POST",
        htu: &htu,
    };
    let presented = Presentation::dpop(token, header("ap2-agent-id"), &cart, with_proof);
    let mandate = ap2.verify(&presented, Consume::Yes).await.map_err(refuse)?;
    // Verified and spent: charge exactly the cart's total, and keep the mandate with the order.
    Ok(Json(
        json!({"charge": cart.total().to_string(), "currency": cart.currency(),
                   "jti": mandate.claims.jti, "user": mandate.claims.sub}),
    ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let directory = std::env::args()
        .nth(1)
        .unwrap_or("http://127.0.0.1:8083".into());
    let keys = DirectoryClient::new(&directory, DirectoryClientConfig::default())?;
    let config = VerifierConfig::new(MerchantId::parse("acme-corp")?);
    let ap2 = Arc::new(Verifier::new(
        config,
        keys,
        MemoryReplayGuard::new(),
        SystemClock,
    ));
    let app = Router::new()
        .route("/orders/{order}/pay", post(pay))
        .with_state(ap2);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    axum::serve(listener, app).await?;
    Ok(())
}
