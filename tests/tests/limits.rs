//! SPEC §9 against the real binaries: the private verify endpoint, and the connection limits
//! (slow headers, idle keep-alive, the connection cap, an oversized `Content-Length`) seen from
//! raw TCP clients. Each test asserts the bound (closed, refused, not answered), with timings
//! only as loose lower bounds: the server must not close early.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, Instant};

use ap2_e2e::{Service, free_port};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BACKEND_TOKEN: &str = "limits-backend-token";

async fn directory(tmp: &tempfile::TempDir, extra: &[&str]) -> Service {
    let db = tmp.path().join("keys.db");
    let mut args = vec!["--db", db.to_str().unwrap()];
    args.extend_from_slice(extra);
    Service::start("key-directory", &args, &[], tmp.path()).await
}

async fn connect(service: &Service) -> TcpStream {
    TcpStream::connect(service.url().trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection (or `limit` passes, which fails the test);
/// returns what it sent.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "still open after {limit:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// One `GET /healthz` on `stream`, and its answer's status line.
async fn healthz(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"}") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap()
        .to_owned()
}

async fn metric(service: &Service, name: &str, filter: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", service.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn spec9_a_client_trickling_its_headers_is_closed_after_the_header_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let directory = directory(&tmp, &[]).await;
    let mut slow = connect(&directory).await;
    let opened = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // One header byte a second: never a complete head. The writes stop when the server has
    // closed the connection.
    let trickle = {
        let (mut reader, mut writer) = slow.into_split();
        let writer = tokio::spawn(async move {
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if writer.write_all(b"X").await.is_err() {
                    return;
                }
            }
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(30), reader.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => panic!("a trickling client is still connected after 30 s"),
            }
        }
        writer.abort();
        got
    };
    let held = opened.elapsed();
    assert!(
        trickle.is_empty(),
        "no answer to an incomplete request: {:?}",
        String::from_utf8_lossy(&trickle)
    );
    // SPEC §9: 10 s; not before.
    assert!(held >= Duration::from_secs(9), "closed after {held:?}");
    assert_eq!(
        metric(
            &directory,
            "http_connections_closed_total",
            "reason=\"header_timeout\""
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn spec9_an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let directory = directory(&tmp, &["--http-idle-timeout-secs", "2"]).await;
    // Used every half second for four seconds: longer than the idle limit, never idle that long.
    let mut busy = connect(&directory).await;
    let mut idle_from = Instant::now();
    for i in 0..8 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(healthz(&mut busy).await, "HTTP/1.1 200 OK");
        idle_from = Instant::now();
    }
    // Then left idle: closed, without a byte more.
    let rest = read_until_closed(&mut busy, Duration::from_secs(30)).await;
    assert!(rest.is_empty());
    assert!(idle_from.elapsed() >= Duration::from_millis(1900));
    assert_eq!(
        metric(
            &directory,
            "http_connections_closed_total",
            "reason=\"idle_timeout\""
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn spec9_past_max_connections_the_next_one_waits_until_one_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let directory = directory(&tmp, &["--max-connections", "4"]).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = connect(&directory).await;
        assert_eq!(healthz(&mut c).await, "HTTP/1.1 200 OK");
        held.push(c);
    }
    // The fifth is accepted by the kernel's backlog but not served while four are open.
    let mut fifth = connect(&directory).await;
    fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let early = tokio::time::timeout(Duration::from_secs(1), fifth.read(&mut buf)).await;
    assert!(early.is_err(), "served past the connection cap");
    assert_eq!(
        metric_over(&mut held[0], "http_connections_open").await,
        4.0
    );
    // One closes: the fifth is served.
    held.pop();
    let n = tokio::time::timeout(Duration::from_secs(10), fifth.read(&mut buf))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
}

/// Reads a gauge over a connection already open (a new one would wait at the cap).
async fn metric_over(stream: &mut TcpStream, name: &str) -> f64 {
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = read_until_closed(stream, Duration::from_secs(10)).await;
    String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn spec9_an_oversized_content_length_is_413_before_any_body_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let directory = directory(&tmp, &["--issuer-token", "https://w.example=tok"]).await;
    let mut c = connect(&directory).await;
    // 100 MB declared; not one byte of it is sent.
    c.write_all(
        b"POST /v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n\
          Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = read_until_closed(&mut c, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 413 Payload Too Large"),
        "{answer}"
    );
    assert!(answer.contains("\"code\":\"body_too_large\""), "{answer}");
}

async fn merchant(tmp: &tempfile::TempDir, directory: &Service, extra: &[&str]) -> Service {
    ap2_e2e::merchant(&tmp.path().join("merchant"), directory, extra, &[]).await
}

fn verify_body() -> Value {
    json!({
        "mandate": "not.a.mandate",
        "agent_id": "agent-7",
        "cart": ap2_e2e::shoe_cart(),
    })
}

#[tokio::test]
async fn spec9_the_verify_endpoint_answers_only_a_backend_token() {
    let tmp = tempfile::tempdir().unwrap();
    let directory = directory(&tmp, &[]).await;
    let token = format!("backend-a={BACKEND_TOKEN}");
    let merchant = merchant(&tmp, &directory, &["--backend-token", &token]).await;
    let url = format!("{}/v1/mandates/verify", merchant.url());
    let http = reqwest::Client::new();
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic abc"),
        Some("DPoP x"),
    ] {
        let mut request = http.post(&url).json(&verify_body());
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(r.headers().contains_key("www-authenticate"));
        // Refused before the body is looked at: the same answer whatever the mandate.
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "unauthorized");
    }
    let r = http
        .post(&url)
        .bearer_auth(BACKEND_TOKEN)
        .json(&verify_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "mandate_malformed",
        "with the token the mandate itself is judged"
    );
}

#[tokio::test]
async fn spec9_without_backend_tokens_nobody_may_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let directory = directory(&tmp, &[]).await;
    let merchant = merchant(&tmp, &directory, &[]).await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/mandates/verify", merchant.url()))
        .bearer_auth("anything")
        .json(&verify_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "unauthorized");
}

#[tokio::test]
async fn spec9_with_an_internal_listener_the_verify_endpoint_is_served_there_only() {
    let tmp = tempfile::tempdir().unwrap();
    let directory = directory(&tmp, &[]).await;
    let internal = format!("127.0.0.1:{}", free_port());
    let token = format!("backend-a={BACKEND_TOKEN}");
    let merchant = merchant(
        &tmp,
        &directory,
        &["--backend-token", &token, "--internal-listen", &internal],
    )
    .await;
    let http = reqwest::Client::new();
    let public = http
        .post(format!("{}/v1/mandates/verify", merchant.url()))
        .bearer_auth(BACKEND_TOKEN)
        .json(&verify_body())
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    let private = http
        .post(format!("http://{internal}/v1/mandates/verify"))
        .bearer_auth(BACKEND_TOKEN)
        .json(&verify_body())
        .send()
        .await
        .unwrap();
    assert_eq!(private.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        private.json::<Value>().await.unwrap()["code"],
        "mandate_malformed"
    );
    let no_token = http
        .post(format!("http://{internal}/v1/mandates/verify"))
        .json(&verify_body())
        .send()
        .await
        .unwrap();
    assert_eq!(
        no_token.json::<Value>().await.unwrap()["code"],
        "unauthorized"
    );
    // The agent routes stay on the public port only.
    let sessions = http
        .get(format!("http://{internal}/v1/products"))
        .send()
        .await
        .unwrap();
    assert_eq!(sessions.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        http.get(format!("{}/v1/products", merchant.url()))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

/// `mandate` with its header's kid replaced by a random one: a kid nobody registered.
fn with_random_kid(mandate: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (header, rest) = mandate.split_once('.').unwrap();
    let mut header: Value = serde_json::from_slice(&b64.decode(header).unwrap()).unwrap();
    header["kid"] = b64
        .encode(ap2_mandate::Jti::random().unwrap().as_str().repeat(2))
        .chars()
        .take(43)
        .collect::<String>()
        .into();
    format!("{}.{rest}", b64.encode(header.to_string()))
}

#[tokio::test]
async fn spec9_2000_unknown_kids_cost_at_most_the_fetch_rate_and_cached_keys_still_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let directory = directory(&tmp, &["--issuer-token", "https://w.example=tok"]).await;
    let token = format!("backend-a={BACKEND_TOKEN}");
    // The defaults: 50 fetches a second, 100 at once.
    let merchant = merchant(
        &tmp,
        &directory,
        &[
            "--backend-token",
            &token,
            "--require-agent-binding",
            "false",
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let user = ap2_e2e::register_user(&directory, "tok", "alice").await;
    let cart_json = ap2_e2e::shoe_cart();
    let good = ap2_e2e::unbound_mandate(&user, "https://w.example", "alice", &cart_json);
    let url = format!("{}/v1/mandates/verify", merchant.url());
    let verify = |mandate: String| {
        let (http, url, cart) = (http.clone(), url.clone(), cart_json.clone());
        async move {
            let r = http
                .post(url)
                .bearer_auth(BACKEND_TOKEN)
                .json(&json!({"mandate": mandate, "agent_id": "agent-7", "cart": cart, "consume": false}))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let retry_after = r.headers().get("retry-after").cloned();
            let body: Value = r.json().await.unwrap();
            (
                status,
                body["code"].as_str().unwrap_or("ok").to_owned(),
                retry_after,
            )
        }
    };
    assert_eq!(verify(good.clone()).await.0, StatusCode::OK);
    let fetches = || metric(&merchant, "ap2_key_directory_fetches_total", "");
    let before = fetches().await;
    let started = Instant::now();
    let mut throttled = 0;
    // 2 000 made-up kids, 20 at a time, and the cached mandate in each batch.
    for _ in 0..100 {
        let batch: Vec<_> = (0..20)
            .map(|_| tokio::spawn(verify(with_random_kid(&good))))
            .collect();
        let cached = verify(good.clone()).await;
        assert_eq!((cached.0, cached.1.as_str()), (StatusCode::OK, "ok"));
        for got in batch {
            match got.await.unwrap() {
                (StatusCode::UNAUTHORIZED, code, _) if code == "mandate_key_unknown" => {}
                (StatusCode::SERVICE_UNAVAILABLE, code, retry)
                    if code == "key_directory_unavailable" =>
                {
                    assert_eq!(retry.unwrap(), "1");
                    throttled += 1;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let fetched = fetches().await - before;
    let allowed = 100.0 + 50.0 * elapsed + 1.0;
    assert!(
        fetched <= allowed,
        "{fetched} directory fetches in {elapsed:.1} s; {allowed:.0} allowed"
    );
    assert!(throttled > 0, "the limit never applied");
}
