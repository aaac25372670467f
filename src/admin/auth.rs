//! Admin authentication: the admin token as a bearer, or a console session cookie from login.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;

use crate::app::AppState;
use crate::error::{ApiError, ApiJson};
use crate::keys::{self, KeyHash};

const COOKIE: &str = "keygate_session";
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The admin token's hash and the open console sessions (by hash of their id).
pub struct AdminAuth {
    token_hash: KeyHash,
    sessions: Mutex<HashMap<KeyHash, Instant>>,
}

impl AdminAuth {
    pub fn new(token_hash: KeyHash) -> Self {
        AdminAuth {
            token_hash,
            sessions: Mutex::new(HashMap::new()),
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

    fn admits(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        match bearer {
            Some(token) => self.token_matches(token),
            None => session_cookie(headers).is_some_and(|id| self.session_valid(id)),
        }
    }
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

pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state.admin.admits(request.headers()) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::AdminAuth)
    }
}

pub fn public_router() -> Router<AppState> {
    Router::new().route("/auth/login", post(login))
}

pub fn session_router() -> Router<AppState> {
    Router::new().route("/auth/logout", post(logout))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    token: String,
}

async fn login(
    State(state): State<AppState>,
    ApiJson(login): ApiJson<Login>,
) -> Result<Response, ApiError> {
    if !state.admin.token_matches(login.token.trim()) {
        tracing::warn!("console login with a wrong admin token");
        return Err(ApiError::AdminAuth);
    }
    let id = state.admin.open_session();
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    let mut response = Json(serde_json::json!({ "ok": true })).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(anyhow::Error::from)?,
    );
    Ok(response)
}

async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        state.admin.close_session(id);
    }
    let expired = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}
