//! The jti replay set: Redis in production, memory for a single process.

use std::time::Duration;

use ap2_mandate::memory::MemoryReplayGuard;
use ap2_mandate::{ReplayEntry, ReplayError, ReplayGuard};
use redis::aio::ConnectionManager;

/// The replay set this merchant uses.
pub enum ReplayStore {
    /// Shared by every merchant instance, survives their restarts.
    Redis(RedisReplayGuard),
    /// This process only: for the single-process demo.
    Memory(MemoryReplayGuard),
}

impl ReplayGuard for ReplayStore {
    async fn consume(&self, entries: &[ReplayEntry<'_>], now_unix: i64) -> Result<(), ReplayError> {
        match self {
            Self::Redis(redis) => redis.consume(entries, now_unix).await,
            Self::Memory(memory) => memory.consume(entries, now_unix).await,
        }
    }
}

impl ReplayStore {
    /// Whether the store answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), String> {
        match self {
            Self::Redis(redis) => redis.ping().await,
            Self::Memory(_) => Ok(()),
        }
    }
}

/// `SET <prefix>:<key> 1 NX PX <ms>` over one multiplexed connection that reconnects by
/// itself; every command is bounded by `timeout`, and any failure is an error the verifier
/// turns into `replay_store_unavailable` (fail closed). Several keys at once (a mandate and
/// its DPoP proof, SPEC §8 step 7) are one Lua script, which Redis runs atomically.
pub struct RedisReplayGuard {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    all_or_none: redis::Script,
    /// Failure log lines left: one a second, five at once (each failure is counted anyway).
    failure_log: ap2_service::rate::Bucket,
}

/// Returns 0 when every key was new and is now set with its TTL (ARGV\[i\] ms), else the
/// 1-based index of the first key that was already there (and sets none).
const ALL_OR_NONE: &str = r"
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then return i end
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, '1', 'PX', ARGV[i])
end
return 0
";

impl RedisReplayGuard {
    /// Connects lazily: the merchant starts with Redis down and recovers when it comes back.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            timeout,
            all_or_none: redis::Script::new(ALL_OR_NONE),
            failure_log: ap2_service::rate::Bucket::new(1.0, 5.0),
        })
    }

    async fn ping(&self) -> Result<(), String> {
        let mut conn = self.conn.clone();
        let reply = tokio::time::timeout(
            self.timeout,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        match reply {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }
}

impl ReplayGuard for RedisReplayGuard {
    async fn consume(&self, entries: &[ReplayEntry<'_>], now_unix: i64) -> Result<(), ReplayError> {
        let key = |entry: &ReplayEntry<'_>| format!("{}:{}", self.prefix, entry.key.as_str());
        let ttl_ms = |entry: &ReplayEntry<'_>| {
            entry
                .until_unix
                .saturating_sub(now_unix)
                .max(1)
                .saturating_mul(1000)
        };
        let mut conn = self.conn.clone();
        let reply = match entries {
            [entry] => {
                let mut command = redis::cmd("SET");
                command
                    .arg(key(entry))
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms(entry));
                tokio::time::timeout(
                    self.timeout,
                    command.query_async::<Option<String>>(&mut conn),
                )
                .await
                .map(|r| r.map(|set| if set.is_some() { 0 } else { 1 }))
            }
            _ => {
                let mut invocation = self.all_or_none.prepare_invoke();
                for entry in entries {
                    invocation.key(key(entry)).arg(ttl_ms(entry));
                }
                tokio::time::timeout(self.timeout, invocation.invoke_async::<usize>(&mut conn))
                    .await
            }
        };
        let failure = match reply {
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(first_used)) => return Err(ReplayError::AlreadyUsed(first_used - 1)),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", self.timeout.as_millis()),
        };
        metrics::counter!("ap2_replay_store_errors_total").increment(1);
        if self.failure_log.take() {
            tracing::warn!(error = %failure, "replay store failed: refusing the mandate");
        }
        Err(ReplayError::Unavailable(failure))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ap2_mandate::{Jti, ReplayKey};

    /// SPEC §4 step 7: a replay store that is reachable but slow is refused like one that is
    /// down. The "server" here accepts connections and never answers.
    #[tokio::test]
    async fn spec4_step7_a_slow_replay_store_fails_closed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let guard = RedisReplayGuard::new(
            &format!("redis://{addr}"),
            "ap2:jti",
            Duration::from_millis(250),
        )
        .unwrap();
        let key = ReplayKey::new("https://wallet.example", &Jti::parse("slow").unwrap());
        let entry = ReplayEntry {
            key: &key,
            until_unix: 1_000,
        };
        let err = guard.consume(&[entry], 900).await.unwrap_err();
        assert!(matches!(err, ReplayError::Unavailable(_)), "{err:?}");
        silent.abort();
    }
}
