//! The AP2 wallet (SPEC §1, §2, §5, §12): holds each user's P-256 key, shows the user what an
//! agent wants to buy on an approval page, and mints a short-lived intent mandate only after
//! the user approves there, with a passkey or a one-time code.
#![forbid(unsafe_code)]

pub mod approval;
pub mod config;
pub mod crypto;
pub mod notify;
pub mod routes;
pub mod signers;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use ap2_directory_client::{DirectoryClient, DirectoryClientConfig};
use ap2_mandate::{AgentId, Clock, EcPublicKey, Kid, LocalSigner, SystemClock};
use ap2_service::http::{Limits, with_standard_layers};
pub use ap2_service::http::{Running, Server};
use ap2_service::{NamedToken, TokenSet};
use axum::Router;
use axum::routing::{get, post};
use secrecy::ExposeSecret;

pub use config::Config;
use crypto::MasterKey;
use routes::{App, AppState};
use store::{PgStore, SqliteStore, WalletStore};

/// Opens the store and the master key, re-registers keys that never reached the directory,
/// and binds the listener.
pub async fn build(config: Config) -> anyhow::Result<Server> {
    build_with_clock(config, Arc::new(SystemClock)).await
}

/// As [`build`], with an injected clock.
pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Server> {
    anyhow::ensure!(!config.issuer.is_empty(), "--issuer must not be empty");
    anyhow::ensure!(
        config.max_mandate_ttl_secs > 0,
        "the mandate TTL must be positive"
    );
    anyhow::ensure!(
        config.approval_ttl_secs > 0,
        "the approval TTL must be positive"
    );
    for agent in &config.agent_tokens {
        AgentId::check(&agent.name)
            .map_err(|e| anyhow::anyhow!("--agent-token {}: {e}", agent.name))?;
    }
    let admin = NamedToken {
        name: "admin".into(),
        token: config.admin_token.clone(),
    };
    let mut everyone = config.agent_tokens.clone();
    everyone.push(admin.clone());
    TokenSet::new(&everyone).map_err(|e| anyhow::anyhow!("tokens: {e}"))?;
    anyhow::ensure!(
        (1..=3600).contains(&config.dpop_max_age_secs),
        "--dpop-max-age-secs is 1..=3600"
    );
    let (listener, public_url) =
        ap2_service::http::bind_public(config.listen, config.public_url.as_deref()).await?;
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)?;
    // Instances sharing a database open each other's sealed keys: one master key for all,
    // not a master.key file each.
    anyhow::ensure!(
        config.database_url.is_none() || config.master_key.is_some(),
        "--database-url needs WALLET_MASTER_KEY: every instance must open the same sealed keys"
    );
    let master = MasterKey::load(config.master_key.as_ref(), &data_dir)?;
    let store: Arc<dyn WalletStore> = match config.database_url.clone() {
        Some(url) => {
            let max = config.database_max_connections;
            Arc::new(tokio::task::spawn_blocking(move || PgStore::open(url.expose(), max)).await??)
        }
        None => Arc::new(tokio::task::spawn_blocking(move || SqliteStore::open(&data_dir)).await??),
    };
    let directory_url = config.key_directory_url.trim_end_matches('/').to_owned();
    anyhow::ensure!(
        (60..=86_400).contains(&config.enrollment_link_ttl_secs),
        "--enrollment-link-ttl-secs is 60..=86400"
    );
    let webauthn = approval::relying_party(public_url.as_str());
    let (webauthn, rp_id) = match webauthn {
        Ok(rp) => rp,
        Err(e) if config.approval == approval::ApprovalMode::Passkey => {
            anyhow::bail!("--approval passkey: {e}")
        }
        Err(e) => {
            // Passkeys cannot work at this URL; the code still does.
            tracing::warn!(error = %e, "passkeys are off: the public URL does not name a host");
            approval::relying_party("http://localhost")?
        }
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let notifier = match (&config.notify_url, &config.notify_secret) {
        (Some(url), Some(secret)) => {
            reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("--notify-url: {e}"))?;
            anyhow::ensure!(has_secret(secret), "--notify-secret must not be empty");
            Some(notify::Notifier::start(
                url.clone(),
                secret.clone(),
                http.clone(),
                clock.clone(),
            ))
        }
        (Some(_), None) => anyhow::bail!("--notify-url needs --notify-secret"),
        _ => None,
    };
    let state = AppState::new(App {
        store,
        master: Arc::new(master),
        signers: Arc::new(signers::Signers::default()),
        directory: DirectoryClient::new(&directory_url, DirectoryClientConfig::default())?,
        directory_token: config.key_directory_token.clone(),
        admin: Arc::new(TokenSet::new(&[admin]).map_err(anyhow::Error::msg)?),
        agents: Arc::new(TokenSet::new(&config.agent_tokens).map_err(anyhow::Error::msg)?),
        issuer: config.issuer.clone(),
        clock,
        max_mandate_ttl_secs: config.max_mandate_ttl_secs,
        approval_ttl_secs: config.approval_ttl_secs,
        public_url,
        allow_unbound_mandates: config.allow_unbound_mandates,
        dpop_max_age_secs: config.dpop_max_age_secs,
        max_pending_per_user: config.max_pending_per_user,
        key_directory_url: directory_url,
        http,
        webauthn: Arc::new(webauthn),
        webauthn_rp_id: rp_id,
        approval: config.approval,
        enrollment_link_ttl_secs: config.enrollment_link_ttl_secs,
        notifier,
    });
    if !register_pending_keys(&state).await {
        retry_pending_keys(state.clone());
    }
    retry_retired_revocations(state.clone());
    let follower = tokio::spawn(follow_revocations(state.clone()));
    let sweeper = tokio::spawn(sweep_requests(
        state.store.clone(),
        state.clock.clone(),
        config.sweep_every,
        i64::try_from(config.ended_request_retention_secs).unwrap_or(i64::MAX),
    ));
    let limits = Limits {
        max_body_bytes: config.max_body_bytes,
        ..Limits::default()
    };
    Ok(Server::from_listener(listener, router(state, limits))
        .with_limits(config.http)
        .on_stop(move || {
            follower.abort();
            sweeper.abort();
        }))
}

/// How many rows one of the sweep's transactions touches at most.
const SWEEP_BATCH: u32 = 500;

/// Every `every` (`Config::sweep_every`, 15 s): pending requests past their deadline end,
/// and lose their sealed code, whether or not anyone looks at them again (SPEC §9); requests
/// that ended without a mandate are deleted `retention_secs` after their deadline, so the
/// store holds what was approved and a bounded tail of the rest. A backlog goes
/// [`SWEEP_BATCH`] rows at a time.
async fn sweep_requests(
    store: Arc<dyn WalletStore>,
    clock: Arc<dyn Clock>,
    every: Duration,
    retention_secs: i64,
) {
    let batch = usize::try_from(SWEEP_BATCH).unwrap_or(usize::MAX);
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
    loop {
        tick.tick().await;
        // One log line per round, however many batches a backlog takes.
        let (mut ended, mut deleted) = (0usize, 0usize);
        loop {
            let now = clock.now_unix();
            match store
                .sweep_requests(now, now.saturating_sub(retention_secs), SWEEP_BATCH)
                .await
            {
                Ok((e, d)) => {
                    ended = ended.saturating_add(e);
                    deleted = deleted.saturating_add(d);
                    if e < batch && d < batch {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "mandate requests not swept");
                    break;
                }
            }
        }
        if ended > 0 || deleted > 0 {
            tracing::info!(ended, deleted, "mandate requests swept");
        }
    }
}

/// Follows the directory's revocations from the first one (so none made while the wallet was
/// down is missed): a revoked user key is marked in the store and dropped from memory, and is
/// never signed with again (SPEC §10).
async fn follow_revocations(state: AppState) {
    let (sender, mut revoked) = tokio::sync::mpsc::unbounded_channel::<Kid>();
    let marking = {
        let state = state.clone();
        async move {
            while let Some(kid) = revoked.recv().await {
                mark_revoked(&state, &kid).await;
            }
        }
    };
    let following = state
        .directory
        .clone()
        .follow_revocations(Some("0".to_owned()), move |kid| {
            let _ = sender.send(kid.clone());
        });
    tokio::join!(following, marking);
}

/// Records that the directory revoked `kid`; retried until the store takes it.
async fn mark_revoked(state: &AppState, kid: &Kid) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match state
            .store
            .key_revoked(kid.as_str(), state.clock.now_unix())
            .await
        {
            Ok(user) => {
                state.signers.revoked(kid.as_str());
                if let Some(user) = user {
                    tracing::warn!(user_id = %user, %kid, "the user's key was revoked: no more mandates until it is rotated");
                }
                return;
            }
            Err(e) => tracing::warn!(%kid, error = %e, "a revocation is not recorded yet"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Revokes a retired key at the directory and records it; whether that worked.
pub(crate) async fn revoke_retired(state: &AppState, kid: &str) -> bool {
    let Ok(parsed) = Kid::parse(kid) else {
        return false;
    };
    match state
        .directory
        .revoke(&state.directory_token, &parsed)
        .await
    {
        Ok(_) => state
            .store
            .key_revoked(kid, state.clock.now_unix())
            .await
            .is_ok(),
        Err(e) => {
            tracing::warn!(%kid, error = %e, "a retired key is not revoked yet");
            false
        }
    }
}

/// Revokes every retired key not revoked yet, retrying (1 s, doubling up to a minute) until
/// none is left.
pub(crate) fn retry_retired_revocations(state: AppState) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            let left = match state.store.retired_unrevoked().await {
                Ok(pending) => {
                    let mut left = 0;
                    for kid in &pending {
                        if !revoke_retired(&state, kid).await {
                            left += 1;
                        }
                    }
                    left
                }
                // Not knowing what is left is not "nothing left": a retired key must not
                // stay valid at the directory because the store failed once.
                Err(e) => {
                    tracing::warn!(error = %ap2_service::describe(&e), "the retired keys cannot be listed yet");
                    1
                }
            };
            if left == 0 {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    });
}

/// How long a user's unregistered key is left to the call that created it (which registers
/// it, or deletes the user when the directory refuses) before the wallet registers it itself:
/// far past the directory client's timeout, so the two never race.
const PENDING_KEY_GRACE_SECS: i64 = 60;

/// A user whose row was stored but whose key registration was cut short (a crash between
/// the two) gets its key registered: at start, and again until none is left. Whether none is.
async fn register_pending_keys(state: &AppState) -> bool {
    let pending = match state.store.unregistered_users().await {
        Ok(pending) => pending,
        Err(e) => {
            tracing::warn!(error = %ap2_service::describe(&e), "the users with unregistered keys cannot be listed yet");
            return false;
        }
    };
    let now = state.clock.now_unix();
    let mut done = true;
    for user in pending {
        if now - user.created_at < PENDING_KEY_GRACE_SECS {
            done = false;
            continue;
        }
        let registered = async {
            let der = state.master.open(&user.user_id, &user.sealed_key)?;
            let kid = Kid::parse(&user.kid)?;
            let signer = LocalSigner::from_pkcs8_der(&der, Some(kid.clone()))?;
            let jwk = EcPublicKey::to_jwk(signer.public_key(), &kid);
            state
                .directory
                .register(&state.directory_token, &user.user_id, &jwk)
                .await?;
            state.store.mark_registered(&user.user_id).await?;
            anyhow::Ok(())
        }
        .await;
        match registered {
            Ok(()) => tracing::info!(user_id = %user.user_id, "registered a pending key"),
            Err(e) => {
                done = false;
                tracing::warn!(user_id = %user.user_id, error = %ap2_service::describe(e.as_ref()), "a pending key is still unregistered")
            }
        }
    }
    done
}

/// [`register_pending_keys`] again (1 s, doubling up to a minute) until none is left: a key
/// directory that was down when the wallet started does not leave a user unable to have
/// their mandates verified until the next restart.
fn retry_pending_keys(state: AppState) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            tokio::time::sleep(backoff).await;
            if register_pending_keys(&state).await {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    });
}

/// Builds and starts the wallet on a background task.
pub async fn spawn(config: Config) -> anyhow::Result<Running> {
    spawn_with_clock(config, Arc::new(SystemClock)).await
}

/// As [`spawn`], with an injected clock.
pub async fn spawn_with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Running> {
    Ok(build_with_clock(config, clock).await?.spawn()?)
}

/// The routes of SPEC §5 with the standard layers.
pub fn router(state: AppState, limits: Limits) -> Router {
    let api = Router::new()
        .route("/v1/users", post(routes::users::create))
        .route(
            "/v1/users/{id}/notifications",
            get(routes::users::notifications),
        )
        .route("/v1/users/{id}/keys/rotate", post(routes::users::rotate))
        .route("/v1/mandate-requests", post(routes::requests::create))
        .route("/v1/mandate-requests/{id}", get(routes::requests::get))
        .route(
            "/v1/mandate-requests/{id}/approve",
            post(routes::requests::approve),
        )
        .route(
            "/v1/mandate-requests/{id}/deny",
            post(routes::requests::deny),
        )
        .route(
            "/v1/mandate-requests/{id}/evidence",
            get(routes::requests::evidence),
        )
        .route(
            "/v1/users/{id}/enrollment-links",
            post(routes::users::enrollment_link),
        )
        // The pages a person sees (SPEC §12).
        .route("/approve/{id}", get(routes::pages::approval_page))
        .route("/approve/{id}/otp", post(routes::pages::approve_otp))
        .route("/approve/{id}/deny", post(routes::pages::deny))
        .route(
            "/approve/{id}/passkey/options",
            post(routes::pages::passkey_options),
        )
        .route(
            "/approve/{id}/passkey",
            post(routes::pages::passkey_approve),
        )
        .route(
            "/enroll/{id}",
            get(routes::pages::enrollment_page).post(routes::pages::enroll),
        )
        .route(
            "/enroll/{id}/options",
            post(routes::pages::enrollment_options),
        )
        .route("/assets/wallet.js", get(routes::pages::script))
        .route("/assets/wallet.css", get(routes::pages::style))
        .route("/openapi.json", get(openapi_json))
        .route("/healthz", get(ap2_service::http::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(ap2_service::http::metrics_handler))
        .with_state(state);
    with_standard_layers(api, "wallet", limits)
}

/// Whether a configured secret is present (for start-up checks in `main`).
pub fn has_secret(secret: &secrecy::SecretString) -> bool {
    !secret.expose_secret().is_empty()
}

/// The wallet's API (SPEC §5, §8, §10, §12), derived from its handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "AP2 wallet",
        description = "Users' keys, mandate requests, the approval page and passkeys, minting (SPEC §5, §8, §10, §12)."
    ),
    paths(
        routes::users::create,
        routes::users::rotate,
        routes::users::notifications,
        routes::users::enrollment_link,
        routes::requests::create,
        routes::requests::get,
        routes::requests::approve,
        routes::requests::deny,
        routes::requests::evidence,
        routes::pages::approval_page,
        routes::pages::approve_otp,
        routes::pages::deny,
        routes::pages::passkey_options,
        routes::pages::passkey_approve,
        routes::pages::enrollment_page,
        routes::pages::enrollment_options,
        routes::pages::enroll,
        routes::pages::script,
        routes::pages::style,
        routes::health::readyz,
        ap2_service::http::healthz,
        ap2_service::http::metrics_handler,
        openapi_json,
    ),
    components(schemas(ap2_service::openapi::ProblemSchema))
)]
pub struct ApiDoc;

/// Every problem code the wallet answers, besides SPEC §8's (from [`ap2_mandate::ProblemCode`]).
pub const PROBLEM_CODES: &[&str] = &[
    "cart_invalid",
    "credential_exists",
    "credential_invalid",
    "credential_required",
    "cross_origin_refused",
    "evidence_not_found",
    "forbidden",
    "invalid_query",
    "key_directory_refused",
    "key_directory_unavailable",
    "link_expired",
    "link_invalid",
    "max_amount_below_total",
    "max_amount_invalid",
    "merchant_id_invalid",
    "merchant_mismatch",
    "no_passkey",
    "otp_invalid",
    "otp_not_allowed",
    "passkey_counter_regressed",
    "passkey_not_allowed",
    "passkey_refused",
    "request_expired",
    "request_locked",
    "request_not_found",
    "request_not_pending",
    "store_unavailable",
    "too_many_passkeys",
    "too_many_pending_requests",
    "ttl_invalid",
    "unauthorized",
    "user_exists",
    "user_id_invalid",
    "user_key_revoked",
    "user_not_found",
];

ap2_service::openapi_document!(
    ApiDoc,
    ap2_service::openapi::finish_with_spec_codes,
    PROBLEM_CODES
);
