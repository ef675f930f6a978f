//! Notification delivery by webhook (SPEC §12, `--notify-url`): each notification is POSTed as
//! JSON, signed with `--notify-secret` (`AP2-Signature: t=<unix>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>">`), from a bounded queue, retried with backoff, never on the request's path.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use secrecy::{ExposeSecret, SecretString};

/// Notifications waiting to be sent, at most; one more is dropped (and logged), never blocks
/// the request that made it.
pub const QUEUE: usize = 10_000;
/// Tries per notification: the first, then after 1, 2, 4, 8 and 16 s.
pub const TRIES: u32 = 6;
/// Notifications being sent at once.
const IN_FLIGHT: usize = 16;

/// The sending side of the queue.
#[derive(Clone)]
pub struct Notifier {
    queue: tokio::sync::mpsc::Sender<Vec<u8>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

/// `t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut context = hmac::Context::with_key(&key);
    context.update(t.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    let tag = context.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

impl Notifier {
    /// Starts the sender: POSTs to `url`, signed with `secret`.
    pub fn start(
        url: String,
        secret: SecretString,
        http: reqwest::Client,
        clock: Arc<dyn ap2_mandate::Clock>,
    ) -> Self {
        let (queue, mut waiting) = tokio::sync::mpsc::channel::<Vec<u8>>(QUEUE);
        let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        let (url, secret) = (Arc::new(url), Arc::new(secret));
        tokio::spawn(async move {
            while let Some(body) = waiting.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (url, secret, http) = (url.clone(), secret.clone(), http.clone());
                let clock = clock.clone();
                tokio::spawn(async move {
                    deliver(&http, &url, &secret, clock.as_ref(), &body).await;
                    drop(slot);
                });
            }
        });
        Self { queue }
    }

    /// Queues `notification`; a full queue drops it with a warning.
    pub fn send(&self, notification: &serde_json::Value) {
        let Ok(body) = serde_json::to_vec(notification) else {
            return;
        };
        if self.queue.try_send(body).is_err() {
            metrics::counter!("wallet_notifications_dropped_total").increment(1);
            tracing::warn!("the notification queue is full: a notification was dropped");
        }
    }
}

async fn deliver(
    http: &reqwest::Client,
    url: &str,
    secret: &SecretString,
    clock: &dyn ap2_mandate::Clock,
    body: &[u8],
) {
    let mut backoff = Duration::from_secs(1);
    for attempt in 1..=TRIES {
        let t = clock.now_unix();
        let sent = http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                "AP2-Signature",
                signature(secret.expose_secret().as_bytes(), t, body),
            )
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                metrics::counter!("wallet_notifications_sent_total").increment(1);
                return;
            }
            Ok(response) => {
                tracing::warn!(attempt, status = %response.status(), "the notification webhook refused a notification");
            }
            Err(e) => {
                tracing::warn!(attempt, error = %ap2_service::describe(&e), "the notification webhook failed")
            }
        }
        if attempt < TRIES {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    metrics::counter!("wallet_notifications_failed_total").increment(1);
    tracing::error!("a notification was not delivered after {TRIES} tries");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec12_signature_is_hmac_sha256_of_t_dot_body() {
        // Expected value computed independently (Python's hmac module).
        assert_eq!(
            signature(b"whsec-demo", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=81cd083dd94ec50aee6a1f21d9ad7dff08949a09510019175bfa6afebe822469"
        );
    }
}
