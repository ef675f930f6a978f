//! The layers every service's router gets, the fallbacks, `/metrics`, and serving with a
//! graceful shutdown on SIGTERM or Ctrl-C.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tower::{Layer, Service, ServiceBuilder};

use crate::problem::Problem;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Limits applied to every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest a request may take before it is answered 503 `timeout`.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Wraps `router` with problem+json fallbacks, metrics by route and status, a timeout, a
/// body limit, panic capture, and request ids (`x-request-id`, made when absent, echoed back,
/// and on every log line of the request).
pub fn with_standard_layers(router: Router, service: &'static str, limits: Limits) -> Router {
    // Install the recorder before the first request is counted.
    crate::telemetry::metrics();
    let observe = ObserveLayer(Arc::new(ObserveConfig {
        service,
        timeout: limits.request_timeout,
        max_body_bytes: u64::try_from(limits.max_body_bytes).unwrap_or(u64::MAX),
        ids: SequentialRequestId::new(),
    }));
    // One `layer` call with the whole stack: axum boxes the service of each call and clones
    // that box for every request, so a call per layer would cost a boxed clone per layer.
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(observe)
                .layer(DefaultBodyLimit::max(limits.max_body_bytes)),
        )
}

/// What every request goes through first, in one layer (one future, no boxing): its request
/// id, its log span, the timeout, panic capture (500 `internal_error`), and, when it is
/// answered, the id on the response and the metrics by route, method and status.
#[derive(Clone)]
struct ObserveLayer(Arc<ObserveConfig>);

struct ObserveConfig {
    service: &'static str,
    timeout: Duration,
    max_body_bytes: u64,
    ids: SequentialRequestId,
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let request_id = match req.headers().get(X_REQUEST_ID) {
            Some(id) if acceptable_request_id(id.as_bytes()) => id.clone(),
            _ => {
                // Absent, or not one we would write into a log line verbatim: replaced.
                let id = self.layer.0.ids.next();
                req.headers_mut().insert(X_REQUEST_ID, id.clone());
                id
            }
        };
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", |p| intern(p.as_str()));
        // The path only: query strings are not logged.
        let span = tracing::info_span!(
            "request",
            service = self.layer.0.service,
            method = %req.method(),
            path = %req.uri().path(),
            request_id = request_id.to_str().unwrap_or("-"),
            status = tracing::field::Empty,
            code = tracing::field::Empty,
        );
        // A `traceparent` from the caller makes this request part of its trace.
        crate::telemetry::accept_trace(&span, req.headers());
        let method = method_label(req.method());
        if declared_length(&req).is_some_and(|len| len > self.layer.0.max_body_bytes) {
            // Refused on its headers, before a byte of the body is read (SPEC §9).
            return Observed {
                inner: None,
                early: Some(too_large()),
                span,
                started: Instant::now(),
                service: self.layer.0.service,
                route,
                method,
                request_id: Some(request_id),
            };
        }
        let inner = {
            let _entered = span.enter();
            // A handler that panics is answered 500, like one whose future panics.
            std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req))).ok()
        };
        Observed {
            inner: inner.map(|inner| tokio::time::timeout(self.layer.0.timeout, inner)),
            early: None,
            span,
            started: Instant::now(),
            service: self.layer.0.service,
            route,
            method,
            request_id: Some(request_id),
        }
    }
}

pin_project_lite::pin_project! {
    struct Observed<F> {
        #[pin]
        inner: Option<tokio::time::Timeout<F>>,
        early: Option<Response>,
        span: tracing::Span,
        started: Instant,
        service: &'static str,
        route: &'static str,
        method: &'static str,
        request_id: Option<HeaderValue>,
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for Observed<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let polled = match (this.early.take(), this.inner.as_pin_mut()) {
            (Some(early), _) => Ok(Poll::Ready(Ok(Ok(early)))),
            // The future is never polled again after a panic: this one is Ready below.
            (None, Some(inner)) => std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))),
            (None, None) => Err(Box::new("panicked in call") as Box<dyn std::any::Any + Send>),
        };
        let mut response = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Ok(Ok(response)))) => response,
            Ok(Poll::Ready(Ok(Err(never)))) => match never {},
            Ok(Poll::Ready(Err(_elapsed))) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the request took longer than the service allows",
            )
            .into_response(),
            Err(_panic) => Problem::internal("a handler panicked").into_response(),
        };
        if let Some(id) = this.request_id.take() {
            response.headers_mut().insert(X_REQUEST_ID, id);
        }
        let elapsed = this.started.elapsed();
        let status = response.status();
        // On the exported span only: recording into a logged span reformats its fields.
        if crate::telemetry::tracing_enabled() {
            this.span.record("status", status.as_u16());
            if let Some(code) = response.extensions().get::<crate::problem::ProblemCode>() {
                this.span.record("code", code.0);
            }
        }
        let labels = [
            ("service", *this.service),
            ("route", *this.route),
            ("method", *this.method),
            ("status", intern(status.as_str())),
        ];
        metrics::counter!("http_requests_total", &labels).increment(1);
        metrics::histogram!("http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
        if status.is_server_error() {
            tracing::error!(
                status = status.as_u16(),
                latency_ms = elapsed.as_millis(),
                "response failed"
            );
        } else {
            tracing::debug!(
                status = status.as_u16(),
                latency_ms = elapsed.as_millis(),
                "finished processing request"
            );
        }
        Poll::Ready(Ok(response))
    }
}

/// The request's `Content-Length`, when it has a readable one.
fn declared_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// 413 `body_too_large`, the answer the body limit gives once it has read too much. The
/// connection is closed after it: the unread body is not drained.
fn too_large() -> Response {
    let mut response = Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "the body is larger than this service accepts",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The standard methods by name; any other is counted as `other` (a label set an attacker
/// cannot grow).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// The one `&'static str` for a metric label value, so counting a request allocates nothing.
/// Only route templates and three-digit statuses come here: a bounded set.
fn intern(value: &str) -> &'static str {
    static INTERNED: LazyLock<RwLock<HashSet<&'static str>>> = LazyLock::new(Default::default);
    let found = INTERNED.read().ok().and_then(|set| set.get(value).copied());
    if let Some(found) = found {
        return found;
    }
    let Ok(mut set) = INTERNED.write() else {
        return "unknown";
    };
    if let Some(found) = set.get(value) {
        return found;
    }
    let leaked: &'static str = Box::leak(value.to_owned().into_boxed_str());
    set.insert(leaked);
    leaked
}

/// Request ids `<process>-<n>`: a random 128-bit prefix chosen at start and a counter, unique
/// without a system call per request (a UUIDv4 asks the kernel for randomness each time).
struct SequentialRequestId {
    prefix: String,
    next: AtomicU64,
}

impl SequentialRequestId {
    fn new() -> Self {
        // Without randomness the ids are still unique within the process.
        let prefix =
            ap2_mandate::Jti::random().map_or_else(|_| "-".to_owned(), |j| j.as_str().to_owned());
        Self {
            prefix,
            next: AtomicU64::new(1),
        }
    }
}

impl SequentialRequestId {
    fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::try_from(format!("{}-{n:x}", self.prefix))
            .unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

async fn not_found() -> Problem {
    Problem::not_found("not_found", "no such resource")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this resource does not accept that method",
    )
}

/// `GET /metrics`: the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics_handler() -> Response {
    let handle = crate::telemetry::metrics();
    handle.run_upkeep();
    let mut response = handle.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// `GET /healthz`: the process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "alive: `{\"status\":\"ok\"}`", body = Object)))]
pub async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// Binds `listen` and works out the service's public URL: `public_url` when given (behind a
/// proxy it must be), else `http://<the bound address>` (right on loopback and in tests, where
/// the port is picked at bind time). It is the base of the `htu` of DPoP proofs (SPEC §8).
pub async fn bind_public(
    listen: std::net::SocketAddr,
    public_url: Option<&str>,
) -> anyhow::Result<(TcpListener, ap2_mandate::PublicUrl)> {
    let listener = TcpListener::bind(listen).await?;
    let url = match public_url {
        Some(url) => url.to_owned(),
        None => format!("http://{}", listener.local_addr()?),
    };
    let url = ap2_mandate::PublicUrl::parse(&url)
        .map_err(|e| anyhow::anyhow!("--public-url {url:?}: {e}"))?;
    Ok((listener, url))
}

/// A caller's `x-request-id` is kept only when it is 1..=64 of `[A-Za-z0-9._-]` (SPEC §9), so
/// what is logged and echoed is short and plain.
fn acceptable_request_id(id: &[u8]) -> bool {
    (1..=64).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A service bound to its port, ready to serve: what each service's `build` returns.
pub struct Server {
    routers: Vec<(TcpListener, Router)>,
    limits: crate::conn::ConnectionLimits,
    on_stop: Vec<Box<dyn FnOnce() + Send>>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port) for `router`.
    pub async fn bind(addr: std::net::SocketAddr, router: Router) -> std::io::Result<Self> {
        Ok(Self::from_listener(TcpListener::bind(addr).await?, router))
    }

    /// Serves `router` on a listener already bound (so that the router could be built
    /// knowing the port).
    pub fn from_listener(listener: TcpListener, router: Router) -> Self {
        Self {
            routers: vec![(listener, router)],
            limits: crate::conn::ConnectionLimits::default(),
            on_stop: Vec::new(),
        }
    }

    /// Also serves `router` on `listener` (an internal port), under the same limits and
    /// shutdown.
    pub fn also(mut self, listener: TcpListener, router: Router) -> Self {
        self.routers.push((listener, router));
        self
    }

    /// Serves within `limits` (default: SPEC §9's).
    pub fn with_limits(mut self, limits: crate::conn::ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Runs `f` once shutdown begins, before requests in flight are waited for: it ends what
    /// would never end by itself (event streams).
    pub fn on_stop(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.on_stop.push(Box::new(f));
        self
    }

    /// The address it listens on (the first listener's).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        match self.routers.first() {
            Some((listener, _)) => listener.local_addr(),
            None => Err(std::io::Error::other("no listener")),
        }
    }

    /// Every address it listens on, the first one first.
    pub fn local_addrs(&self) -> std::io::Result<Vec<std::net::SocketAddr>> {
        self.routers.iter().map(|(l, _)| l.local_addr()).collect()
    }

    /// Serves until SIGTERM or Ctrl-C, then finishes requests in flight.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` resolves, then finishes requests in flight.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        crate::conn::serve(self.routers, self.limits, self.on_stop, shutdown).await
    }

    /// Serves on a background task of this process (tests, the demo).
    pub fn spawn(self) -> std::io::Result<Running> {
        let addrs = self.local_addrs()?;
        let addr = self.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.run_until(async move {
            let _ = stopped.await;
        }));
        Ok(Running {
            addr,
            addrs,
            stop,
            task,
        })
    }
}

/// A service serving in the background of this process.
pub struct Running {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Every address it listens on, `addr` first.
    pub addrs: Vec<std::net::SocketAddr>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it gracefully and waits until it has.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    fn app() -> Router {
        let router = Router::new()
            .route("/ok/{id}", get(|| async { "ok" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route("/panics", get(|| async { boom() }));
        with_standard_layers(
            router,
            "test",
            Limits {
                max_body_bytes: 16,
                request_timeout: Duration::from_millis(50),
            },
        )
    }

    #[allow(clippy::panic)]
    fn boom() -> &'static str {
        panic!("boom")
    }

    async fn send(uri: &str, id: Option<&str>) -> Response {
        let mut req = axum::http::Request::get(uri);
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        app()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn code(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        body["code"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn request_ids_are_made_when_absent_and_echoed_when_given() {
        let a = send("/ok/1", None).await;
        let b = send("/ok/2", None).await;
        assert_eq!(a.status(), StatusCode::OK);
        let (a, b) = (&a.headers()[X_REQUEST_ID], &b.headers()[X_REQUEST_ID]);
        assert_ne!(a, b);
        let given = send("/ok/3", Some("trace-me")).await;
        assert_eq!(given.headers()[X_REQUEST_ID], "trace-me");
    }

    #[tokio::test]
    async fn spec9_a_request_id_is_kept_only_if_short_and_plain() {
        let longest = "a".repeat(64);
        for kept in ["trace-me", "A.b_c-9", longest.as_str()] {
            assert_eq!(
                send("/ok/1", Some(kept)).await.headers()[X_REQUEST_ID],
                kept
            );
        }
        let too_long = "a".repeat(65);
        for replaced in [too_long.as_str(), "a b", "a\"b", "a/b", "é", "a\tb", "x%0a"] {
            let r = send("/ok/1", Some(replaced)).await;
            let id = r.headers()[X_REQUEST_ID].to_str().unwrap();
            assert_ne!(id, replaced);
            assert!(acceptable_request_id(id.as_bytes()), "{id}");
        }
    }

    #[tokio::test]
    async fn a_slow_handler_is_answered_503_timeout_with_its_request_id() {
        let r = send("/slow", Some("slow-1")).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[X_REQUEST_ID], "slow-1");
        assert_eq!(code(r).await, "timeout");
    }

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500_problem_json_with_its_request_id() {
        let r = send("/panics", Some("boom-1")).await;
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.headers()[X_REQUEST_ID], "boom-1");
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_are_problem_json() {
        let r = send("/nowhere", None).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(r.headers().contains_key(X_REQUEST_ID));
        assert_eq!(code(r).await, "not_found");
    }

    #[test]
    fn metric_labels_are_interned_once_and_methods_bounded() {
        let a = intern("/v1/keys/{kid}");
        let b = intern(&String::from("/v1/keys/{kid}"));
        assert!(std::ptr::eq(a, b));
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
