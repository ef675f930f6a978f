//! The key directory's client. As a [`KeyResolver`] it keeps keys in a cache: a fresh entry
//! is served from memory, concurrent misses for one kid make one upstream request, unknown
//! kids are remembered briefly, and once an entry is stale an unreachable directory is an
//! error (`key_directory_unavailable`), never an accept. Each key is parsed once, when it is
//! fetched. The wallet uses the same client to register and revoke keys.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ap2_mandate::{EcPublicKey, KeyRecord, KeyResolver, KeyStatus, Kid, ResolveError};
use moka::Expiry;
use moka::future::Cache;
use reqwest::StatusCode;
use reqwest::header::CACHE_CONTROL;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

/// Cache and network settings.
#[derive(Debug, Clone)]
pub struct DirectoryClientConfig {
    /// Longest a key is served from memory; a shorter `max-age` from the directory wins.
    pub fresh_for: Duration,
    /// How long an unknown kid is remembered as unknown.
    pub unknown_for: Duration,
    /// Timeout of one request to the directory, connection included.
    pub timeout: Duration,
    /// Most entries kept.
    pub max_entries: u64,
    /// At most this many directory requests per second for kids not in the cache, with
    /// bursts of `fetch_burst` (SPEC §9); `None`: no limit. Past it an uncached kid is
    /// `Unavailable` (nothing is cached for it), while cached kids are served as before.
    pub fetch_rate: Option<f64>,
    /// The bucket's size.
    pub fetch_burst: f64,
}

impl Default for DirectoryClientConfig {
    fn default() -> Self {
        Self {
            fresh_for: Duration::from_secs(60),
            unknown_for: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            max_entries: 100_000,
            fetch_rate: None,
            fetch_burst: 100.0,
        }
    }
}

#[derive(Clone)]
enum Entry {
    Found {
        record: Arc<KeyRecord>,
        ttl: Duration,
    },
    Unknown {
        ttl: Duration,
    },
}

struct EntryExpiry;

impl Expiry<Kid, Entry> for EntryExpiry {
    fn expire_after_create(&self, _: &Kid, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(match entry {
            Entry::Found { ttl, .. } | Entry::Unknown { ttl } => *ttl,
        })
    }
}

/// Why a write to the directory failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The directory refused, with its problem code.
    #[error("key directory answered {status}: {code}: {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem's `code`.
        code: String,
        /// The problem's `detail`.
        detail: String,
    },
    /// The directory could not be reached or answered nonsense.
    #[error("key directory unavailable: {0}")]
    Unavailable(String),
}

/// A key as the directory serves it.
#[derive(Debug, Clone, Deserialize)]
pub struct KeyView {
    /// The kid.
    pub kid: String,
    /// The registering issuer.
    pub issuer: String,
    /// The user.
    pub subject: String,
    /// `active` or `revoked`.
    pub status: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, once revoked.
    #[serde(default)]
    pub revoked_at: Option<String>,
    /// The public JWK.
    pub jwk: Value,
}

/// The key directory's client. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct DirectoryClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// For the event stream: no overall timeout, a read timeout instead.
    stream_http: reqwest::Client,
    base: String,
    cache: Cache<Kid, Entry>,
    /// Kids the event stream said are revoked, kept longer than any cache entry, so that a
    /// lookup in flight when the event came cannot cache the key as active again.
    revoked: Cache<Kid, ()>,
    config: DirectoryClientConfig,
    upstream_fetches: AtomicU64,
    fetch_limit: Option<ap2_service::rate::Bucket>,
}

impl DirectoryClient {
    /// A client of the directory at `base_url` (e.g. `http://127.0.0.1:8083`).
    pub fn new(base_url: &str, config: DirectoryClientConfig) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| ClientError::Unavailable(ap2_service::describe(&e)))?;
        let cache = Cache::builder()
            .max_capacity(config.max_entries)
            .expire_after(EntryExpiry)
            .build();
        let stream_http = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .read_timeout(STREAM_READ_TIMEOUT)
            .build()
            .map_err(|e| ClientError::Unavailable(ap2_service::describe(&e)))?;
        let revoked = Cache::builder()
            .max_capacity(config.max_entries)
            .time_to_live(config.fresh_for.saturating_mul(2))
            .build();
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                stream_http,
                revoked,
                base: base_url.trim_end_matches('/').to_owned(),
                cache,
                fetch_limit: config
                    .fetch_rate
                    .map(|rate| ap2_service::rate::Bucket::new(rate, config.fetch_burst)),
                config,
                upstream_fetches: AtomicU64::new(0),
            }),
        })
    }

    /// How many lookups went to the directory so far (cache misses that were not coalesced).
    pub fn upstream_fetches(&self) -> u64 {
        self.inner.upstream_fetches.load(Ordering::Relaxed)
    }

    /// Registers `jwk` for `subject` with the issuer's token. Returns the stored key and
    /// whether it was new (201) rather than the same registration again (200).
    pub async fn register(
        &self,
        issuer_token: &SecretString,
        subject: &str,
        jwk: &Value,
    ) -> Result<(KeyView, bool), ClientError> {
        let response = self
            .inner
            .http
            .post(format!("{}/v1/keys", self.inner.base))
            .headers(trace_headers())
            .bearer_auth(issuer_token.expose_secret())
            .json(&serde_json::json!({ "subject": subject, "jwk": jwk }))
            .send()
            .await
            .map_err(|e| ClientError::Unavailable(ap2_service::describe(&e)))?;
        let created = response.status() == StatusCode::CREATED;
        Ok((read_key(response).await?, created))
    }

    /// Revokes `kid` with the issuer's token.
    pub async fn revoke(
        &self,
        issuer_token: &SecretString,
        kid: &Kid,
    ) -> Result<KeyView, ClientError> {
        let response = self
            .inner
            .http
            .post(format!("{}/v1/keys/{kid}/revoke", self.inner.base))
            .headers(trace_headers())
            .bearer_auth(issuer_token.expose_secret())
            .send()
            .await
            .map_err(|e| ClientError::Unavailable(ap2_service::describe(&e)))?;
        let view = read_key(response).await?;
        self.inner.cache.invalidate(kid).await;
        Ok(view)
    }

    async fn fetch(&self, kid: &Kid) -> Result<Entry, ResolveError> {
        if let Some(limit) = &self.inner.fetch_limit
            && !limit.take()
        {
            // Not logged per kid: a flood of made-up kids would flood the log too.
            metrics::counter!("ap2_key_fetches_throttled_total").increment(1);
            return Err(ResolveError::Unavailable(
                "too many lookups of uncached kids; try again shortly".into(),
            ));
        }
        self.inner.upstream_fetches.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ap2_key_directory_fetches_total").increment(1);
        let unavailable = |why: String| {
            metrics::counter!("ap2_key_directory_errors_total").increment(1);
            tracing::warn!(%kid, error = %why, "key directory lookup failed");
            ResolveError::Unavailable(why)
        };
        let response = self
            .inner
            .http
            .get(format!("{}/v1/keys/{kid}", self.inner.base))
            .headers(trace_headers())
            .send()
            .await
            .map_err(|e| unavailable(ap2_service::describe(&e)))?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Ok(Entry::Unknown {
                    ttl: self.inner.config.unknown_for,
                });
            }
            other => return Err(unavailable(format!("status {other}"))),
        }
        let ttl = max_age(response.headers().get(CACHE_CONTROL))
            .map_or(self.inner.config.fresh_for, |age| {
                age.min(self.inner.config.fresh_for)
            });
        let view: KeyView = response
            .json()
            .await
            .map_err(|e| unavailable(format!("unreadable key: {}", ap2_service::describe(&e))))?;
        let record = to_record(view, kid).map_err(unavailable)?;
        Ok(Entry::Found {
            record: Arc::new(record),
            ttl,
        })
    }
}

/// How long the event stream may be silent (the directory sends a comment every 15 s) before
/// the connection is taken for dead and opened again.
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(45);

/// Longest line the event stream may send.
const STREAM_MAX_LINE: usize = 16 * 1024;

impl DirectoryClient {
    /// Marks `kid` revoked and drops it from the cache: from now on it resolves as revoked.
    pub async fn evict_revoked(&self, kid: &Kid) {
        self.inner.revoked.insert(kid.clone(), ()).await;
        self.inner.cache.invalidate(kid).await;
    }

    /// Follows the directory's `GET /v1/events` (SPEC §10) for as long as the future runs:
    /// each `revoked` event evicts its kid at once. When the stream breaks it is opened again
    /// (100 ms, doubling up to 5 s) with `Last-Event-ID`, so nothing sent meanwhile is missed;
    /// while it is down, cached keys expire at their max-age as before. The gauge
    /// `ap2_revocation_stream_connected` is 1 while it is open.
    ///
    /// `resume_after` is the id to start after (`Some("0")`: every revocation ever made; `None`:
    /// those from now on). `on_revoked` is called with each revoked kid after its eviction.
    pub async fn follow_revocations(
        self,
        resume_after: Option<String>,
        mut on_revoked: impl FnMut(&Kid) + Send,
    ) {
        let mut last_id = resume_after;
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut connected = false;
            match self
                .stream_once(&mut last_id, &mut connected, &mut on_revoked)
                .await
            {
                Ok(()) => tracing::info!("revocation stream ended; opening it again"),
                Err(why) => tracing::warn!(error = %why, "revocation stream down"),
            }
            metrics::gauge!("ap2_revocation_stream_connected").set(0.0);
            if connected {
                backoff = Duration::from_millis(100);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn stream_once(
        &self,
        last_id: &mut Option<String>,
        connected: &mut bool,
        on_revoked: &mut (impl FnMut(&Kid) + Send),
    ) -> Result<(), String> {
        let mut request = self
            .inner
            .stream_http
            .get(format!("{}/v1/events", self.inner.base))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_id.as_deref() {
            request = request.header("last-event-id", id);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| ap2_service::describe(&e))?;
        if response.status() != StatusCode::OK {
            return Err(format!("status {}", response.status()));
        }
        *connected = true;
        metrics::gauge!("ap2_revocation_stream_connected").set(1.0);
        metrics::counter!("ap2_revocation_stream_connects_total").increment(1);
        tracing::info!(
            resumed_after = last_id.as_deref().unwrap_or("-"),
            "revocation stream open"
        );
        let mut parser = SseParser::default();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ap2_service::describe(&e))?
        {
            for event in parser.feed(&chunk)? {
                if event.event == "revoked"
                    && let Some(kid) = self.on_revoked(&event.data).await
                {
                    on_revoked(&kid);
                }
                if let Some(id) = event.id {
                    *last_id = Some(id);
                }
            }
        }
        Ok(())
    }

    async fn on_revoked(&self, data: &str) -> Option<Kid> {
        #[derive(Deserialize)]
        struct Revoked {
            kid: String,
        }
        match serde_json::from_str::<Revoked>(data)
            .ok()
            .and_then(|r| Kid::parse(&r.kid).ok())
        {
            Some(kid) => {
                self.evict_revoked(&kid).await;
                metrics::counter!("ap2_revocations_received_total").increment(1);
                tracing::debug!(%kid, "key revoked: evicted from the cache");
                Some(kid)
            }
            None => {
                tracing::warn!("revocation event without a usable kid");
                None
            }
        }
    }
}

/// One Server-Sent Event.
#[derive(Debug, Default, PartialEq, Eq)]
struct SseEvent {
    event: String,
    data: String,
    id: Option<String>,
}

/// The event stream format (HTML Living Standard §9.2.6), fed chunk by chunk.
#[derive(Debug, Default)]
struct SseParser {
    line: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        let mut done = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.line_done(&line, &mut done);
            } else if self.line.len() >= STREAM_MAX_LINE {
                return Err("an event stream line is too long".into());
            } else {
                self.line.push(b);
            }
        }
        Ok(done)
    }

    fn line_done(&mut self, line: &[u8], done: &mut Vec<SseEvent>) {
        if line.is_empty() {
            let event = std::mem::take(&mut self.current);
            if std::mem::take(&mut self.has_data) {
                done.push(SseEvent {
                    event: if event.event.is_empty() {
                        "message".into()
                    } else {
                        event.event
                    },
                    ..event
                });
            } else if event.id.is_some() {
                // An id without data still moves the stream's last id.
                done.push(SseEvent {
                    event: String::new(),
                    ..event
                });
            }
            return;
        }
        let text = String::from_utf8_lossy(line);
        if text.starts_with(':') {
            return;
        }
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text.as_ref(), ""),
        };
        match field {
            "event" => self.current.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.current.id = Some(value.to_owned()),
            _ => {}
        }
    }
}

impl KeyResolver for DirectoryClient {
    async fn resolve(&self, kid: &Kid) -> Result<Arc<KeyRecord>, ResolveError> {
        let entry = match self.inner.cache.get(kid).await {
            Some(entry) => {
                metrics::counter!("ap2_key_cache_hits_total").increment(1);
                entry
            }
            None => {
                metrics::counter!("ap2_key_cache_misses_total").increment(1);
                // Its own span, child of the request's: the directory's span joins the trace.
                let fetch = tracing::Instrument::instrument(
                    self.fetch(kid),
                    tracing::info_span!("key_directory_fetch", %kid),
                );
                self.inner
                    .cache
                    .try_get_with_by_ref(kid, fetch)
                    .await
                    .map_err(|e| ResolveError::clone(&e))?
            }
        };
        match entry {
            Entry::Found { record, .. }
                if record.status == KeyStatus::Active && self.inner.revoked.contains_key(kid) =>
            {
                // Revoked since it was fetched: the stream said so (SPEC §10).
                Ok(Arc::new(KeyRecord {
                    status: KeyStatus::Revoked,
                    ..KeyRecord::clone(&record)
                }))
            }
            Entry::Found { record, .. } => Ok(record),
            Entry::Unknown { .. } => Err(ResolveError::Unknown),
        }
    }
}

/// The current span's `traceparent`, when traces are exported (SPEC §13).
fn trace_headers() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    ap2_service::telemetry::send_trace(&mut headers);
    headers
}

fn to_record(view: KeyView, kid: &Kid) -> Result<KeyRecord, String> {
    if view.kid != kid.as_str() {
        return Err("the directory answered for another kid".into());
    }
    let status = match view.status.as_str() {
        "active" => KeyStatus::Active,
        "revoked" => KeyStatus::Revoked,
        _ => return Err(format!("unknown key status {:?}", view.status)),
    };
    let (public, _) = EcPublicKey::from_jwk(&view.jwk).map_err(|e| format!("bad JWK: {e}"))?;
    Ok(KeyRecord {
        kid: kid.clone(),
        issuer: view.issuer,
        subject: view.subject,
        status,
        key: public.verification_key().map_err(|e| e.to_string())?,
    })
}

/// `max-age` of a `Cache-Control` header, if any.
fn max_age(value: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let text = value?.to_str().ok()?;
    text.split(',')
        .filter_map(|directive| directive.trim().strip_prefix("max-age="))
        .find_map(|secs| secs.parse::<u64>().ok())
        .map(Duration::from_secs)
}

async fn read_key(response: reqwest::Response) -> Result<KeyView, ClientError> {
    let status = response.status();
    if status.is_success() {
        return response.json().await.map_err(|e| {
            ClientError::Unavailable(format!("unreadable answer: {}", ap2_service::describe(&e)))
        });
    }
    let problem: Value = response.json().await.unwrap_or(Value::Null);
    let text = |name: &str| {
        problem
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    if status.is_server_error() {
        return Err(ClientError::Unavailable(format!(
            "status {status}: {}",
            text("code")
        )));
    }
    Err(ClientError::Refused {
        status: status.as_u16(),
        code: text("code"),
        detail: text("detail"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec10_event_stream_lines_are_parsed_across_chunks() {
        let mut p = SseParser::default();
        let mut got = p
            .feed(b": keep-alive\n\nevent: revoked\nid: 7\nda")
            .unwrap();
        assert!(got.is_empty());
        got.extend(p.feed(b"ta: {\"kid\":\"k1\"}\r\n\r\nid: 8\n\n").unwrap());
        assert_eq!(
            got,
            vec![
                SseEvent {
                    event: "revoked".into(),
                    data: r#"{"kid":"k1"}"#.into(),
                    id: Some("7".into()),
                },
                SseEvent {
                    event: String::new(),
                    data: String::new(),
                    id: Some("8".into()),
                },
            ]
        );
        let mut long = SseParser::default();
        assert!(long.feed(&vec![b'a'; STREAM_MAX_LINE + 1]).is_err());
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        let v = |s: &'static str| reqwest::header::HeaderValue::from_static(s);
        assert_eq!(
            max_age(Some(&v("public, max-age=60"))),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age(Some(&v("max-age=5"))), Some(Duration::from_secs(5)));
        assert_eq!(max_age(Some(&v("no-store"))), None);
        assert_eq!(max_age(None), None);
    }
}
