//! Serving connections within the limits of SPEC §9: a request's headers must arrive within
//! `header_timeout`, a keep-alive connection idle for `idle_timeout` is closed, and at most
//! `max_connections` are open (the next waits in the listen backlog until one closes).
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection waits for its next
//! request, so it cannot tell a slow header (10 s) from an idle connection (60 s). Each
//! connection here has a `Watch` instead, fed by what the connection does: bytes read while
//! no request is in flight start a request head; the router being called ends it; a request
//! answered, or any byte written, restarts the idle time. One task per server looks at every
//! watch four times a second and closes the connections past a deadline, so a request costs
//! a few atomic stores: no timer and no wake-up of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tower::Service;

/// The connection limits of SPEC §9, as flags every service takes.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ConnectionLimits {
    /// Most connections open at once (SPEC §9); more wait in the listen backlog.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Seconds a request's headers may take to arrive, from the connection's first byte or
    /// the request's first byte (SPEC §9: 10).
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub http_header_timeout_secs: u64,
    /// Seconds a keep-alive connection may stay idle between requests (SPEC §9: 60).
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub http_idle_timeout_secs: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            http_header_timeout_secs: 10,
            http_idle_timeout_secs: 60,
        }
    }
}

impl ConnectionLimits {
    /// Refuses limits that would make a service unusable.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_connections > 0,
            "--max-connections must be positive"
        );
        anyhow::ensure!(
            self.http_header_timeout_secs > 0,
            "--http-header-timeout-secs must be positive"
        );
        anyhow::ensure!(
            self.http_idle_timeout_secs > 0,
            "--http-idle-timeout-secs must be positive"
        );
        Ok(())
    }
}

/// Longest the requests in flight may take to finish once shutdown begins.
const DRAIN: Duration = Duration::from_secs(15);

/// Serves `routers` (each on its listener) until `shutdown` resolves; then stops accepting,
/// runs `on_stop`, and lets the requests in flight finish (for at most 15 s).
pub async fn serve(
    routers: Vec<(TcpListener, Router)>,
    limits: ConnectionLimits,
    on_stop: Vec<Box<dyn FnOnce() + Send>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    limits.check().map_err(std::io::Error::other)?;
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = Arc::new(GracefulShutdown::new());
    let watches = Arc::new(Watches::default());
    let scanner = tokio::spawn(watches.clone().scan(limits));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut loops = Vec::with_capacity(routers.len());
    for (listener, router) in routers {
        loops.push(tokio::spawn(accept_loop(
            listener,
            router,
            permits.clone(),
            graceful.clone(),
            watches.clone(),
            stopped.clone(),
        )));
    }
    shutdown.await;
    let _ = stop.send(true);
    for task in loops {
        // Each loop drops its listener when it ends.
        let _ = task.await;
    }
    for f in on_stop {
        f();
    }
    match Arc::try_unwrap(graceful) {
        Ok(graceful) => {
            if tokio::time::timeout(DRAIN, graceful.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("shutdown: requests still in flight after 15 s were dropped");
            }
        }
        Err(_) => tracing::warn!("shutdown: connections not drained"),
    }
    scanner.abort();
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    permits: Arc<Semaphore>,
    graceful: Arc<GracefulShutdown>,
    watches: Arc<Watches>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    // hyper's header timer stays off: the watch below replaces it.
    let http = hyper::server::conn::http1::Builder::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = stopping(&mut stopped) => return,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    if !is_connection_error(&e) {
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            () = stopping(&mut stopped) => return,
        };
        let _ = stream.set_nodelay(true);
        let watch = Arc::new(Watch::new());
        let io = TokioIo::new(Watched {
            inner: stream,
            watch: watch.clone(),
        });
        let service = hyper_util::service::TowerToHyperService::new(Tracked {
            inner: router.clone(),
            watch: watch.clone(),
        });
        let connection = graceful.watch(http.serve_connection(io, service));
        let watched = watches.add(watch.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _watched = watched;
            tokio::select! {
                _ = connection => {}
                () = watch.close.notified() => {
                    let reason = watch.reason();
                    metrics::counter!("http_connections_closed_total", "reason" => reason).increment(1);
                }
            }
        });
    }
}

/// Resolves once shutdown begins (or its sender is gone).
async fn stopping(stopped: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Every open connection's [`Watch`], by a number of its own.
#[derive(Default)]
struct Watches {
    open: std::sync::Mutex<std::collections::HashMap<u64, Arc<Watch>>>,
    next: AtomicU64,
}

/// Takes its connection out of [`Watches`] when the connection ends.
struct Registered(Arc<Watches>, u64);

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut open) = self.0.open.lock() {
            open.remove(&self.1);
            metrics::gauge!("http_connections_open").set(open.len() as f64);
        }
    }
}

/// How often the deadlines are looked at: a connection is closed at most this late.
const SCAN_EVERY: Duration = Duration::from_millis(250);

impl Watches {
    fn add(self: &Arc<Self>, watch: Arc<Watch>) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut open) = self.open.lock() {
            open.insert(id, watch);
            metrics::gauge!("http_connections_open").set(open.len() as f64);
        }
        Registered(self.clone(), id)
    }

    /// Closes, every [`SCAN_EVERY`], the connections past a deadline.
    async fn scan(self: Arc<Self>, limits: ConnectionLimits) {
        let header = limits.http_header_timeout_secs.saturating_mul(1000);
        let idle = limits.http_idle_timeout_secs.saturating_mul(1000);
        let mut tick = tokio::time::interval(SCAN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut expired = Vec::new();
        loop {
            tick.tick().await;
            if let Ok(open) = self.open.lock() {
                expired.extend(
                    open.values()
                        .filter_map(|w| w.past_deadline(header, idle).map(|r| (w.clone(), r))),
                );
            }
            for (watch, reason) in expired.drain(..) {
                watch.close_for(reason);
            }
        }
    }
}

/// Why a connection was closed, as its metric label.
const REASONS: [&str; 3] = ["", "header_timeout", "idle_timeout"];

/// What one connection is doing, in milliseconds since it was accepted.
struct Watch {
    opened: Instant,
    in_flight: AtomicU32,
    /// When the head of the next request began to arrive, plus one; 0: none is arriving.
    head_since: AtomicU64,
    /// When the connection last answered a request or wrote a byte.
    idle_since: AtomicU64,
    /// An index into [`REASONS`]; set once, when the connection is closed for it.
    reason: std::sync::atomic::AtomicU8,
    close: Notify,
}

impl Watch {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            // The first request's headers are due from the moment the connection opens.
            head_since: AtomicU64::new(1),
            idle_since: AtomicU64::new(0),
            reason: std::sync::atomic::AtomicU8::new(0),
            close: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn read_some(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == 0
        {
            self.head_since.store(self.now() + 1, Ordering::Release);
        }
    }

    fn wrote_some(&self) {
        self.idle_since.store(self.now(), Ordering::Relaxed);
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Release);
    }

    fn end(&self) {
        self.idle_since.store(self.now(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// The reason (an index into [`REASONS`]) when the connection is past a deadline: its
    /// request head arriving for longer than `header` ms, or nothing in flight and nothing
    /// written for `idle` ms. A request being served is bounded by its own timeout.
    fn past_deadline(&self, header: u64, idle: u64) -> Option<u8> {
        if self.reason.load(Ordering::Relaxed) != 0 {
            return None;
        }
        let now = self.now();
        let head_since = self.head_since.load(Ordering::Acquire);
        if head_since != 0 {
            return (now >= head_since - 1 + header).then_some(1);
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        (now >= self.idle_since.load(Ordering::Relaxed) + idle).then_some(2)
    }

    fn close_for(&self, reason: u8) {
        self.reason.store(reason, Ordering::Relaxed);
        self.close.notify_one();
    }

    fn reason(&self) -> &'static str {
        REASONS
            .get(usize::from(self.reason.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or("")
    }
}

pin_project_lite::pin_project! {
    /// The connection's socket, telling its [`Watch`] when bytes go in or out.
    struct Watched {
        #[pin]
        inner: TcpStream,
        watch: Arc<Watch>,
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.watch.read_some();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.watch.wrote_some();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.watch.wrote_some();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// The router, telling the connection's [`Watch`] when a request starts and is answered.
#[derive(Clone)]
struct Tracked {
    inner: Router,
    watch: Arc<Watch>,
}

impl Service<hyper::Request<hyper::body::Incoming>> for Tracked {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = InFlight;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: hyper::Request<hyper::body::Incoming>) -> InFlight {
        self.watch.begin();
        InFlight {
            inner: self.inner.call(req.map(Body::new)),
            guard: Answered(self.watch.clone()),
        }
    }
}

/// Ends the request on the watch when the answer is ready or the request is dropped.
struct Answered(Arc<Watch>);

impl Drop for Answered {
    fn drop(&mut self) {
        self.0.end();
    }
}

pin_project_lite::pin_project! {
    struct InFlight {
        #[pin]
        inner: axum::routing::future::RouteFuture<std::convert::Infallible>,
        guard: Answered,
    }
}

impl Future for InFlight {
    type Output = Result<axum::response::Response, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}
