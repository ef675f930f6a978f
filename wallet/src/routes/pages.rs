//! The pages a person sees (SPEC §12): the approval page of one request, reached from its
//! `approval_url`, and the passkey enrolment page, reached from an enrolment link. Rendered on
//! the server, with the wallet's own script and style only, under a strict
//! `Content-Security-Policy`. Nothing is authorised by a cookie: each page and each of its
//! calls carries the link's tag, and a call from another origin is refused, so another site
//! cannot make a browser act on a page it has not got (CSRF).

use std::fmt::Write as _;

use ap2_mandate::evidence::{Assertion, Evidence, EvidenceCredential, amr_for};
use ap2_mandate::{Cart, Currency, Money};
use ap2_service::problem::{ApiJson, ApiPath, Problem};
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::Value;
use webauthn_rs::prelude::{
    Passkey, PublicKeyCredential, RegisterPublicKeyCredential, WebauthnError,
};

use super::requests::{Check, finish_approval, finish_denial, load};
use super::{AppState, stored};
use crate::approval;
use crate::store::{RequestRow, Status, StoreError};

/// The policy of every page: the wallet's own script, style and calls, nothing else; no
/// framing, no form posted elsewhere, no `<base>`.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                   base-uri 'none'";

const SCRIPT: &str = include_str!("../assets/wallet.js");
const STYLE: &str = include_str!("../assets/wallet.css");

/// `GET /assets/wallet.js`.
#[utoipa::path(get, path = "/assets/wallet.js", tag = "pages", responses((status = 200, description = "the pages' script", body = String, content_type = "text/javascript")))]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /assets/wallet.css`.
#[utoipa::path(get, path = "/assets/wallet.css", tag = "pages", responses((status = 200, description = "the pages' style", body = String, content_type = "text/css")))]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// Escapes text for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page with the security headers.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/assets/wallet.css\"></head>\
         <body><main>{body}</main><script src=\"/assets/wallet.js\"></script></body></html>",
        esc(title)
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // No referrer to other sites (the link's tag is in the URL). Not `no-referrer`: with it a
    // browser sends `Origin: null` on the page's own form posts, and those are checked.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A problem shown as a page, with its code.
fn problem_page(problem: &Problem) -> Response {
    let body = format!(
        "<h1>{}</h1><p>{}</p><p class=\"code\">{}</p>",
        esc(match problem.status() {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::GONE => "This request has expired",
            StatusCode::FORBIDDEN => "This link is not valid",
            StatusCode::CONFLICT => "This request is closed",
            StatusCode::SERVICE_UNAVAILABLE =>
                "The wallet cannot answer now: try again in a moment",
            _ => "Something went wrong",
        }),
        esc(problem.detail()),
        esc(problem.code())
    );
    page(problem.status(), "AP2 wallet", &body)
}

/// An amount in its currency's own format: its minor units (none for JPY, three for KWD)
/// and its code.
fn amount(minor: u64, currency: Currency) -> String {
    match Money::from_minor_units(minor, currency) {
        Ok(money) => format!("{} {}", money.to_decimal_string(), currency.code()),
        Err(_) => format!("{minor} (minor units) {}", currency.code()),
    }
}

fn link_invalid() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "link_invalid",
        "this link does not authorise this request",
    )
}

/// Refuses a call another site's page made (SPEC §12: CSRF-safe): `Origin`, when sent, must
/// be the wallet's, and `Sec-Fetch-Site`, when sent, must not be `cross-site`.
fn same_origin(state: &AppState, headers: &HeaderMap) -> Result<(), Problem> {
    let refused = || {
        Problem::new(
            StatusCode::FORBIDDEN,
            "cross_origin_refused",
            "this call must come from the wallet's own page",
        )
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ours = webauthn_rs::prelude::Url::parse(state.public_url.as_str())
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        if origin.to_str().ok() != Some(ours.as_str()) {
            return Err(refused());
        }
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|site| site.as_bytes() == b"cross-site")
    {
        return Err(refused());
    }
    Ok(())
}

/// `?t=` of an approval link.
#[derive(Debug, Deserialize)]
pub struct ApprovalLink {
    t: String,
}

/// The request behind an approval link, or why the link does not open it.
async fn linked_request(state: &AppState, id: &str, t: &str) -> Result<RequestRow, Problem> {
    // No such request is the link's fault; a store that cannot answer is not (503).
    let row = load(state, id.to_owned()).await.map_err(|problem| {
        if problem.status() == StatusCode::NOT_FOUND {
            link_invalid()
        } else {
            problem
        }
    })?;
    if !approval::approval_tag_ok(&state.master, &row, t) {
        return Err(link_invalid());
    }
    Ok(row)
}

/// `GET /approve/{id}?t=`: the approval page.
#[utoipa::path(get, path = "/approve/{id}", tag = "pages", params(("id" = String, Path), ("t" = String, Query, description = "the link's tag")),
    responses((status = 200, description = "the approval page: the purchase and its buttons while it waits, or how it ended", body = String, content_type = "text/html"),
        (status = 403, description = "`link_invalid` (a page)", body = String, content_type = "text/html"),
        (status = 410, description = "expired (a page)", body = String, content_type = "text/html"),
        (status = 503, description = "`store_unavailable` (a page)", body = String, content_type = "text/html")))]
pub async fn approval_page(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    link: Result<Query<ApprovalLink>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(link)) = link else {
        return problem_page(&link_invalid());
    };
    match linked_request(&state, &id, &link.t).await {
        Ok(row) => render_request(&state, &row, &link.t, None).await,
        Err(problem) => problem_page(&problem),
    }
}

/// Whether the user has a passkey; a store that cannot say is `503`, not "none" (the page
/// would tell a user with passkeys that they have none).
async fn has_passkeys(state: &AppState, user_id: &str) -> Result<bool, Problem> {
    Ok(!stored(state.store.passkeys(user_id).await)?.is_empty())
}

/// The page of `row`: the purchase and the buttons while it waits, or how it ended.
async fn render_request(
    state: &AppState,
    row: &RequestRow,
    t: &str,
    message: Option<&str>,
) -> Response {
    let now = state.clock.now_unix();
    let status = row.status_at(now);
    let cart = Cart::from_json(row.cart.as_bytes());
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>Approve a purchase</h1><p class=\"lead\">An agent asks to buy this for you.</p>\
         <dl class=\"terms\"><dt>Merchant</dt><dd id=\"merchant\">{}</dd>\
         <dt>Agent</dt><dd id=\"agent\">{}</dd></dl>",
        esc(&row.merchant_id),
        esc(&row.agent_id)
    );
    match &cart {
        Ok(cart) => {
            body.push_str(
                "<table id=\"items\"><caption>What is bought</caption><thead><tr>\
                 <th scope=\"col\">Item</th><th scope=\"col\">Qty</th>\
                 <th scope=\"col\">Price</th><th scope=\"col\">Line total</th></tr></thead><tbody>",
            );
            for item in cart.line_items() {
                let line = item.unit_price.saturating_mul(u64::from(item.quantity));
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&item.title),
                    item.quantity,
                    esc(&amount(item.unit_price, cart.currency())),
                    esc(&amount(line, cart.currency()))
                );
            }
            let _ = write!(
                body,
                "</tbody><tfoot><tr><th scope=\"row\" colspan=\"3\">Total</th>\
                 <td id=\"total\">{}</td></tr></tfoot></table>",
                esc(&amount(cart.total().minor_units(), cart.currency()))
            );
        }
        Err(_) => body.push_str("<p>The cart cannot be shown.</p>"),
    }
    let max = ap2_mandate::Currency::parse(&row.currency)
        .ok()
        .and_then(|c| Money::parse(&row.max_amount, c).ok())
        .map(|m| format!("{} {}", m.to_decimal_string(), m.currency().code()))
        .unwrap_or_else(|| format!("{} {}", row.max_amount, row.currency));
    let _ = write!(
        body,
        "<dl class=\"terms\"><dt>At most</dt><dd id=\"max-amount\">{}</dd>\
         <dt>Approve before</dt><dd id=\"expires\"><time datetime=\"{}\">{}</time></dd></dl>",
        esc(&max),
        esc(&ap2_service::rfc3339(row.expires_at)),
        esc(&ap2_service::rfc3339(row.expires_at))
    );
    if let Some(message) = message {
        let _ = write!(
            body,
            "<p class=\"message\" role=\"alert\">{}</p>",
            esc(message)
        );
    }
    let code = match status {
        Status::PendingApproval => {
            let passkey = if state.approval.passkey() {
                match has_passkeys(state, &row.user_id).await {
                    Ok(has) => has,
                    Err(problem) => return problem_page(&problem),
                }
            } else {
                false
            };
            let id = esc(&row.id);
            let t = esc(t);
            let _ = write!(
                body,
                "<div id=\"actions\" data-request=\"{id}\" data-t=\"{t}\">\
                 <p id=\"status\" role=\"status\" aria-live=\"polite\"></p>"
            );
            if passkey {
                body.push_str(
                    "<button type=\"button\" id=\"approve-passkey\" class=\"primary\">\
                     Approve with passkey</button>",
                );
            }
            if state.approval.otp() {
                let _ = write!(
                    body,
                    "<form method=\"post\" action=\"/approve/{id}/otp\" id=\"otp-form\">\
                     <input type=\"hidden\" name=\"t\" value=\"{t}\">\
                     <label for=\"otp\">Approve with the code you were sent</label>\
                     <input id=\"otp\" name=\"otp\" inputmode=\"numeric\" autocomplete=\"one-time-code\" \
                     pattern=\"[0-9]{{6}}\" maxlength=\"6\" required>\
                     <button type=\"submit\" id=\"approve-otp\"{}>Approve with code</button></form>",
                    if passkey { "" } else { " class=\"primary\"" }
                );
            } else if !passkey {
                body.push_str(
                    "<p>You have no passkey yet, and this wallet approves with passkeys only: \
                     ask for an enrolment link.</p>",
                );
            }
            let _ = write!(
                body,
                "<form method=\"post\" action=\"/approve/{id}/deny\" id=\"deny-form\">\
                 <input type=\"hidden\" name=\"t\" value=\"{t}\">\
                 <button type=\"submit\" id=\"deny\">Deny</button></form></div>"
            );
            StatusCode::OK
        }
        Status::Approved => {
            body.push_str("<p class=\"outcome\" id=\"outcome\">Approved: the mandate was issued to the agent.</p>");
            StatusCode::OK
        }
        Status::Denied => {
            body.push_str("<p class=\"outcome\" id=\"outcome\">Denied: no mandate was issued.</p>");
            StatusCode::OK
        }
        Status::Locked => {
            body.push_str(
                "<p class=\"outcome\" id=\"outcome\">Locked after too many wrong codes.</p>",
            );
            StatusCode::OK
        }
        Status::Expired => {
            body.push_str(
                "<p class=\"outcome\" id=\"outcome\">Expired: it was not approved in time.</p>",
            );
            StatusCode::GONE
        }
    };
    page(code, "Approve a purchase", &body)
}

/// The form of the code and of Deny.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LinkForm {
    t: String,
    #[serde(default)]
    otp: Option<String>,
}

/// `POST /approve/{id}/otp` (a form): approves with the code, then shows the outcome.
#[utoipa::path(post, path = "/approve/{id}/otp", tag = "pages", params(("id" = String, Path)),
    request_body(content = LinkForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "the page, approved", body = String, content_type = "text/html"), (status = 403, description = "`link_invalid`, `cross_origin_refused` (a page)", body = String, content_type = "text/html"),
        (status = 404, description = "a page", body = String, content_type = "text/html"),
        (status = 409, description = "the request is closed (a page)", body = String, content_type = "text/html"),
        (status = 410, description = "expired (a page)", body = String, content_type = "text/html"),
        (status = 422, description = "a wrong code (the page again, with how many tries are left)", body = String, content_type = "text/html"),
        (status = 423, description = "locked (a page)", body = String, content_type = "text/html"),
        (status = 503, description = "`store_unavailable`, `key_directory_unavailable` (a page)", body = String, content_type = "text/html")))]
pub async fn approve_otp(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    form: Result<Form<LinkForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return problem_page(&link_invalid());
    };
    let result = async {
        same_origin(&state, &headers)?;
        let row = linked_request(&state, &id, &form.t).await?;
        let code = form.otp.clone().unwrap_or_default();
        finish_approval(&state, row.id, row.user_id, Check::Otp(code)).await
    }
    .await;
    outcome_page(&state, &id, &form.t, result).await
}

/// `POST /approve/{id}/deny` (a form).
#[utoipa::path(post, path = "/approve/{id}/deny", tag = "pages", params(("id" = String, Path)),
    request_body(content = LinkForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "the page, denied", body = String, content_type = "text/html"), (status = 403, description = "`link_invalid`, `cross_origin_refused` (a page)", body = String, content_type = "text/html"),
        (status = 404, description = "a page", body = String, content_type = "text/html"),
        (status = 409, description = "the request was approved, denied or locked before (a page)", body = String, content_type = "text/html"),
        (status = 410, description = "expired (a page)", body = String, content_type = "text/html"),
        (status = 503, description = "`store_unavailable` (a page)", body = String, content_type = "text/html")))]
pub async fn deny(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    form: Result<Form<LinkForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return problem_page(&link_invalid());
    };
    let result = async {
        same_origin(&state, &headers)?;
        let row = linked_request(&state, &id, &form.t).await?;
        finish_denial(&state, row.id, row.user_id).await
    }
    .await;
    outcome_page(&state, &id, &form.t, result).await
}

/// After a form: the request's page again, with what went wrong when something did.
async fn outcome_page(
    state: &AppState,
    id: &str,
    t: &str,
    result: Result<RequestRow, Problem>,
) -> Response {
    match result {
        Ok(row) => render_request(state, &row, t, None).await,
        Err(problem)
            if problem.code() == "link_invalid" || problem.code() == "cross_origin_refused" =>
        {
            problem_page(&problem)
        }
        Err(problem) => match linked_request(state, id, t).await {
            Ok(row) => {
                let mut response = render_request(state, &row, t, Some(problem.detail())).await;
                if response.status() == StatusCode::OK {
                    *response.status_mut() = problem.status();
                }
                response
            }
            Err(_) => problem_page(&problem),
        },
    }
}

/// The body of the passkey calls: the link's tag, and for the second call the sealed state
/// and the browser's credential.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeyCall {
    t: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    credential: Option<Value>,
    /// The enrolment link's deadline (enrolment only).
    #[serde(default)]
    e: Option<i64>,
}

fn passkey_not_allowed() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "passkey_not_allowed",
        "this wallet approves with the code only",
    )
}

fn passkey_refused(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "passkey_refused", detail)
}

async fn user_passkeys(state: &AppState, user_id: &str) -> Result<Vec<Passkey>, Problem> {
    let stored = stored(state.store.passkeys(user_id).await)?;
    stored
        .iter()
        .map(|json| serde_json::from_str(json).map_err(Problem::internal))
        .collect()
}

/// `POST /approve/{id}/passkey/options`: the assertion options, their challenge committing
/// to the request (SPEC §12), and the sealed state.
#[utoipa::path(post, path = "/approve/{id}/passkey/options", tag = "pages", params(("id" = String, Path)), request_body = PasskeyCall,
    responses((status = 200, description = "`{options, state}`", body = Object),
        (status = 403, description = "`link_invalid`, `cross_origin_refused`, `passkey_not_allowed`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 409, description = "`request_not_pending`, `no_passkey`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn passkey_options(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    ApiJson(call): ApiJson<PasskeyCall>,
) -> Result<ApiJson<Value>, Problem> {
    same_origin(&state, &headers)?;
    if !state.approval.passkey() {
        return Err(passkey_not_allowed());
    }
    let row = linked_request(&state, &id, &call.t).await?;
    if row.status_at(state.clock.now_unix()) != Status::PendingApproval {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "request_not_pending",
            format!(
                "the request is {}",
                row.status_at(state.clock.now_unix()).as_str()
            ),
        ));
    }
    let passkeys = user_passkeys(&state, &row.user_id).await?;
    if passkeys.is_empty() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "no_passkey",
            "the user has no passkey enrolled",
        ));
    }
    let (options, sealed) =
        approval::start_approval(&state.webauthn, &state.master, &row, &passkeys)
            .map_err(Problem::internal)?;
    Ok(ApiJson(
        serde_json::json!({ "options": options, "state": sealed }),
    ))
}

/// `POST /approve/{id}/passkey`: checks the assertion (signature, challenge, origin, user
/// verification, sign counter) and approves; the mandate says `amr` and the evidence is kept.
#[utoipa::path(post, path = "/approve/{id}/passkey", tag = "pages", params(("id" = String, Path)), request_body = PasskeyCall,
    responses((status = 200, description = "`{id, status, amr}`", body = Object),
        (status = 403, description = "`link_invalid`, `cross_origin_refused`, `passkey_not_allowed`, `passkey_refused`, `passkey_counter_regressed`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 409, description = "`request_not_pending`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 410, description = "`request_expired`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 400, description = "`credential_required`, `credential_invalid`, `invalid_body`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn passkey_approve(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    ApiJson(call): ApiJson<PasskeyCall>,
) -> Result<ApiJson<Value>, Problem> {
    same_origin(&state, &headers)?;
    if !state.approval.passkey() {
        return Err(passkey_not_allowed());
    }
    let row = linked_request(&state, &id, &call.t).await?;
    let (ceremony, nonce) = call
        .state
        .as_deref()
        .and_then(|sealed| approval::open_approval(&state.master, &row.id, sealed))
        .ok_or_else(|| passkey_refused("the ceremony's state is not one of this request's"))?;
    let credential_json = call
        .credential
        .ok_or_else(|| Problem::bad_request("credential_required", "the credential is missing"))?;
    let credential: PublicKeyCredential = serde_json::from_value(credential_json)
        .map_err(|e| Problem::bad_request("credential_invalid", e.to_string()))?;
    let result = state
        .webauthn
        .finish_passkey_authentication(&credential, &ceremony)
        .map_err(|e| match e {
            WebauthnError::CredentialPossibleCompromise => {
                tracing::warn!(request_id = %row.id, user_id = %row.user_id, "a passkey's sign counter went back: a cloned authenticator?");
                Problem::new(
                    StatusCode::FORBIDDEN,
                    "passkey_counter_regressed",
                    "the authenticator's sign counter went back: it may be a copy",
                )
            }
            other => passkey_refused(format!("the assertion does not verify: {other}")),
        })?;
    // The credential's new sign counter, stored before the approval.
    let mut passkeys = user_passkeys(&state, &row.user_id).await?;
    let passkey = passkeys
        .iter_mut()
        .find(|p| p.cred_id() == result.cred_id())
        .ok_or_else(|| passkey_refused("the credential is not the user's"))?;
    if passkey.update_credential(&result) == Some(true) {
        let cred_id = URL_SAFE_NO_PAD.encode(passkey.cred_id().as_ref());
        let json = serde_json::to_string(&*passkey).map_err(Problem::internal)?;
        stored(state.store.update_passkey(&cred_id, &json).await)?;
    }
    let amr = amr_for(result.user_verified());
    let public_key = approval::public_jwk(passkey)
        .ok_or_else(|| passkey_refused("the credential's key is not P-256"))?;
    let client: Value =
        serde_json::from_slice(credential.response.client_data_json.as_ref()).unwrap_or_default();
    let evidence = Evidence {
        version: 1,
        terms: approval::terms_of(&row),
        cart: serde_json::from_str(&row.cart).map_err(Problem::internal)?,
        nonce: nonce.clone(),
        challenge: URL_SAFE_NO_PAD.encode(
            ap2_mandate::evidence::approval_challenge(&approval::terms_of(&row), &nonce)
                .map_err(Problem::internal)?,
        ),
        rp_id: state.webauthn_rp_id.clone(),
        origin: client
            .get("origin")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        credential: EvidenceCredential {
            id: URL_SAFE_NO_PAD.encode(passkey.cred_id().as_ref()),
            public_key,
        },
        assertion: Assertion {
            authenticator_data: URL_SAFE_NO_PAD
                .encode(credential.response.authenticator_data.as_ref()),
            client_data_json: URL_SAFE_NO_PAD.encode(credential.response.client_data_json.as_ref()),
            signature: URL_SAFE_NO_PAD.encode(credential.response.signature.as_ref()),
        },
        amr: amr.clone(),
        approved_at: state.clock.now_unix(),
    };
    let evidence = serde_json::to_string(&evidence).map_err(Problem::internal)?;
    let row = finish_approval(
        &state,
        row.id,
        row.user_id,
        Check::Passkey {
            amr: amr.clone(),
            evidence,
        },
    )
    .await?;
    Ok(ApiJson(serde_json::json!({
        "id": row.id,
        "status": row.status.as_str(),
        "amr": amr,
    })))
}

/// `?e=&t=` of an enrolment link.
#[derive(Debug, Deserialize)]
pub struct EnrollmentLink {
    e: i64,
    t: String,
}

fn enrollment_check(
    state: &AppState,
    user_id: &str,
    expires_at: i64,
    t: &str,
) -> Result<(), Problem> {
    if !approval::enrollment_tag_ok(&state.master, user_id, expires_at, t) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "link_invalid",
            "this link does not authorise enrolling a passkey for this user",
        ));
    }
    if state.clock.now_unix() >= expires_at {
        return Err(Problem::new(
            StatusCode::GONE,
            "link_expired",
            "this enrolment link has expired: ask for a new one",
        ));
    }
    Ok(())
}

/// `GET /enroll/{user}?e=&t=`: the enrolment page.
#[utoipa::path(get, path = "/enroll/{id}", tag = "pages", params(("id" = String, Path), ("e" = i64, Query), ("t" = String, Query)),
    responses((status = 200, description = "the enrolment page", body = String, content_type = "text/html"),
        (status = 403, description = "`link_invalid` (a page)", body = String, content_type = "text/html"),
        (status = 410, description = "`link_expired` (a page)", body = String, content_type = "text/html")))]
pub async fn enrollment_page(
    State(state): State<AppState>,
    ApiPath(user_id): ApiPath<String>,
    link: Result<Query<EnrollmentLink>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(link)) = link else {
        return problem_page(&link_invalid());
    };
    if let Err(problem) = enrollment_check(&state, &user_id, link.e, &link.t) {
        return problem_page(&problem);
    }
    let body = format!(
        "<h1>Add a passkey</h1><p class=\"lead\">Approve purchases with this device's \
         screen lock or security key instead of a code.</p><dl class=\"terms\"><dt>User</dt>\
         <dd id=\"user\">{}</dd></dl><div id=\"enroll\" data-user=\"{}\" data-e=\"{}\" data-t=\"{}\">\
         <p id=\"status\" role=\"status\" aria-live=\"polite\"></p>\
         <button type=\"button\" id=\"enroll-passkey\" class=\"primary\">Add a passkey</button></div>",
        esc(&user_id),
        esc(&user_id),
        link.e,
        esc(&link.t)
    );
    page(StatusCode::OK, "Add a passkey", &body)
}

/// `POST /enroll/{user}/options`: the creation options and the sealed state.
#[utoipa::path(post, path = "/enroll/{id}/options", tag = "pages", params(("id" = String, Path)), request_body = PasskeyCall,
    responses((status = 200, description = "`{options, state}`", body = Object),
        (status = 403, description = "`link_invalid`, `cross_origin_refused`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 409, description = "`too_many_passkeys`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
(status = 410, description = "`link_expired`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn enrollment_options(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(call): ApiJson<PasskeyCall>,
) -> Result<ApiJson<Value>, Problem> {
    same_origin(&state, &headers)?;
    enrollment_check(&state, &user_id, call.e.unwrap_or_default(), &call.t)?;
    let existing = user_passkeys(&state, &user_id).await?;
    check_passkey_room(&existing)?;
    let (options, sealed) =
        approval::start_enrollment(&state.webauthn, &state.master, &user_id, &existing)
            .map_err(Problem::internal)?;
    Ok(ApiJson(
        serde_json::json!({ "options": options, "state": sealed }),
    ))
}

/// Passkeys one user may hold: an enrolment link's holder cannot add rows without bound.
pub const MAX_PASSKEYS_PER_USER: usize = 10;

/// 409 `too_many_passkeys` when the user holds [`MAX_PASSKEYS_PER_USER`] already.
fn check_passkey_room(existing: &[Passkey]) -> Result<(), Problem> {
    if existing.len() >= MAX_PASSKEYS_PER_USER {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "too_many_passkeys",
            format!("a user holds at most {MAX_PASSKEYS_PER_USER} passkeys"),
        ));
    }
    Ok(())
}

/// `POST /enroll/{user}`: checks the new credential and stores it.
#[utoipa::path(post, path = "/enroll/{id}", tag = "pages", params(("id" = String, Path)), request_body = PasskeyCall,
    responses((status = 201, description = "`{user_id, credential_id}`", body = Object),
        (status = 403, description = "`link_invalid`, `cross_origin_refused`, `passkey_refused`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 409, description = "`credential_exists`, `too_many_passkeys`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json"),
        (status = 410, description = "`link_expired`", body = ap2_service::openapi::ProblemSchema, content_type = "application/problem+json")))]
pub async fn enroll(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(call): ApiJson<PasskeyCall>,
) -> Result<(StatusCode, ApiJson<Value>), Problem> {
    same_origin(&state, &headers)?;
    enrollment_check(&state, &user_id, call.e.unwrap_or_default(), &call.t)?;
    check_passkey_room(&user_passkeys(&state, &user_id).await?)?;
    let registration = call
        .state
        .as_deref()
        .and_then(|sealed| approval::open_enrollment(&state.master, &user_id, sealed))
        .ok_or_else(|| passkey_refused("the ceremony's state is not one of this user's"))?;
    let credential_json = call
        .credential
        .ok_or_else(|| Problem::bad_request("credential_required", "the credential is missing"))?;
    let credential: RegisterPublicKeyCredential = serde_json::from_value(credential_json)
        .map_err(|e| Problem::bad_request("credential_invalid", e.to_string()))?;
    let passkey = state
        .webauthn
        .finish_passkey_registration(&credential, &registration)
        .map_err(|e| passkey_refused(format!("the credential does not verify: {e}")))?;
    if approval::public_jwk(&passkey).is_none() {
        return Err(passkey_refused(
            "only P-256 (ES256) passkeys are accepted, so evidence can be re-verified",
        ));
    }
    let cred_id = URL_SAFE_NO_PAD.encode(passkey.cred_id().as_ref());
    let json = serde_json::to_string(&passkey).map_err(Problem::internal)?;
    let now = state.clock.now_unix();
    let added = stored(
        match state
            .store
            .add_passkey(&user_id, &cred_id, &json, now)
            .await
        {
            Err(StoreError::CredentialExists) => Ok(false),
            other => other.map(|()| true),
        },
    )?;
    if !added {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "credential_exists",
            "this passkey is enrolled already",
        ));
    }
    tracing::info!(%user_id, credential_id = %cred_id, "passkey enrolled");
    Ok((
        StatusCode::CREATED,
        ApiJson(serde_json::json!({ "user_id": user_id, "credential_id": cred_id })),
    ))
}
