//! Admin authentication: the admin token as a bearer, or a console session cookie from login;
//! failures throttled per client IP and in total; cookie requests checked against CSRF.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Extension, FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;

use super::throttle::{Burst, Throttle};
use crate::app::AppState;
use crate::audit::{self, Action, Actor, Via};
use crate::config::{Config, SecureCookie};
use crate::error::{ApiError, ApiJson, ErrorBody};
use crate::keys::{self, KeyHash};
use crate::relay::client_ip::client_ip;

const COOKIE: &str = "keygate_session";
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The admin token's hash, the open console sessions (by hash of their id), and the count of
/// failed attempts.
pub struct AdminAuth {
    token_hash: KeyHash,
    sessions: Mutex<HashMap<KeyHash, Instant>>,
    throttle: Throttle,
}

/// How a request presented itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Credential {
    None,
    Bearer,
    Session,
}

impl AdminAuth {
    pub fn new(token_hash: KeyHash, config: &Config) -> Self {
        AdminAuth {
            token_hash,
            sessions: Mutex::new(HashMap::new()),
            throttle: Throttle::new(config.admin_failures_per_ip, config.admin_failures_total),
        }
    }

    pub fn token_matches(&self, token: &str) -> bool {
        keys::hashes_match(&keys::hash(token), &self.token_hash)
    }

    fn open_session(&self) -> String {
        let id = hex::encode(rand::random::<[u8; 32]>());
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.retain(|_, expires| *expires > Instant::now());
            sessions.insert(keys::hash(&id), Instant::now() + SESSION_TTL);
        }
        id
    }

    fn session_valid(&self, id: &str) -> bool {
        self.sessions
            .lock()
            .map(|s| {
                s.get(&keys::hash(id))
                    .is_some_and(|expires| *expires > Instant::now())
            })
            .unwrap_or(false)
    }

    fn close_session(&self, id: &str) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.remove(&keys::hash(id));
        }
    }

    /// The credential the request presented, and whether it is good.
    fn check(&self, headers: &HeaderMap) -> (Credential, bool) {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or_default());
        if let Some(value) = authorization {
            let token = value
                .trim()
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim());
            return (
                Credential::Bearer,
                token.is_some_and(|t| self.token_matches(t)),
            );
        }
        match session_cookie(headers) {
            Some(id) => (Credential::Session, self.session_valid(id)),
            None => (Credential::None, false),
        }
    }
}

/// The peer address the server put on the request.
fn peer(request: &Request) -> SocketAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer)
        .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
}

/// The client's address: the peer, or X-Forwarded-For from a trusted proxy.
fn client_of(request: &Request, config: &Config) -> IpAddr {
    client_ip(peer(request), request.headers(), &config.trusted_proxies)
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// Lets an authenticated request through with its `Actor` (how and from where) in its
/// extensions, for the audit log.
pub async fn require_admin(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let ip = client_of(&request, &state.config);
    let admin = &state.admin;
    admin.throttle.admit(ip, Instant::now())?;
    let via = match admin.check(request.headers()) {
        // A stale session cookie (after a restart or logout) is no guess: 256 random bits.
        (Credential::None, _) | (Credential::Session, false) => return Err(ApiError::AdminAuth),
        (Credential::Bearer, false) => {
            return Err(failed(&state, ip, Via::Token).await);
        }
        (Credential::Session, true) => {
            same_origin(&request, &state.config)?;
            Via::Session
        }
        (Credential::Bearer, true) => Via::Token,
    };
    request.extensions_mut().insert(Actor::admin(via, ip));
    Ok(next.run(request).await)
}

/// Counts a wrong credential; when that makes a burst reach a limit, one audit entry says so.
async fn failed(state: &AppState, ip: IpAddr, via: Via) -> ApiError {
    let (error, burst) = state.admin.throttle.failed(ip, Instant::now());
    if let Some(burst) = burst {
        let (scope, failures) = match burst {
            Burst::Address { failures } => ("address", failures),
            Burst::Total { failures } => ("all_addresses", failures),
        };
        let details = serde_json::json!({
            "scope": scope,
            "failures": failures,
            "window_seconds": super::throttle::WINDOW.as_secs(),
        });
        let by = Actor::admin(via, ip);
        let at = state.clock.now_ms();
        if let Err(err) =
            audit::record(&state.pool, at, &by, Action::LoginFailures, None, details).await
        {
            tracing::warn!(error = %err, "cannot write the audit entry of failed admin logins");
        }
    }
    error
}

/// CSRF beyond SameSite, for a request made with the session cookie: a state-changing request
/// must come from the console's own origin: `Sec-Fetch-Site` when the browser sends it, else
/// `Origin` against `Host` (or a trusted proxy's `X-Forwarded-Host`).
fn same_origin(request: &Request, config: &Config) -> Result<(), ApiError> {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return Ok(());
    }
    let headers = request.headers();
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text("sec-fetch-site") {
        return if site.eq_ignore_ascii_case("same-origin") || site.eq_ignore_ascii_case("none") {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "Cross-site request refused (Sec-Fetch-Site is not same-origin); use the console at this address, or send Authorization: Bearer <KEYGATE_ADMIN_TOKEN> instead of the session cookie".into(),
            ))
        };
    }
    let host = text("host").or_else(|| request.uri().authority().map(|a| a.as_str()));
    let forwarded_host = text("x-forwarded-host")
        .filter(|_| from_trusted_proxy(request, config))
        .and_then(|v| v.split(',').next())
        .map(str::trim);
    let origin_host = text("origin").and_then(|origin| {
        origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
    });
    let matches = origin_host.is_some_and(|origin| {
        [host, forwarded_host]
            .into_iter()
            .flatten()
            .any(|host| origin.eq_ignore_ascii_case(host))
    });
    if matches {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "A request made with the session cookie that changes something needs an Origin header matching this host (browsers send it); or send Authorization: Bearer <KEYGATE_ADMIN_TOKEN>".into(),
        ))
    }
}

fn from_trusted_proxy(request: &Request, config: &Config) -> bool {
    let peer = peer(request).ip().to_canonical();
    config.trusted_proxies.iter().any(|net| net.contains(&peer))
}

pub fn public_router() -> Router<AppState> {
    Router::new().route("/auth/login", post(login))
}

pub fn session_router() -> Router<AppState> {
    Router::new().route("/auth/logout", post(logout))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Login {
    /// The admin token (KEYGATE_ADMIN_TOKEN).
    token: String,
}

#[utoipa::path(post, path = "/api/auth/login", tag = "auth", security(()), request_body = Login, responses(
    (status = 200, description = "Logged in: the session cookie is set (HttpOnly, SameSite=Strict)", body = Object, headers(("set-cookie" = String, description = "keygate_session=…"))),
    (status = 400, description = "Invalid input; `field` names it", body = ErrorBody),
    (status = 401, description = "Wrong token", body = ErrorBody),
    (status = 429, description = "Too many failed tokens from this address, or in total; retry after Retry-After", body = ErrorBody),
))]
pub(crate) async fn login(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let ip = client_of(&request, &state.config);
    state.admin.throttle.admit(ip, Instant::now())?;
    let secure = secure_cookie(&state.config, &request);
    let ApiJson(login) = ApiJson::<Login>::from_request(request, &state).await?;
    if !state.admin.token_matches(login.token.trim()) {
        return Err(failed(&state, ip, Via::Session).await);
    }
    let by = Actor::admin(Via::Session, ip);
    let at = state.clock.now_ms();
    audit::record(
        &state.pool,
        at,
        &by,
        Action::Login,
        None,
        serde_json::json!({}),
    )
    .await?;
    let id = state.admin.open_session();
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    let mut response = Json(serde_json::json!({ "ok": true })).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(anyhow::Error::from)?,
    );
    Ok(response)
}

/// `Secure` on the cookie: always, never, or (auto) when a trusted proxy says the client came
/// over HTTPS.
fn secure_cookie(config: &Config, request: &Request) -> bool {
    match config.secure_cookie {
        SecureCookie::Always => true,
        SecureCookie::Never => false,
        SecureCookie::Auto => {
            from_trusted_proxy(request, config)
                && request
                    .headers()
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(',').next())
                    .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
        }
    }
}

#[utoipa::path(post, path = "/api/auth/logout", tag = "auth", responses(
    (status = 204, description = "Logged out: the session ends and its cookie is cleared"),
    (status = 401, description = "No or wrong admin credential", body = ErrorBody),
    (status = 403, description = "A session request from another site", body = ErrorBody),
    (status = 429, description = "Too many failed credentials from this address", body = ErrorBody),
    (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody),
))]
pub(crate) async fn logout(
    State(state): State<AppState>,
    Extension(by): Extension<Actor>,
    request: Request,
) -> Result<Response, ApiError> {
    if let Some(id) = session_cookie(request.headers()) {
        state.admin.close_session(id);
    }
    let at = state.clock.now_ms();
    audit::record(
        &state.pool,
        at,
        &by,
        Action::Logout,
        None,
        serde_json::json!({}),
    )
    .await?;
    let secure = secure_cookie(&state.config, &request);
    let expired = format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    );
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}
