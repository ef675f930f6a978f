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
    conn: Conn,
    prefix: String,
    timeout: Duration,
    all_or_none: redis::Script,
    /// After a write, how many replicas must have it (`WAIT`, SPEC §11).
    min_replicas: u32,
    /// Failure log lines left: one a second, five at once (each failure is counted anyway).
    failure_log: ap2_service::rate::Bucket,
}

/// One Redis, or a Redis Cluster (connected on first use, so the merchant starts while the
/// cluster is down and recovers when it comes back).
enum Conn {
    Single(ConnectionManager),
    Cluster(Box<Cluster>),
}

/// The cluster's client and its connection, once made.
struct Cluster {
    client: redis::cluster::ClusterClient,
    conn: tokio::sync::OnceCell<redis::cluster_async::ClusterConnection>,
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
        Ok(Self::with(Conn::Single(conn), prefix, timeout))
    }

    /// A Redis Cluster reached through any of `nodes` (SPEC §11). Keys that one script sets
    /// together share a hash tag, so they live in one slot.
    pub fn cluster(nodes: &[String], prefix: &str, timeout: Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(!nodes.is_empty(), "--redis-cluster-nodes names no node");
        let client = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(1)
            .build()?;
        Ok(Self::with(
            Conn::Cluster(Box::new(Cluster {
                client,
                conn: tokio::sync::OnceCell::new(),
            })),
            prefix,
            timeout,
        ))
    }

    /// Requires `n` replicas to acknowledge each accepted mandate (`WAIT`).
    pub fn with_min_replicas(mut self, n: u32) -> Self {
        self.min_replicas = n;
        self
    }

    fn with(conn: Conn, prefix: &str, timeout: Duration) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            timeout,
            all_or_none: redis::Script::new(ALL_OR_NONE),
            min_replicas: 0,
            failure_log: ap2_service::rate::Bucket::new(1.0, 5.0),
        }
    }

    async fn cluster_conn(
        &self,
        client: &redis::cluster::ClusterClient,
        cell: &tokio::sync::OnceCell<redis::cluster_async::ClusterConnection>,
    ) -> Result<redis::cluster_async::ClusterConnection, String> {
        let connect = cell.get_or_try_init(|| async {
            match tokio::time::timeout(self.timeout * 4, client.get_async_connection()).await {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the cluster did not answer".to_owned()),
            }
        });
        connect.await.cloned()
    }

    async fn ping(&self) -> Result<(), String> {
        let ping = redis::cmd("PING");
        let reply = match &self.conn {
            Conn::Single(conn) => {
                let mut conn = conn.clone();
                tokio::time::timeout(self.timeout, ping.query_async::<String>(&mut conn)).await
            }
            Conn::Cluster(cluster) => {
                let mut conn = self.cluster_conn(&cluster.client, &cluster.conn).await?;
                tokio::time::timeout(self.timeout, ping.query_async::<String>(&mut conn)).await
            }
        };
        match reply {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// The Redis keys of `entries`. On a cluster they share the first one's hash tag.
    fn keys(&self, entries: &[ReplayEntry<'_>]) -> Vec<String> {
        match (&self.conn, entries.first()) {
            (Conn::Cluster(_), Some(first)) => entries
                .iter()
                .map(|e| {
                    format!(
                        "{}:{{{}}}:{}",
                        self.prefix,
                        first.key.as_str(),
                        e.key.as_str()
                    )
                })
                .collect(),
            _ => entries
                .iter()
                .map(|e| format!("{}:{}", self.prefix, e.key.as_str()))
                .collect(),
        }
    }

    async fn write<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        keys: &[String],
        ttls: &[u64],
    ) -> Result<Result<usize, String>, String> {
        let reply = match (keys, ttls) {
            ([key], [ttl]) => {
                let mut command = redis::cmd("SET");
                command.arg(key).arg(1).arg("NX").arg("PX").arg(*ttl);
                tokio::time::timeout(self.timeout, command.query_async::<Option<String>>(conn))
                    .await
                    .map(|r| r.map(|set| if set.is_some() { 0 } else { 1 }))
            }
            _ => {
                let mut invocation = self.all_or_none.prepare_invoke();
                for (key, ttl) in keys.iter().zip(ttls) {
                    invocation.key(key).arg(*ttl);
                }
                tokio::time::timeout(self.timeout, invocation.invoke_async::<usize>(conn)).await
            }
        };
        match reply {
            Ok(Ok(first_used)) => Ok(Ok(first_used)),
            Ok(Err(e)) => Ok(Err(e.to_string())),
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        }
    }

    /// `WAIT min_replicas timeout` on the node that holds `key`: whether enough replicas have
    /// the write.
    async fn replicated(&self, key: &str) -> Result<(), String> {
        // Half the Redis timeout for the replicas, so that the connection's own timeout does
        // not cut the answer off; ours leaves room for it.
        let ms = u64::try_from(self.timeout.as_millis() / 2)
            .unwrap_or(u64::MAX)
            .max(1);
        let mut wait = redis::cmd("WAIT");
        wait.arg(self.min_replicas).arg(ms);
        let limit = self.timeout * 2;
        let acked: Result<Result<i64, redis::RedisError>, _> = match &self.conn {
            Conn::Single(conn) => {
                let mut conn = conn.clone();
                tokio::time::timeout(limit, wait.query_async::<i64>(&mut conn)).await
            }
            Conn::Cluster(cluster) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let mut conn = self.cluster_conn(&cluster.client, &cluster.conn).await?;
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(key, SlotAddr::Master),
                ));
                tokio::time::timeout(limit, conn.route_command(wait, route))
                    .await
                    .map(|r| r.and_then(|v| Ok(redis::from_redis_value::<i64>(v)?)))
            }
        };
        match acked {
            Ok(Ok(n)) if n >= i64::from(self.min_replicas) => Ok(()),
            Ok(Ok(n)) => Err(format!(
                "{n} of {} replicas acknowledged the write",
                self.min_replicas
            )),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("WAIT did not answer".into()),
        }
    }
}

impl ReplayGuard for RedisReplayGuard {
    async fn consume(&self, entries: &[ReplayEntry<'_>], now_unix: i64) -> Result<(), ReplayError> {
        let keys = self.keys(entries);
        let ttls: Vec<u64> = entries
            .iter()
            .map(|entry| {
                entry
                    .until_unix
                    .saturating_sub(now_unix)
                    .max(1)
                    .unsigned_abs()
                    .saturating_mul(1000)
            })
            .collect();
        let written = match &self.conn {
            Conn::Single(conn) => self.write(&mut conn.clone(), &keys, &ttls).await,
            Conn::Cluster(cluster) => match self.cluster_conn(&cluster.client, &cluster.conn).await
            {
                Ok(mut conn) => self.write(&mut conn, &keys, &ttls).await,
                Err(e) => Err(e),
            },
        };
        let failure = match written {
            Ok(Ok(0)) => match (self.min_replicas, keys.first()) {
                (0, _) | (_, None) => return Ok(()),
                // Spent either way: refused as unavailable when too few replicas have it, so
                // a failover cannot forget a mandate that was accepted (SPEC §11).
                (_, Some(key)) => match self.replicated(key).await {
                    Ok(()) => return Ok(()),
                    Err(e) => e,
                },
            },
            Ok(Ok(first_used)) => return Err(ReplayError::AlreadyUsed(first_used - 1)),
            Ok(Err(e)) | Err(e) => e,
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
