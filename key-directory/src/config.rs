//! Configuration: flags with environment fallbacks.

use std::net::SocketAddr;
use std::path::PathBuf;

use ap2_service::NamedToken;

/// How the key directory runs.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "key-directory",
    version,
    about = "The AP2 registry of users' public keys"
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8083")]
    pub listen: SocketAddr,
    /// The SQLite database file (created with its directory when missing).
    #[arg(long, env = "KEY_DIRECTORY_DB", default_value = "./data/keys.db")]
    pub db: PathBuf,
    /// PostgreSQL for the keys (SPEC §11), shared by every instance; without it, SQLite at
    /// `--db` (one instance).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<ap2_service::secret_url::SecretUrl>,
    /// Most PostgreSQL connections this instance holds.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
    /// An issuer allowed to register keys and the bearer token it uses: ISSUER=TOKEN.
    /// Repeatable; the environment takes a comma-separated list.
    #[arg(
        long = "issuer-token",
        env = "KEY_DIRECTORY_ISSUER_TOKENS",
        value_delimiter = ',',
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub issuer_tokens: Vec<NamedToken>,
    /// Largest request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,
    /// Connection limits (SPEC §9).
    #[command(flatten)]
    pub http: ap2_service::ConnectionLimits,
    /// `max-age` of key responses, in seconds: how long a merchant may trust a cached key, and
    /// so the longest a revoked key can still be accepted.
    #[arg(long, env = "KEY_MAX_AGE_SECS", default_value_t = 60)]
    pub key_max_age_secs: u32,
}

impl Config {
    /// A configuration for tests and the demo: port 0 on loopback, the given database.
    pub fn local(db: PathBuf, issuer_tokens: Vec<NamedToken>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            db,
            database_url: None,
            database_max_connections: 16,
            issuer_tokens,
            max_body_bytes: 16 * 1024,
            http: ap2_service::ConnectionLimits::default(),
            key_max_age_secs: 60,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use secrecy::ExposeSecret;

    use super::Config;

    #[test]
    fn tokens_that_begin_with_a_hyphen_are_values_not_flags() {
        let config =
            Config::try_parse_from(["key-directory", "--issuer-token", "-issuer=-t"]).unwrap();
        assert_eq!(config.issuer_tokens[0].name, "-issuer");
        assert_eq!(config.issuer_tokens[0].token.expose_secret(), "-t");
    }

    #[test]
    fn a_printed_configuration_holds_no_password_or_token() {
        let config = Config::try_parse_from([
            "key-directory",
            "--issuer-token",
            "issuer=s3cret-t",
            "--database-url",
            "postgres://app:s3cret-db@db/keys",
        ])
        .unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
    }
}
