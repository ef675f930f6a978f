//! Logs (tracing, JSON when `LOG_FORMAT=json`), traces (OpenTelemetry over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, W3C `traceparent` in and out) and the process's
//! Prometheus recorder.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Whether spans are exported: `traceparent` is read and written only then.
static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces.
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Starts logging to standard error. `RUST_LOG` filters (default `info`); `LOG_FORMAT=json`
/// writes one JSON object per line. A second call (tests, the in-process demo) is a no-op.
pub fn init_logs() {
    let _ = init_layers(None);
}

/// Flushes the exported spans when dropped (at the end of `main`).
#[must_use = "spans are flushed when the guard is dropped"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("exporting", &self.provider.is_some())
            .finish()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "the last spans were not exported");
        }
    }
}

/// Logs as [`init_logs`], and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, every request's span
/// exported over OTLP/HTTP (protobuf, `<endpoint>/v1/traces`, batched) as `service`, with
/// W3C trace context accepted on incoming requests and sent on outgoing ones. The standard
/// `OTEL_*` variables (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_SCHEDULE_DELAY`, …) apply.
pub fn init(service: &'static str) -> Telemetry {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty());
    let provider = endpoint.and_then(|_| {
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => exporter,
            Err(e) => {
                eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT is set but no exporter could be made: {e}");
                return None;
            }
        };
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service)
            .build();
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build(),
        )
    });
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        TRACING.store(true, Ordering::Relaxed);
    }
    let _ = init_layers(provider.as_ref().map(|p| p.tracer(service)));
    Telemetry { provider }
}

fn init_layers(
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
) -> Result<(), tracing_subscriber::util::TryInitError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let plain = (!json).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let json = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
    });
    let otel = tracer.map(|tracer| tracing_opentelemetry::layer().with_tracer(tracer));
    // try_init fails only when a subscriber is already set, which is fine.
    tracing_subscriber::registry()
        .with(filter)
        .with(plain)
        .with(json)
        .with(otel)
        .try_init()
}

/// Makes `span` a child of the trace in `headers` (`traceparent`), when traces are exported.
pub fn accept_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if !tracing_enabled() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&opentelemetry_http::HeaderExtractor(headers))
    });
    let _ = span.set_parent(parent);
}

/// Adds the current span's trace context (`traceparent`) to outgoing `headers`, when traces
/// are exported.
pub fn send_trace(headers: &mut http::HeaderMap) {
    if !tracing_enabled() {
        return;
    }
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&context, &mut opentelemetry_http::HeaderInjector(headers));
    });
}

/// Latency buckets in seconds, from 100 µs to 10 s.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

/// The process-wide Prometheus handle, installing the recorder on first use. Every service in
/// the process (one in production, three in the demo) reports through it with its own
/// `service` label.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        // Histograms keep every sample until upkeep folds them into their buckets: without it
        // they grow with every request when /metrics is not scraped.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no metrics upkeep thread; histograms drain only on scrape");
        }
        handle
    })
}
