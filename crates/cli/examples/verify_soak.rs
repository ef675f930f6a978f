//! A long run of the merchant's verification path, for `bench/soak.sh`: `concurrency` tasks
//! each mint a fresh mandate (short-lived, so the replay set's entries expire during the run)
//! and present it to `POST /v1/mandates/verify` with `consume: true`, for `secs` seconds.
//! Every 10 s it prints a line `SOAK so far t=… ok=… refused=… errors=…`, and `SOAK total …`
//! at the end; the script samples the merchant's memory and Redis's key count beside it.
//!
//! `cargo run --release -p ap2-cli --example verify_soak -- MERCHANT_URL KEY_PEM ISS SUB AGENT CART_JSON TTL SECS CONCURRENCY`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ap2_mandate::{
    AgentId, Ap2Scope, Cart, Clock, IntentMandate, Jti, LocalSigner, SystemClock, mint,
};

#[derive(Default)]
struct Totals {
    ok: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [
        _,
        merchant,
        key,
        iss,
        sub,
        agent,
        cart,
        ttl,
        secs,
        concurrency,
    ] = &args[..]
    else {
        panic!(
            "usage: verify_soak MERCHANT_URL KEY_PEM ISS SUB AGENT CART_JSON TTL SECS CONCURRENCY"
        );
    };
    // The merchant backend's token (SPEC §9), as bench/common.sh starts the merchant.
    let backend_token =
        std::env::var("AP2_BACKEND_TOKEN").unwrap_or_else(|_| "bench-backend-token".to_owned());
    let signer = Arc::new(
        LocalSigner::from_pkcs8_pem(&std::fs::read_to_string(key).unwrap(), None).unwrap(),
    );
    let cart_json = std::fs::read_to_string(cart).unwrap();
    let cart = Cart::from_json(cart_json.trim().as_bytes()).unwrap();
    let template = IntentMandate {
        iss: iss.clone(),
        sub: sub.clone(),
        aud: cart.merchant_id().clone(),
        iat: 0,
        nbf: None,
        exp: 0,
        jti: Jti::random().unwrap(),
        scope: Ap2Scope {
            max_amount: cart.total(),
            cart_hash: cart.hash().clone(),
            allow_agent_id: AgentId::parse(agent).unwrap(),
        },
        cnf: None,
        amr: None,
    };
    let ttl: i64 = ttl.parse().unwrap();
    let secs: u64 = secs.parse().unwrap();
    let concurrency: usize = concurrency.parse().unwrap();
    let url = format!("{}/v1/mandates/verify", merchant.trim_end_matches('/'));
    let http = reqwest::Client::new();
    let totals = Arc::new(Totals::default());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, url, signer, totals, agent) = (
            http.clone(),
            url.clone(),
            signer.clone(),
            totals.clone(),
            agent.clone(),
        );
        let (mut claims, cart_json) = (template.clone(), cart_json.trim().to_owned());
        let backend_token = backend_token.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                claims.iat = SystemClock.now_unix();
                claims.exp = claims.iat + ttl;
                claims.jti = Jti::random().unwrap();
                let token = mint(signer.as_ref(), &claims).unwrap();
                let body = format!(
                    r#"{{"mandate":"{token}","agent_id":"{agent}","cart":{cart_json},"consume":true}}"#
                );
                let sent = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .bearer_auth(&backend_token)
                    .body(body)
                    .send()
                    .await;
                let counter = match sent {
                    Ok(r) if r.status().is_success() => &totals.ok,
                    Ok(_) => &totals.refused,
                    Err(_) => &totals.errors,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let report = |what: &str, totals: &Totals| {
        println!(
            "SOAK {what} t={} ok={} refused={} errors={}",
            started.elapsed().as_secs(),
            totals.ok.load(Ordering::Relaxed),
            totals.refused.load(Ordering::Relaxed),
            totals.errors.load(Ordering::Relaxed)
        );
    };
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(10).min(deadline - Instant::now())).await;
        report("so far", &totals);
    }
    for task in tasks {
        task.await.unwrap();
    }
    report("total", &totals);
}
