//! SPEC §13: one trace across services. The key directory and the merchant run as processes
//! exporting OTLP/HTTP to a real receiver in this test, which decodes the protobuf exports with
//! the `opentelemetry-proto` types. A completion whose key is not cached yet makes the merchant
//! fetch it from the directory, with `traceparent`: both services' spans share one trace id, and
//! the directory's request span is a descendant of the merchant's.
#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ap2_e2e::{merchant, register_user, shoe_cart, unbound_mandate};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use reqwest::StatusCode;
use serde_json::json;

const ISSUER: &str = "https://wallet.example";
const TOKEN: &str = "e2e-directory-token";

/// One exported span: its service, name, ids and string attributes.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    attributes: Vec<(String, String)>,
}

impl Span {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn decode(body: &[u8]) -> Vec<Span> {
    let export = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
    let mut spans = Vec::new();
    for resource in export.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                AnyValue::StringValue(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                let attributes = span
                    .attributes
                    .iter()
                    .filter_map(|kv| {
                        let value = match kv.value.as_ref()?.value.as_ref()? {
                            AnyValue::StringValue(s) => s.clone(),
                            AnyValue::IntValue(i) => i.to_string(),
                            other => format!("{other:?}"),
                        };
                        Some((kv.key.clone(), value))
                    })
                    .collect();
                spans.push(Span {
                    service: service.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent: span.parent_span_id,
                    attributes,
                });
            }
        }
    }
    spans
}

#[tokio::test]
async fn spec13_one_completion_is_one_trace_across_merchant_and_directory() {
    // The OTLP/HTTP receiver.
    let received: Arc<Mutex<Vec<Span>>> = Arc::default();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post({
            let received = received.clone();
            move |body: axum::body::Bytes| {
                let received = received.clone();
                async move {
                    received.lock().unwrap().extend(decode(&body));
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let tmp = tempfile::tempdir().unwrap();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    // As ap2_e2e::key_directory, with the exporter on.
    let directory = {
        let db = tmp.path().join("keys.db");
        ap2_e2e::Service::start(
            "key-directory",
            &[
                "--db",
                db.to_str().unwrap(),
                "--issuer-token",
                &format!("{ISSUER}={TOKEN}"),
            ],
            &otel,
            tmp.path(),
        )
        .await
    };
    let key = register_user(&directory, TOKEN, "alice").await;
    let merchant = merchant(
        &tmp.path().join("merchant"),
        &directory,
        &["--require-agent-binding", "false"],
        &otel,
    )
    .await;
    let http = reqwest::Client::new();
    let session: serde_json::Value = http
        .post(format!("{}/v1/checkout-sessions", merchant.url()))
        .json(&json!({"line_items": [{"id": "shoe-001", "quantity": 1}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = session["id"].as_str().unwrap();
    let mandate = unbound_mandate(&key, ISSUER, "alice", &shoe_cart());
    let paid = http
        .post(format!(
            "{}/v1/checkout-sessions/{id}/complete",
            merchant.url()
        ))
        .bearer_auth(&mandate)
        .header("AP2-Agent-Id", "agent-7")
        .send()
        .await
        .unwrap();
    assert_eq!(
        paid.status(),
        StatusCode::OK,
        "{}",
        paid.text().await.unwrap()
    );

    // Both services export; find the completion's trace.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (completion, fetched) = loop {
        let spans = received.lock().unwrap().clone();
        let completion = spans.iter().find(|s| {
            s.service == "merchant"
                && s.name == "request"
                && s.attribute("path")
                    .is_some_and(|p| p.ends_with("/complete"))
        });
        let fetched = completion.and_then(|c| {
            spans.iter().find(|s| {
                s.service == "key-directory" && s.name == "request" && s.trace_id == c.trace_id
            })
        });
        if let (Some(c), Some(f)) = (completion, fetched) {
            break (c.clone(), f.clone());
        }
        assert!(
            Instant::now() < deadline,
            "no trace across both services; spans received: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The directory's request span descends from the merchant's (through the fetch span).
    let spans = received.lock().unwrap().clone();
    let mut parent = fetched.parent.clone();
    let mut chain = vec![fetched.name.clone()];
    while parent != completion.span_id {
        let up = spans
            .iter()
            .find(|s| s.span_id == parent)
            .unwrap_or_else(|| panic!("a broken chain {chain:?} in {spans:#?}"));
        chain.push(format!("{}:{}", up.service, up.name));
        parent = up.parent.clone();
    }
    assert!(
        chain.iter().any(|n| n.ends_with("key_directory_fetch")),
        "{chain:?}"
    );
    // The request ids and statuses are on the spans.
    assert!(completion.attribute("request_id").is_some());
    assert_eq!(completion.attribute("status"), Some("200"));
    assert!(fetched.attribute("request_id").is_some());

    // A refusal carries its SPEC code on the span.
    let again = http
        .post(format!(
            "{}/v1/checkout-sessions/{id}/complete",
            merchant.url()
        ))
        .bearer_auth(&mandate)
        .header("AP2-Agent-Id", "agent-7")
        .send()
        .await
        .unwrap();
    assert!(again.status().is_client_error());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let coded = received
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.service == "merchant" && s.attribute("code").is_some());
        if coded {
            break;
        }
        assert!(Instant::now() < deadline, "no span with a code");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
