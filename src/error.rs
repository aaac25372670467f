//! The error enum of the HTTP edge and its one IntoResponse: `{"error": reason, "message": what to do}`.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The exact message of a 401 on the relay.
pub const INVALID_KEY_MESSAGE: &str = "Invalid or inactive API key";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the named field is wrong; the message says how to fix it.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// 401 on the relay, with the exact body of SPEC §3.
    #[error("invalid or inactive API key")]
    InvalidKey,
    /// 401 on the admin API.
    #[error("admin authentication required")]
    AdminAuth,
    /// 403: authenticated, but the request may not be made this way; the message says why.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 404 on the relay: no upstream serves the request's model (SPEC §12); the message says
    /// which model and what to do.
    #[error("{0}")]
    NoRoute(String),
    /// 405 on the relay: only GET, POST and DELETE are relayed (the `Allow` header lists them).
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 429 with `Retry-After: retry_after` seconds.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    /// 429 on the relay: a key's limit (SPEC §10) is reached; `Retry-After` when it will pass
    /// by itself (not for lifetime limits).
    #[error("{message}")]
    LimitExceeded {
        limit: &'static str,
        message: String,
        retry_after: Option<u64>,
    },
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    GatewayTimeout(String),
    /// 503 with `Retry-After: retry_after` seconds: keygate cannot take the request now.
    #[error("{message}")]
    Unavailable { message: String, retry_after: u64 },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
    /// 500 whose message says what happened and what to do (the cause goes to the log).
    #[error("{0}")]
    Failed(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::InvalidKey | ApiError::AdminAuth => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::NoRoute(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests { .. } | ApiError::LimitExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) | ApiError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client is told to do; never an internal cause.
    fn message(&self) -> String {
        match self {
            ApiError::Invalid { field, message } => format!("{field}: {message}"),
            ApiError::InvalidKey => INVALID_KEY_MESSAGE.to_string(),
            ApiError::AdminAuth => {
                "Send Authorization: Bearer <KEYGATE_ADMIN_TOKEN>, or log in with POST /api/auth/login".into()
            }
            ApiError::NotFound(what) => format!("No {what} with that id; list them to find the right one"),
            ApiError::MethodNotAllowed => format!(
                "Only {} are relayed; send the request with one of them",
                crate::relay::confine::ALLOWED_METHODS
            ),
            ApiError::Conflict(message)
            | ApiError::Forbidden(message)
            | ApiError::NoRoute(message) => message.clone(),
            ApiError::TooManyRequests { message, retry_after } => {
                format!("{message}; retry in {retry_after} s")
            }
            ApiError::LimitExceeded {
                message,
                retry_after,
                ..
            } => match retry_after {
                Some(secs) => format!("Rate limit reached: {message}; retry in {secs} s"),
                None => format!("Limit reached: {message}"),
            },
            ApiError::PayloadTooLarge(limit) => format!(
                "The request body exceeds {limit} bytes; send a smaller one or raise KEYGATE_MAX_BODY_BYTES"
            ),
            ApiError::BadGateway(message) | ApiError::GatewayTimeout(message) => message.clone(),
            ApiError::Unavailable { message, .. } | ApiError::Failed(message) => message.clone(),
            ApiError::Internal(_) => "Internal error; the server log has the details".into(),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        match crate::store::unavailable_cause(&err) {
            Some(message) => {
                tracing::warn!(error = %err, "database unavailable");
                ApiError::Unavailable {
                    message: message.into(),
                    retry_after: 2,
                }
            }
            None => ApiError::Internal(anyhow::Error::new(err).context("database")),
        }
    }
}

/// Every error answer of keygate's own: the reason (the HTTP status's), what to do, and for a
/// 400 the field at fault, for a 429 of a key limit the limit.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    error: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    /// The key limit a 429 is about (`rate_limit_requests`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.respond(false)
    }
}

/// An error in the Anthropic Messages API's envelope (SPEC §13), so that Claude Code and the
/// Anthropic SDKs show its reason.
#[derive(Serialize)]
struct AnthropicBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicError<'a>,
}

#[derive(Serialize)]
struct AnthropicError<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: String,
}

impl ApiError {
    /// The answer on the Anthropic routes: Anthropic's envelope, with the type its SDKs map
    /// the status to; a 401 keeps the body every route gives it (SPEC §6).
    pub fn anthropic_response(self) -> Response {
        let envelope = !matches!(self, ApiError::InvalidKey);
        self.respond(envelope)
    }

    /// Anthropic's `error.type` for this error's status.
    fn anthropic_type(&self) -> &'static str {
        match self.status().as_u16() {
            400 | 405 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 => "overloaded_error",
            _ => "api_error",
        }
    }

    fn respond(self, anthropic: bool) -> Response {
        let status = self.status();
        if let ApiError::Internal(cause) = &self {
            tracing::error!(error = format!("{cause:#}"), "internal error");
        }
        let mut response = if anthropic {
            let body = AnthropicBody {
                kind: "error",
                error: AnthropicError {
                    kind: self.anthropic_type(),
                    message: self.message(),
                },
            };
            (status, axum::Json(body)).into_response()
        } else {
            let field = match &self {
                ApiError::Invalid { field, .. } => Some(field.as_str()),
                _ => None,
            };
            let limit = match &self {
                ApiError::LimitExceeded { limit, .. } => Some(*limit),
                _ => None,
            };
            let body = ErrorBody {
                error: status.canonical_reason().unwrap_or("Error"),
                message: self.message(),
                field,
                limit,
            };
            (status, axum::Json(body)).into_response()
        };
        if status == StatusCode::UNAUTHORIZED && matches!(self, ApiError::InvalidKey) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        let retry_after = match &self {
            ApiError::Unavailable { retry_after, .. }
            | ApiError::TooManyRequests { retry_after, .. } => Some(*retry_after),
            ApiError::LimitExceeded { retry_after, .. } => *retry_after,
            _ => None,
        };
        if let Some(retry_after) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        if matches!(self, ApiError::MethodNotAllowed) {
            response.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static(crate::relay::confine::ALLOWED_METHODS),
            );
        }
        response
    }
}

/// `axum::Json` whose rejections answer in the error shape, naming the field.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::invalid("body", serde_cause(&e))),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::invalid(
                "content-type",
                "send the body as JSON with Content-Type: application/json",
            )),
            Err(e) => Err(ApiError::invalid(
                "body",
                format!("not valid JSON ({})", e.body_text()),
            )),
        }
    }
}

/// `axum::extract::Query` whose rejections answer in the error shape.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| ApiError::invalid("query", e.body_text()))
    }
}

/// `axum::extract::Path` whose rejections answer in the error shape (an id that is not a
/// number: 400 naming `id`).
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| {
                ApiError::invalid("id", format!("{}; send a whole number", e.body_text()))
            })
    }
}

/// serde's own words (they name the field), without axum's prefix.
fn serde_cause(err: &dyn std::error::Error) -> String {
    let mut cause = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    cause
}
