//! The HTTP API (SPEC §5, wallet) and what its handlers share.

pub mod health;
pub mod pages;
pub mod requests;
pub mod users;

use std::sync::Arc;

use ap2_directory_client::DirectoryClient;
use ap2_mandate::{Clock, Kid, LocalSigner};
use ap2_service::TokenSet;
use ap2_service::auth::{BearerError, bearer_token};
use ap2_service::problem::Problem;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use secrecy::SecretString;

use crate::crypto::MasterKey;
use crate::store::{StoreError, WalletStore};

/// What every handler shares: one `Arc`, so extracting it per request is one reference count
/// (cloned field by field, its strings and clients were a few allocations per request).
#[derive(Clone)]
pub struct AppState(Arc<App>);

impl AppState {
    /// Shares `app` with every handler.
    pub fn new(app: App) -> Self {
        Self(Arc::new(app))
    }
}

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

/// The wallet's configuration and services, behind [`AppState`].
pub struct App {
    /// Users and requests.
    pub store: Arc<dyn WalletStore>,
    /// Seals private keys at rest.
    pub master: Arc<MasterKey>,
    /// Users' keys, opened once and kept in memory for signing.
    pub signers: Arc<crate::signers::Signers>,
    /// The key directory.
    pub directory: DirectoryClient,
    /// This wallet's issuer token at the directory.
    pub directory_token: SecretString,
    /// The administrator's token.
    pub admin: Arc<TokenSet>,
    /// Agents' tokens.
    pub agents: Arc<TokenSet>,
    /// `iss`.
    pub issuer: String,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Longest mandate lifetime.
    pub max_mandate_ttl_secs: i64,
    /// Approval window.
    pub approval_ttl_secs: i64,
    /// Where agents reach the wallet: the base of a proof's `htu`.
    pub public_url: ap2_mandate::PublicUrl,
    /// Whether a mandate request without a DPoP proof gets an unbound mandate.
    pub allow_unbound_mandates: bool,
    /// How old a proof's `iat` may be.
    pub dpop_max_age_secs: i64,
    /// Most pending requests per user.
    pub max_pending_per_user: u32,
    /// For `/readyz`.
    pub key_directory_url: String,
    /// For `/readyz`.
    pub http: reqwest::Client,
    /// The WebAuthn relying party (SPEC §12).
    pub webauthn: Arc<webauthn_rs::Webauthn>,
    /// Its id: the host of the public URL.
    pub webauthn_rp_id: String,
    /// How users may approve.
    pub approval: crate::approval::ApprovalMode,
    /// How long an enrolment link lives.
    pub enrollment_link_ttl_secs: i64,
    /// The notification webhook, when configured.
    pub notifier: Option<crate::notify::Notifier>,
}

/// Wrong codes before a request locks.
pub const MAX_OTP_ATTEMPTS: i64 = 3;

fn token_of(parts: &Parts) -> Result<&str, Problem> {
    bearer_token(&parts.headers).map_err(|e| match e {
        BearerError::Missing => Problem::unauthorized(
            "a bearer token is required: Authorization: Bearer <token>",
            false,
        ),
        BearerError::Malformed => {
            Problem::unauthorized("the Authorization header is not Bearer <token>", true)
        }
    })
}

/// The administrator.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        state
            .admin
            .name_of(token_of(parts)?)
            .map(|_| Admin)
            .ok_or_else(|| Problem::unauthorized("the admin token is not valid", true))
    }
}

/// The admin, or a caller by its token (who may act only on itself).
pub enum AdminOrCaller {
    /// The admin token.
    Admin,
    /// An agent or a user.
    Caller(Caller),
}

impl FromRequestParts<AppState> for AdminOrCaller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        if state.admin.name_of(token_of(parts)?).is_some() {
            return Ok(AdminOrCaller::Admin);
        }
        Caller::from_request_parts(parts, state)
            .await
            .map(AdminOrCaller::Caller)
    }
}

/// Who is calling: an agent (by its configured token) or a user (by the token the wallet
/// issued at creation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An agent id.
    Agent(String),
    /// A user id.
    User(String),
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let token = token_of(parts)?;
        if let Some(agent) = state.agents.name_of(token) {
            return Ok(Caller::Agent(agent.to_owned()));
        }
        let hash = crate::crypto::token_hash(token);
        match stored(state.store.user_by_token_hash(&hash).await)? {
            Some(user) => Ok(Caller::User(user)),
            None => Err(Problem::unauthorized("the token is not valid", true)),
        }
    }
}

impl Caller {
    /// The agent id, or 403 for a user.
    pub fn agent(self) -> Result<String, Problem> {
        match self {
            Caller::Agent(agent) => Ok(agent),
            Caller::User(_) => Err(Problem::forbidden("this needs an agent token")),
        }
    }

    /// The user id, or 403 for an agent.
    pub fn user(self) -> Result<String, Problem> {
        match self {
            Caller::User(user) => Ok(user),
            Caller::Agent(_) => Err(Problem::forbidden("this needs the user's token")),
        }
    }
}

/// 404 `user_not_found`.
pub fn user_not_found() -> Problem {
    Problem::not_found("user_not_found", "no such user")
}

/// A store call's answer for the caller: store failures are 503, another user's row 403, and a
/// row that is missing `missing()` (the call's own 404: `user_not_found`, `request_not_found`).
pub fn stored_or<T>(result: Result<T, StoreError>, missing: fn() -> Problem) -> Result<T, Problem> {
    match result {
        Err(StoreError::NotFound) => Err(missing()),
        other => stored(other),
    }
}

/// A store call's answer for the caller: store failures are 503, another user's row 403. Only
/// the calls that look a row up answer `NotFound`, and they go through [`stored_or`].
pub fn stored<T>(result: Result<T, StoreError>) -> Result<T, Problem> {
    result.map_err(|e| match e {
        StoreError::NotFound => Problem::internal("a row looked up without its own 404"),
        StoreError::NotYours => Problem::forbidden("this belongs to another user"),
        StoreError::UserExists => {
            Problem::new(StatusCode::CONFLICT, "user_exists", "this user id is taken")
        }
        StoreError::CredentialExists => Problem::new(
            StatusCode::CONFLICT,
            "credential_exists",
            "this passkey is enrolled already",
        ),
        StoreError::Mint(why) => Problem::internal(format!("minting failed: {why}")),
        StoreError::TooManyPending => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_pending_requests",
            "the user has as many requests waiting for approval as allowed",
        ),
        StoreError::ProofReplayed => {
            ap2_service::dpop::refusal(&ap2_mandate::VerifyError::ProofReplayed, true)
        }
        StoreError::Backend(why) => {
            tracing::error!(error = %why, "wallet store failed");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the wallet's store is unavailable",
            )
        }
    })
}

/// The user's signer, opened from the store once and then kept in memory.
/// 409 `user_key_revoked`: the wallet never signs with a revoked key (SPEC §10).
pub fn key_revoked() -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "user_key_revoked",
        "the user's key is revoked; give the user a new one with POST /v1/users/{id}/keys/rotate",
    )
}

/// The user's signer: from memory, or opened from the store and kept. A key revoked or
/// rotated while it was being read is read again, once (`crate::signers`).
pub async fn signer_for(state: &AppState, user_id: &str) -> Result<Arc<LocalSigner>, Problem> {
    let read = || async {
        let user = stored(state.store.user(user_id).await)?.ok_or_else(user_not_found)?;
        if user.key_revoked_at.is_some() {
            return Err(key_revoked());
        }
        let der = state
            .master
            .open(&user.user_id, &user.sealed_key)
            .map_err(Problem::internal)?;
        let kid = Kid::parse(&user.kid).map_err(Problem::internal)?;
        let signer = LocalSigner::from_pkcs8_der(&der, Some(kid)).map_err(Problem::internal)?;
        Ok(Arc::new(signer))
    };
    state.signers.get_or_read(user_id, read).await
}
