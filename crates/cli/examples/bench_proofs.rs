//! DPoP proofs made in bulk for `bench/load.sh`, one per line, each with its own `jti`, all
//! issued now (so they must be used within `--dpop-max-age-secs`):
//!
//! - `bench_proofs KEY_PEM METHOD URL COUNT`: COUNT proofs for one request without a token
//!   (opening checkout sessions);
//! - `bench_proofs KEY_PEM METHOD URL IDS_FILE MANDATES_FILE`: for line i, a proof for URL with
//!   `{id}` replaced by line i of IDS_FILE (`-`: no ids) presenting line i of MANDATES_FILE.
//!
//! Signing is spread over the machine's cores, so making 200 000 proofs takes seconds.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::Write;

use ap2_mandate::{Clock, LocalSigner, ProofRequest, SystemClock, make_proof};

fn lines(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
        .lines()
        .map(str::to_owned)
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (key, method, url) = match &args[..] {
        [_, key, method, url, ..] if args.len() == 5 || args.len() == 6 => (key, method, url),
        _ => panic!(
            "usage: bench_proofs KEY_PEM METHOD URL COUNT | KEY_PEM METHOD URL IDS_FILE MANDATES_FILE"
        ),
    };
    let key = LocalSigner::from_pkcs8_pem(&std::fs::read_to_string(key).unwrap(), None).unwrap();
    // (url, mandate) per proof.
    let jobs: Vec<(String, Option<String>)> = if args.len() == 5 {
        let count: usize = args[4].parse().unwrap();
        vec![(url.clone(), None); count]
    } else {
        let mandates = lines(&args[5]);
        let ids = if args[4] == "-" {
            vec![String::new(); mandates.len()]
        } else {
            lines(&args[4])
        };
        ids.iter()
            .zip(mandates)
            .map(|(id, mandate)| (url.replace("{id}", id), Some(mandate)))
            .collect()
    };
    let iat = SystemClock.now_unix();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = jobs.len().div_ceil(threads).max(1);
    let proofs: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| {
                let key = &key;
                scope.spawn(move || {
                    part.iter()
                        .map(|(url, mandate)| {
                            make_proof(
                                key,
                                &ProofRequest {
                                    htm: method,
                                    htu: url,
                                    iat,
                                    jti: None,
                                    token: mandate.as_deref(),
                                    nonce: None,
                                },
                            )
                            .unwrap()
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for proof in proofs.iter().flatten() {
        writeln!(out, "{proof}").unwrap();
    }
    out.flush().unwrap();
}
