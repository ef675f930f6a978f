//! `GET /v1/events`: revocations as Server-Sent Events (SPEC §10). Each is `event: revoked`,
//! `id: <seq>`, `data: {"kid","revoked_at"}`; a client that sends `Last-Event-ID` first gets
//! every revocation after it, read from the store, then the new ones as they are committed.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use ap2_service::problem::Problem;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use tokio::sync::watch;

use super::{AppState, store_unavailable};
use crate::store::{KeyStore, Revocation};

/// How many events are read from the store at once.
const PAGE: usize = 256;

/// A comment line this often keeps idle streams (and the proxies on their way) open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Tells the streams that a revocation was committed, and that the service is stopping.
#[derive(Debug)]
pub struct EventHub {
    latest: watch::Sender<i64>,
    closing: watch::Sender<bool>,
}

impl EventHub {
    /// A hub whose last revocation is `latest`.
    pub fn new(latest: i64) -> Self {
        Self {
            latest: watch::Sender::new(latest),
            closing: watch::Sender::new(false),
        }
    }

    /// A revocation up to `seq` is committed: every stream reads it.
    pub fn committed(&self, seq: i64) {
        self.latest.send_if_modified(|latest| {
            let newer = seq > *latest;
            if newer {
                *latest = seq;
            }
            newer
        });
    }

    /// Ends every stream (at shutdown; clients resume elsewhere with `Last-Event-ID`).
    pub fn close(&self) {
        let _ = self.closing.send(true);
    }

    fn latest(&self) -> i64 {
        *self.latest.borrow()
    }
}

/// `GET /v1/events`.
#[utoipa::path(get, path = "/v1/events", tag = "keys",
    params(("Last-Event-ID" = Option<String>, Header, pattern = "^[0-9]{1,18}$", description = "resume after this event's id")),
    responses(
        (status = 200, description = "Server-Sent Events: `id: <seq>`, `data: {\"kid\",\"revoked_at\"}`", content_type = "text/event-stream", body = String),
        (status = 400, description = "`invalid_last_event_id`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let after = match headers.get("last-event-id") {
        None => state.events.latest(),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|seq| *seq >= 0)
            .ok_or_else(|| {
                Problem::bad_request(
                    "invalid_last_event_id",
                    "Last-Event-ID is the id of an event this stream sent: a non-negative integer",
                )
            })?,
    };
    // Fails now, with a status, rather than as an empty stream.
    if let Err(e) = super::blocking(&state, |store| store.ping()).await? {
        return Err(store_unavailable(&e.to_string()));
    }
    metrics::counter!("ap2_event_streams_opened_total").increment(1);
    let stream = revocations(
        state.store.clone(),
        state.events.latest.subscribe(),
        state.events.closing.subscribe(),
        after,
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

struct Cursor {
    store: Arc<dyn KeyStore>,
    latest: watch::Receiver<i64>,
    closing: watch::Receiver<bool>,
    after: i64,
    ready: VecDeque<Revocation>,
}

/// The revocations after `after`, then each one as it is committed, until the service stops
/// or the store fails (the client resumes from the last id it got).
fn revocations(
    store: Arc<dyn KeyStore>,
    latest: watch::Receiver<i64>,
    closing: watch::Receiver<bool>,
    after: i64,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let cursor = Cursor {
        store,
        latest,
        closing,
        after,
        ready: VecDeque::new(),
    };
    futures_util::stream::unfold(cursor, |mut cursor| async move {
        loop {
            if let Some(revocation) = cursor.ready.pop_front() {
                cursor.after = revocation.seq;
                return Some((Ok(event(&revocation)), cursor));
            }
            if *cursor.closing.borrow() {
                return None;
            }
            // Marks what is committed now as seen before reading, so a commit during the
            // read wakes the wait below.
            cursor.latest.borrow_and_update();
            let (store, after) = (cursor.store.clone(), cursor.after);
            let page = tokio::task::spawn_blocking(move || store.revocations_after(after, PAGE))
                .await
                .ok()?;
            match page {
                Ok(page) if !page.is_empty() => cursor.ready.extend(page),
                Ok(_) => {
                    tokio::select! {
                        changed = cursor.latest.changed() => changed.ok()?,
                        () = closed(&mut cursor.closing) => return None,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event stream ended: the store failed");
                    return None;
                }
            }
        }
    })
}

async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

fn event(revocation: &Revocation) -> Event {
    let data = serde_json::json!({
        "kid": revocation.kid,
        "revoked_at": ap2_service::rfc3339(revocation.revoked_at),
    });
    Event::default()
        .event("revoked")
        .id(revocation.seq.to_string())
        .data(data.to_string())
}
