//! The operator console: read-only HTML pages of what a principal may see
//! (overview, tenants, namespaces, usage, audit), served by axum under
//! `/console/` on the metrics listener or a listener of its own
//! (`console_listen`). `docs/console.md` is the user's guide.
//!
//! - **One authorization.** A page is built from calls of the gRPC
//!   [`Service`] itself, in process, with the signed-in token as their
//!   `authorization`: the same verification, the same rule and the same
//!   audit of refusals as any API client gets, and listings filtered as the
//!   API filters them. Where a page only *offers* a part (a namespace's
//!   usage, its history) it asks [`ControlPlane::permits`], the same rule
//!   without an audit entry, before it calls.
//! - **Sign-in.** A form takes a bearer token and keeps it in an
//!   `HttpOnly`, `SameSite=Strict` cookie; no cookie, or a token the API
//!   refuses, gets the sign-in page and never data. A control plane that
//!   verifies no tokens (`insecure_no_auth`) serves no console data at all.
//! - **Escaping.** Pages are maud templates, which escape every value;
//!   nothing that came from a user or the store is wrapped in
//!   `PreEscaped`. The Content-Security-Policy allows no script at all.
//! - **No secrets.** A namespace is shown after
//!   [`prism_proto::secrets::redact_namespace`], as `Watch` sends it.
//! - **Bad input.** Query parameters are checked here (`params.rs`): an
//!   unknown or malformed one is a 400 page naming it, never a 500.
//!
//! [`ControlPlane::permits`]: crate::plane::ControlPlane::permits

mod pages;
mod params;
mod view;

use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use tonic::metadata::MetadataValue;

use crate::authz::Caller;
use crate::service::Service;

/// Where the console's pages are.
pub const PREFIX: &str = "/console";
/// The cookie holding the signed-in bearer token.
const COOKIE: &str = "prism_console_token";
/// Longest token the sign-in form accepts.
const MAX_TOKEN_BYTES: usize = 8192;

/// The console's routes, all under [`PREFIX`].
pub fn router(service: Service) -> axum::Router {
    let console = Arc::new(Console { service });
    axum::Router::new()
        .route(PREFIX, get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(pages::overview))
        .route("/console/signin", get(signin_form).post(signin))
        .route("/console/signout", post(signout))
        .route("/console/style.css", get(style))
        .route("/console/tenants", get(pages::tenants))
        .route("/console/tenants/{id}", get(pages::tenant))
        .route("/console/namespaces", get(pages::namespaces))
        .route("/console/namespaces/{tenant}/{name}", get(pages::namespace))
        .route("/console/usage", get(pages::usage))
        .route("/console/audit", get(pages::audit))
        .fallback(|| async { Failure::NotFound("no such page".into()).into_response() })
        .with_state(console)
}

struct Console {
    service: Service,
}

/// A signed-in caller: the token each call presents, and who it is.
struct Session {
    token: String,
    caller: Caller,
}

impl Session {
    /// A request of the gRPC API carrying this session's token.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        // Checked when the session was made.
        if let Ok(value) = MetadataValue::try_from(format!("Bearer {}", self.token)) {
            req.metadata_mut().insert("authorization", value);
        }
        req
    }

    fn name(&self) -> String {
        self.caller.name()
    }
}

impl Console {
    /// The session of the cookie in `headers`, verified as every RPC
    /// verifies its token.
    fn session(&self, headers: &HeaderMap) -> Result<Session, Failure> {
        if !self.service.verifies_tokens() {
            return Err(Failure::NoAuth);
        }
        let token = cookie(headers, COOKIE).ok_or(Failure::SignIn(None))?;
        let session = Session { token: token.to_owned(), caller: Caller::Open };
        if MetadataValue::try_from(format!("Bearer {token}")).is_err() {
            return Err(Failure::SignIn(Some("the token is not a bearer token".into())));
        }
        match self.service.caller(&session.request(())) {
            Ok(caller @ Caller::Verified(_)) => Ok(Session { caller, ..session }),
            Ok(Caller::Open) => Err(Failure::NoAuth),
            Err(status) => Err(Failure::from(status)),
        }
    }
}

/// The value of cookie `name`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(k, v)| (k == name && !v.is_empty()).then_some(v))
}

/// Why a page is not shown.
#[derive(Debug)]
enum Failure {
    /// No session (or the API refused its token): the sign-in page.
    SignIn(Option<String>),
    /// The control plane verifies no tokens.
    NoAuth,
    /// A query parameter that is not acceptable: its name and why.
    BadParam(String, String),
    NotFound(String),
    Denied(String),
    /// The API refused the input (its message names the field).
    Invalid(String),
    Unavailable(String),
    Internal,
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let message = status.message().to_owned();
        match status.code() {
            Code::Unauthenticated => Self::SignIn(Some(message)),
            Code::PermissionDenied => Self::Denied(message),
            Code::NotFound => Self::NotFound(message),
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => Self::Invalid(message),
            Code::Unavailable | Code::ResourceExhausted | Code::Aborted => Self::Unavailable(message),
            _ => {
                tracing::warn!(code = ?status.code(), message = %status.message(), "console: the API failed");
                Self::Internal
            }
        }
    }
}

impl From<crate::ControlPlaneError> for Failure {
    fn from(e: crate::ControlPlaneError) -> Self {
        Self::from(e.into_status())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            Self::SignIn(why) => return signin_page(StatusCode::UNAUTHORIZED, why.as_deref(), true),
            Self::NoAuth => (
                StatusCode::FORBIDDEN,
                "Console unavailable",
                "this control plane verifies no tokens (insecure_no_auth), so the console cannot tell who is \
                 looking and shows nothing; configure auth.hs256_secret or a JWKS"
                    .to_owned(),
            ),
            Self::BadParam(name, why) => {
                (StatusCode::BAD_REQUEST, "Bad request", format!("query parameter `{name}` {why}"))
            }
            Self::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
            Self::Denied(m) => (StatusCode::FORBIDDEN, "Not allowed", m),
            Self::Invalid(m) => (StatusCode::BAD_REQUEST, "Bad request", m),
            Self::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable", m),
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error",
                "the control plane failed to answer; its log says why".to_owned(),
            ),
        };
        html(status, view::message_page(title, &message), false)
    }
}

/// An HTML response with the console's headers: no script may run, no
/// page is framed or cached, and `clear` signs out.
fn html(status: StatusCode, body: Markup, clear: bool) -> Response {
    let mut response = (status, body.into_string()).into_response();
    let headers = response.headers_mut();
    let fixed: [(header::HeaderName, &'static str); 6] = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
             base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if clear {
        headers.insert(header::SET_COOKIE, HeaderValue::from_static(CLEAR_COOKIE));
    }
    response
}

const CLEAR_COOKIE: &str = "prism_console_token=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0";

fn signin_page(status: StatusCode, why: Option<&str>, clear: bool) -> Response {
    html(status, view::signin_page(why), clear)
}

async fn signin_form(State(console): State<Arc<Console>>) -> Response {
    if !console.service.verifies_tokens() {
        return Failure::NoAuth.into_response();
    }
    signin_page(StatusCode::OK, None, false)
}

#[derive(serde::Deserialize)]
struct SignIn {
    token: String,
}

/// Checks the token as the API would and, when it is accepted, keeps it
/// in the session cookie.
async fn signin(
    State(console): State<Arc<Console>>,
    form: Result<Form<SignIn>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(SignIn { token })) = form else {
        return signin_page(StatusCode::BAD_REQUEST, Some("the form must carry a `token`"), true);
    };
    let token = token.trim();
    let token = token.strip_prefix("Bearer ").unwrap_or(token).trim();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return signin_page(StatusCode::BAD_REQUEST, Some("that is not a bearer token"), true);
    }
    let mut headers = HeaderMap::new();
    let Ok(value) = HeaderValue::try_from(format!("{COOKIE}={token}")) else {
        return signin_page(StatusCode::BAD_REQUEST, Some("that is not a bearer token"), true);
    };
    headers.insert(header::COOKIE, value);
    if let Err(failure) = console.session(&headers) {
        return failure.into_response();
    }
    // HttpOnly: no script reads it; SameSite=Strict: no other site's page
    // sends it; scoped to the console's paths.
    let cookie = format!("{COOKIE}={token}; Path=/console; HttpOnly; SameSite=Strict");
    let mut response = Redirect::to("/console/").into_response();
    if let Ok(value) = HeaderValue::try_from(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn signout() -> Response {
    let mut response = Redirect::to("/console/signin").into_response();
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_static(CLEAR_COOKIE));
    response
}

async fn style() -> Response {
    let mut response = view::STYLE.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    response
}

/// The query string as pairs, or the page saying it cannot be read.
type RawParams = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

/// A namespace's path parameters.
type NamespacePath = Path<(String, String)>;
