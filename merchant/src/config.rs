//! Configuration: flags with environment fallbacks.

use std::net::SocketAddr;
use std::path::PathBuf;

/// How the merchant runs.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "merchant",
    version,
    about = "The AP2 merchant: checkout and mandate verification"
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8082")]
    pub listen: SocketAddr,
    /// This merchant's id: the `aud` it accepts and the cart's `merchant_id`.
    #[arg(long, env = "MERCHANT_ID")]
    pub merchant_id: String,
    /// Where sessions and orders are kept.
    #[arg(long, env = "MERCHANT_DATA_DIR", default_value = "./data/merchant")]
    pub data_dir: PathBuf,
    /// PostgreSQL for sessions and orders (SPEC §11), shared by every instance; without it,
    /// SQLite in `--data-dir` (one instance).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<ap2_service::secret_url::SecretUrl>,
    /// Most PostgreSQL connections this instance holds.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
    /// The key directory's base URL.
    #[arg(long, env = "KEY_DIRECTORY_URL")]
    pub key_directory_url: String,
    /// Redis for the jti replay set. Without it an in-memory set is used, which is safe only
    /// for a single merchant process.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<ap2_service::secret_url::SecretUrl>,
    /// A Redis Cluster for the replay set instead of `--redis-url` (SPEC §11): any of its
    /// nodes, comma-separated (`redis://h1:p1,redis://h2:p2,…`).
    #[arg(
        long,
        env = "REDIS_CLUSTER_NODES",
        value_delimiter = ',',
        conflicts_with = "redis_url",
        hide_env_values = true
    )]
    pub redis_cluster_nodes: Vec<ap2_service::secret_url::SecretUrl>,
    /// After recording a mandate, how many replicas must acknowledge it (`WAIT`, SPEC §11);
    /// fewer within `--redis-timeout-ms` is 503 `replay_store_unavailable` (the mandate stays
    /// spent). With 1 or more a master's failover cannot forget an accepted mandate.
    #[arg(long, env = "REPLAY_MIN_REPLICAS", default_value_t = 0)]
    pub replay_min_replicas: u32,
    /// The product catalog (JSON); a built-in demo catalog when absent.
    #[arg(long, env = "MERCHANT_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Prefix of the replay set's Redis keys.
    #[arg(long, env = "REPLAY_KEY_PREFIX", default_value = "ap2:jti")]
    pub replay_prefix: String,
    /// How long a Redis command may take before the merchant refuses (fails closed), in ms.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 250)]
    pub redis_timeout_ms: u64,
    /// Clock leeway for exp, nbf and iat, in seconds.
    #[arg(long, env = "MANDATE_LEEWAY_SECS", default_value_t = ap2_mandate::verify::DEFAULT_LEEWAY_SECS)]
    pub leeway_secs: i64,
    /// Longest accepted mandate lifetime, in seconds.
    #[arg(long, env = "MANDATE_MAX_LIFETIME_SECS", default_value_t = ap2_mandate::verify::DEFAULT_MAX_LIFETIME_SECS)]
    pub max_lifetime_secs: i64,
    /// Longest a key is cached before the directory is asked again, in seconds.
    #[arg(long, env = "KEY_CACHE_SECS", default_value_t = 60)]
    pub key_cache_secs: u64,
    /// Most key directory requests per second for kids not in the key cache (SPEC §9); past
    /// it an uncached kid is 503 `key_directory_unavailable` with `Retry-After`, while cached
    /// kids are served as before. 0 turns the limit off.
    #[arg(long, env = "KEY_FETCH_RATE", default_value_t = 50.0)]
    pub key_fetch_rate: f64,
    /// How many such requests may come at once before the rate applies.
    #[arg(long, env = "KEY_FETCH_BURST", default_value_t = 100.0)]
    pub key_fetch_burst: f64,
    /// How long a checkout session stays open after it is created, in seconds (SPEC §9):
    /// later it is 410 `session_expired`, and open sessions past it are deleted.
    #[arg(long, env = "SESSION_TTL_SECS", default_value_t = 1800)]
    pub session_ttl_secs: i64,
    /// How old an order whose charge was never recorded must be before the merchant finishes
    /// it (charges it again with its idempotency key, then records it paid), in seconds.
    #[arg(long, env = "STUCK_ORDER_SECS", default_value_t = 120)]
    pub stuck_order_secs: i64,
    /// Most open sessions one agent key may have (SPEC §9): more is 429 `too_many_sessions`.
    #[arg(long, env = "MAX_OPEN_SESSIONS_PER_AGENT", default_value_t = 1000)]
    pub max_open_sessions_per_agent: u32,
    /// Most refused mandates logged per second (each is counted in the metrics anyway).
    #[arg(long, env = "REFUSAL_LOG_RATE", default_value_t = 20.0)]
    pub refusal_log_rate: f64,
    /// A backend allowed to call `POST /v1/mandates/verify`, and its bearer token:
    /// NAME=TOKEN (SPEC §9). Repeatable; the environment takes a comma-separated list. With
    /// none, the endpoint answers 401 to every caller.
    #[arg(
        long = "backend-token",
        env = "MERCHANT_BACKEND_TOKENS",
        value_delimiter = ',',
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub backend_tokens: Vec<ap2_service::NamedToken>,
    /// Serve `POST /v1/mandates/verify` on this address only, not on `--listen` (SPEC §9): a
    /// port the merchant's backend reaches and agents do not.
    #[arg(long, env = "MERCHANT_INTERNAL_LISTEN")]
    pub internal_listen: Option<SocketAddr>,
    /// Largest request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Connection limits (SPEC §9).
    #[command(flatten)]
    pub http: ap2_service::ConnectionLimits,
    /// The URL agents reach this merchant at: a DPoP proof's `htu` must be this joined with
    /// the request's path (SPEC §8). Default: `http://<the address it listens on>`.
    #[arg(long, env = "MERCHANT_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Refuse unbound mandates and agent calls without a DPoP proof (SPEC §8). With `false`,
    /// an unbound mandate is accepted as a Bearer token under SPEC §4 alone.
    #[arg(
        long,
        env = "MERCHANT_REQUIRE_AGENT_BINDING",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub require_agent_binding: bool,
    /// How old a DPoP proof's `iat` may be, in seconds (it may be 5 s ahead).
    #[arg(long, env = "DPOP_MAX_AGE_SECS", default_value_t = ap2_mandate::dpop::DEFAULT_DPOP_MAX_AGE_SECS)]
    pub dpop_max_age_secs: i64,
    /// Require the merchant's rotating nonce in every proof (RFC 9449 §8).
    #[arg(long, env = "MERCHANT_DPOP_NONCE")]
    pub dpop_nonce: bool,
    /// How long one nonce is handed out, in seconds; the previous one stays valid for one
    /// more period.
    #[arg(long, env = "DPOP_NONCE_PERIOD_SECS", default_value_t = 300)]
    pub dpop_nonce_period_secs: i64,
    /// The secret nonces are derived from, base64 of 32 bytes (environment only, so every
    /// instance behind one URL can share it). Without it each process draws its own.
    #[arg(skip)]
    pub dpop_nonce_secret: Option<secrecy::SecretString>,
}

impl Config {
    /// A configuration for tests and the demo: port 0 on loopback, the SPEC's defaults.
    pub fn local(
        merchant_id: &str,
        data_dir: PathBuf,
        key_directory_url: &str,
        redis_url: Option<String>,
    ) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            merchant_id: merchant_id.to_owned(),
            data_dir,
            database_url: None,
            database_max_connections: 16,
            key_directory_url: key_directory_url.to_owned(),
            redis_url: redis_url.map(Into::into),
            redis_cluster_nodes: Vec::new(),
            replay_min_replicas: 0,
            catalog: None,
            replay_prefix: "ap2:jti".to_owned(),
            redis_timeout_ms: 250,
            leeway_secs: ap2_mandate::verify::DEFAULT_LEEWAY_SECS,
            max_lifetime_secs: ap2_mandate::verify::DEFAULT_MAX_LIFETIME_SECS,
            key_cache_secs: 60,
            key_fetch_rate: 50.0,
            key_fetch_burst: 100.0,
            session_ttl_secs: 1800,
            stuck_order_secs: 120,
            max_open_sessions_per_agent: 1000,
            refusal_log_rate: 20.0,
            backend_tokens: Vec::new(),
            internal_listen: None,
            max_body_bytes: 64 * 1024,
            http: ap2_service::ConnectionLimits::default(),
            public_url: None,
            require_agent_binding: true,
            dpop_max_age_secs: ap2_mandate::dpop::DEFAULT_DPOP_MAX_AGE_SECS,
            dpop_nonce: false,
            dpop_nonce_period_secs: 300,
            dpop_nonce_secret: None,
        }
    }

    /// Reads `MERCHANT_DPOP_NONCE_SECRET` into the configuration.
    pub fn with_nonce_secret_from_env(mut self) -> Self {
        self.dpop_nonce_secret = std::env::var("MERCHANT_DPOP_NONCE_SECRET")
            .ok()
            .filter(|k| !k.is_empty())
            .map(secrecy::SecretString::from);
        self
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use secrecy::ExposeSecret;

    use super::Config;

    /// The program's name and the flags it cannot start without, then `more`.
    fn parse(more: &[&str]) -> Config {
        let required = [
            "merchant",
            "--merchant-id",
            "m",
            "--key-directory-url",
            "http://127.0.0.1:1",
        ];
        Config::try_parse_from(required.iter().chain(more)).unwrap()
    }

    #[test]
    fn tokens_that_begin_with_a_hyphen_are_values_not_flags() {
        let config = parse(&["--backend-token", "-backend=-t"]);
        assert_eq!(config.backend_tokens[0].name, "-backend");
        assert_eq!(config.backend_tokens[0].token.expose_secret(), "-t");
    }

    #[test]
    fn a_printed_configuration_holds_no_password_or_token() {
        let config = parse(&[
            "--backend-token",
            "checkout=s3cret-token",
            "--database-url",
            "postgres://app:s3cret-db@db/pay",
            "--redis-cluster-nodes",
            "redis://:s3cret-redis@r1:6379,redis://:s3cret-redis@r2:6379",
        ]);
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("postgres://app:***@db/pay"), "{printed}");
        assert_eq!(
            config.database_url.unwrap().expose(),
            "postgres://app:s3cret-db@db/pay"
        );
        assert_eq!(
            config.redis_cluster_nodes[1].expose(),
            "redis://:s3cret-redis@r2:6379"
        );
    }
}
