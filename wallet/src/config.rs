//! Configuration: flags with environment fallbacks. The master key comes from the
//! environment only (`WALLET_MASTER_KEY`), never from a flag that `ps` would show.

use std::net::SocketAddr;
use std::path::PathBuf;

use ap2_service::NamedToken;
use secrecy::SecretString;

/// How the wallet runs.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "wallet",
    version,
    about = "The AP2 wallet: keys, approvals, mandates"
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// This wallet's issuer URL: the `iss` of its mandates and its name at the key directory.
    #[arg(long, env = "WALLET_ISSUER")]
    pub issuer: String,
    /// Where the wallet keeps its database and, unless WALLET_MASTER_KEY is set, its master key.
    #[arg(long, env = "WALLET_DATA_DIR", default_value = "./data/wallet")]
    pub data_dir: PathBuf,
    /// PostgreSQL for users and requests (SPEC §11), shared by every instance; without it,
    /// SQLite in `--data-dir` (one instance). The master key stays per deployment either way.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<ap2_service::secret_url::SecretUrl>,
    /// Most PostgreSQL connections this instance holds.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
    /// The key directory's base URL.
    #[arg(long, env = "KEY_DIRECTORY_URL")]
    pub key_directory_url: String,
    /// This wallet's issuer token at the key directory.
    #[arg(
        long,
        env = "KEY_DIRECTORY_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub key_directory_token: SecretString,
    /// The administrator's bearer token (creates users).
    #[arg(
        long,
        env = "WALLET_ADMIN_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub admin_token: SecretString,
    /// An agent and its bearer token: AGENT_ID=TOKEN. Repeatable; the environment takes a
    /// comma-separated list.
    #[arg(
        long = "agent-token",
        env = "WALLET_AGENT_TOKENS",
        value_delimiter = ',',
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub agent_tokens: Vec<NamedToken>,
    /// Longest mandate lifetime an agent may ask for, in seconds.
    #[arg(long, env = "WALLET_MAX_MANDATE_TTL_SECS", default_value_t = 300)]
    pub max_mandate_ttl_secs: i64,
    /// How long a request waits for the user's approval, in seconds.
    #[arg(long, env = "WALLET_APPROVAL_TTL_SECS", default_value_t = 300)]
    pub approval_ttl_secs: i64,
    /// Most requests one user may have waiting for approval (SPEC §9): more is 429
    /// `too_many_pending_requests`.
    #[arg(long, env = "WALLET_MAX_PENDING_PER_USER", default_value_t = 20)]
    pub max_pending_per_user: u32,
    /// How long a request that ended without a mandate (expired, denied, locked) is kept
    /// after its approval deadline, in seconds; then it is deleted. Approved requests stay.
    #[arg(long, env = "WALLET_ENDED_REQUEST_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub ended_request_retention_secs: u64,
    /// How often the sweep of requests runs (not a flag: tests shorten it).
    #[arg(skip = std::time::Duration::from_secs(15))]
    pub sweep_every: std::time::Duration,
    /// Largest request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Connection limits (SPEC §9).
    #[command(flatten)]
    pub http: ap2_service::ConnectionLimits,
    /// The URL agents reach this wallet at: a DPoP proof's `htu` must be this joined with the
    /// request's path (SPEC §8). Default: `http://<the address it listens on>`.
    #[arg(long, env = "WALLET_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Mint unbound mandates for requests without a DPoP proof (merchants that require
    /// binding refuse them). Off by default: a request without a proof is refused.
    #[arg(long, env = "WALLET_ALLOW_UNBOUND_MANDATES")]
    pub allow_unbound_mandates: bool,
    /// How old a DPoP proof's `iat` may be, in seconds (it may be 5 s ahead).
    #[arg(long, env = "DPOP_MAX_AGE_SECS", default_value_t = ap2_mandate::dpop::DEFAULT_DPOP_MAX_AGE_SECS)]
    pub dpop_max_age_secs: i64,
    /// How users may approve (SPEC §12): `passkey` (passkeys only; the code is neither shown
    /// nor accepted), `otp` (the one-time code only) or `either` (a passkey when the user has
    /// one, the code otherwise).
    #[arg(long, env = "WALLET_APPROVAL", value_enum, default_value_t = crate::approval::ApprovalMode::Either)]
    pub approval: crate::approval::ApprovalMode,
    /// How long an enrolment link from `POST /v1/users/{id}/enrollment-links` stays valid, in
    /// seconds.
    #[arg(long, env = "WALLET_ENROLLMENT_LINK_TTL_SECS", default_value_t = 900)]
    pub enrollment_link_ttl_secs: i64,
    /// Also POST every notification to this URL as JSON, signed with `--notify-secret`
    /// (`AP2-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`), retried with backoff.
    #[arg(long, env = "WALLET_NOTIFY_URL", requires = "notify_secret")]
    pub notify_url: Option<String>,
    /// The webhook's signing secret.
    #[arg(
        long,
        env = "WALLET_NOTIFY_SECRET",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub notify_secret: Option<SecretString>,
    /// The master key, base64 of 32 bytes (environment only). Without it the wallet creates
    /// `master.key` in the data directory, readable only by its owner.
    #[arg(skip)]
    pub master_key: Option<SecretString>,
}

impl Config {
    /// A configuration for tests and the demo: port 0 on loopback, the SPEC's defaults.
    pub fn local(
        issuer: &str,
        data_dir: PathBuf,
        key_directory_url: &str,
        key_directory_token: &str,
        admin_token: &str,
        agent_tokens: Vec<NamedToken>,
    ) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            issuer: issuer.to_owned(),
            data_dir,
            database_url: None,
            database_max_connections: 16,
            key_directory_url: key_directory_url.to_owned(),
            key_directory_token: SecretString::from(key_directory_token.to_owned()),
            admin_token: SecretString::from(admin_token.to_owned()),
            agent_tokens,
            max_mandate_ttl_secs: 300,
            approval_ttl_secs: 300,
            max_body_bytes: 64 * 1024,
            http: ap2_service::ConnectionLimits::default(),
            max_pending_per_user: 20,
            ended_request_retention_secs: 7 * 24 * 3600,
            sweep_every: std::time::Duration::from_secs(15),
            public_url: None,
            allow_unbound_mandates: false,
            dpop_max_age_secs: ap2_mandate::dpop::DEFAULT_DPOP_MAX_AGE_SECS,
            approval: crate::approval::ApprovalMode::Either,
            enrollment_link_ttl_secs: 900,
            notify_url: None,
            notify_secret: None,
            master_key: None,
        }
    }

    /// Reads `WALLET_MASTER_KEY` into the configuration.
    pub fn with_master_key_from_env(mut self) -> Self {
        self.master_key = std::env::var("WALLET_MASTER_KEY")
            .ok()
            .filter(|k| !k.is_empty())
            .map(SecretString::from);
        self
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use secrecy::ExposeSecret;

    use super::Config;

    /// The program's name and the flags every test here gives, then `more`.
    fn parse(more: &[&str]) -> Config {
        let required = [
            "wallet",
            "--issuer",
            "https://w.example",
            "--key-directory-url",
            "http://127.0.0.1:1",
        ];
        Config::try_parse_from(required.iter().chain(more)).unwrap()
    }

    #[test]
    fn tokens_that_begin_with_a_hyphen_are_values_not_flags() {
        // Generated base64url tokens begin with `-` one time in 64; agent ids may too.
        let config = parse(&[
            "--key-directory-token",
            "-d",
            "--admin-token",
            "-a",
            "--agent-token",
            "-agent=-t",
            "--notify-url",
            "http://127.0.0.1:2",
            "--notify-secret",
            "-n",
        ]);
        assert_eq!(config.key_directory_token.expose_secret(), "-d");
        assert_eq!(config.admin_token.expose_secret(), "-a");
        assert_eq!(config.agent_tokens[0].name, "-agent");
        assert_eq!(config.agent_tokens[0].token.expose_secret(), "-t");
        let secret = config
            .notify_secret
            .as_ref()
            .map(ExposeSecret::expose_secret);
        assert_eq!(secret, Some("-n"));
    }

    #[test]
    fn a_printed_configuration_holds_no_password_or_token() {
        let config = parse(&[
            "--key-directory-token",
            "s3cret-d",
            "--admin-token",
            "s3cret-a",
            "--agent-token",
            "agent=s3cret-t",
            "--notify-secret",
            "s3cret-n",
            "--database-url",
            "host=db user=app password=s3cret-db dbname=wallet",
        ]);
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert_eq!(
            config.database_url.unwrap().expose(),
            "host=db user=app password=s3cret-db dbname=wallet"
        );
    }
}
