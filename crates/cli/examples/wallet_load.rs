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

/// The fields of the wallet's answers that the loop reads.
#[derive(serde::Deserialize)]
struct Created {
    id: String,
}
#[derive(serde::Deserialize)]
struct Inbox {
    notifications: Vec<Notification>,
}
#[derive(serde::Deserialize)]
struct Notification {
    request_id: String,
    otp: Option<String>,
}

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
            // What does not change between iterations is made once: the URLs, the request's
            // body, the bearer headers. The answers are read into the few fields used, so the
            // generator's CPU (it shares the machine) stays small next to the wallet's.
            let url = format!("{wallet}/v1/mandate-requests");
            let inbox_url = format!("{wallet}/v1/users/{user_id}/notifications");
            let body = serde_json::to_vec(
                &json!({"user_id": user_id, "merchant_id": "acme-corp", "cart": cart}),
            )
            .unwrap();
            let agent_auth = format!("Bearer {agent}");
            let user_auth = format!("Bearer {token}");
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < deadline {
                let t0 = Instant::now();
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
                let created = http
                    .post(&url)
                    .header(reqwest::header::AUTHORIZATION, &agent_auth)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header("DPoP", proof)
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                let id = serde_json::from_slice::<Created>(&created)
                    .map(|c| c.id)
                    .unwrap_or_default();
                let inbox = http
                    .get(&inbox_url)
                    .header(reqwest::header::AUTHORIZATION, &user_auth)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                let otp = serde_json::from_slice::<Inbox>(&inbox)
                    .ok()
                    .and_then(|inbox| {
                        inbox
                            .notifications
                            .into_iter()
                            .find(|n| n.request_id == id)
                            .and_then(|n| n.otp)
                    })
                    .unwrap_or_default();
                let approved = http
                    .post(format!("{wallet}/v1/mandate-requests/{id}/approve"))
                    .header(reqwest::header::AUTHORIZATION, &user_auth)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(format!("{{\"otp\":{}}}", serde_json::Value::String(otp)))
                    .send()
                    .await
                    .unwrap();
                if approved.status().is_success() {
                    latencies.push(t0.elapsed());
                } else {
                    errors += 1;
                }
                // The body is read, so the connection goes back to the pool.
                let _ = approved.bytes().await;
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
