//! Load on the wallet's minting path, for `bench/load.sh`: each of `concurrency` tasks repeats
//! "agent asks for a mandate (with a DPoP proof of its key, made here) → user reads the code →
//! user approves" against a running wallet
//! for `duration` seconds, then prints the minted mandates per second and latency percentiles
//! of the whole three-call sequence.
//!
//! With a PROOFS_FILE (one DPoP proof per line for `POST WALLET_URL/v1/mandate-requests`, made
//! by `bench_proofs` before the run) the requests use those, so the load generator's signing
//! does not take CPU from the wallet during the run; once they are used up, proofs are made here.
//!
//! `cargo run --release -p ap2-cli --example wallet_load -- WALLET_URL ADMIN_TOKEN AGENT_TOKEN SECS CONCURRENCY [PROOFS_FILE]`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, Instant};

use ap2_mandate::{Clock, LocalSigner, ProofRequest, SystemClock, make_proof};
use serde_json::{Value, json};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (wallet, admin, agent, secs, concurrency, proofs) = match &args[..] {
        [_, wallet, admin, agent, secs, concurrency] => {
            (wallet, admin, agent, secs, concurrency, Vec::new())
        }
        [_, wallet, admin, agent, secs, concurrency, proofs] => (
            wallet,
            admin,
            agent,
            secs,
            concurrency,
            std::fs::read_to_string(proofs)
                .unwrap_or_else(|e| panic!("reading {proofs}: {e}"))
                .lines()
                .map(str::to_owned)
                .collect(),
        ),
        _ => panic!(
            "usage: wallet_load WALLET_URL ADMIN_TOKEN AGENT_TOKEN SECS CONCURRENCY [PROOFS_FILE]"
        ),
    };
    let proofs = std::sync::Arc::new(proofs);
    let next_proof = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let secs: u64 = secs.parse().unwrap();
    let concurrency: usize = concurrency.parse().unwrap();
    let http = reqwest::Client::new();
    let cart = json!({"merchant_id": "acme-corp", "currency": "USD", "total": 8999,
        "line_items": [{"id": "shoe-001", "title": "Trail Runner", "quantity": 1, "unit_price": 8999}]});
    let agent_key = std::sync::Arc::new(LocalSigner::generate().unwrap());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..concurrency {
        let (proofs, next_proof) = (proofs.clone(), next_proof.clone());
        let (http, wallet, admin, agent, cart, agent_key) = (
            http.clone(),
            wallet.clone(),
            admin.clone(),
            agent.clone(),
            cart.clone(),
            agent_key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // One user per task: a user's requests are approved one at a time, like a person.
            let user_id = format!("load-{task}-{}", std::process::id());
            let user: Value = http
                .post(format!("{wallet}/v1/users"))
                .bearer_auth(&admin)
                .json(&json!({"user_id": user_id}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let token = user["user_token"].as_str().unwrap().to_owned();
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let url = format!("{wallet}/v1/mandate-requests");
                let made = proofs
                    .get(next_proof.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    .cloned();
                let proof = made.unwrap_or_else(|| {
                    make_proof(
                        &agent_key,
                        &ProofRequest {
                            htm: "POST",
                            htu: &url,
                            iat: SystemClock.now_unix(),
                            jti: None,
                            token: None,
                            nonce: None,
                        },
                    )
                    .unwrap()
                });
                let created: Value = http
                    .post(url)
                    .bearer_auth(&agent)
                    .header("DPoP", proof)
                    .json(&json!({"user_id": user_id, "merchant_id": "acme-corp", "cart": cart}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let id = created["id"].as_str().unwrap_or_default().to_owned();
                let inbox: Value = http
                    .get(format!("{wallet}/v1/users/{user_id}/notifications"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let otp = inbox["notifications"]
                    .as_array()
                    .and_then(|n| n.iter().find(|n| n["request_id"] == id.as_str()))
                    .and_then(|n| n["otp"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                let approved = http
                    .post(format!("{wallet}/v1/mandate-requests/{id}/approve"))
                    .bearer_auth(&token)
                    .json(&json!({ "otp": otp }))
                    .send()
                    .await
                    .unwrap();
                if approved.status().is_success() {
                    latencies.push(t0.elapsed());
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (l, e) = task.await.unwrap();
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "wallet minting: {:.0} mandates/s (request + notifications + approve), errors {errors}, p50 {:.2} ms, p99 {:.2} ms",
        latencies.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
}
