//! `GET /api/audit-log`: the admin changes, newest first, filtered by action, key and time.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::{page, Listing};
use crate::app::AppState;
use crate::audit::Action;
use crate::clock::parse_rfc3339;
use crate::error::{ApiError, ApiQuery, ErrorBody};
use crate::store::audit::{AuditFilter, AuditRow};

pub fn router() -> Router<AppState> {
    Router::new().route("/audit-log", get(list))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// One action name (create, edit, renew, batch_renew, revoke, regenerate, delete, import,
    /// prune, login, logout, login_failures, default_expiry).
    action: Option<String>,
    /// Entries about this key (also once it is deleted).
    key_id: Option<i64>,
    /// RFC 3339; entries at or after it.
    since: Option<String>,
    /// RFC 3339; entries before it.
    until: Option<String>,
    /// 1 or more (default 1).
    #[param(minimum = 1)]
    page: Option<i64>,
    /// 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    page_size: Option<i64>,
}

#[utoipa::path(get, path = "/api/audit-log", tag = "audit", params(AuditQuery), responses((status = 200, description = "A page of admin changes, newest first", body = Listing<AuditRow>), (status = 400, description = "Invalid input; `field` names it", body = ErrorBody), (status = 401, description = "No or wrong admin credential", body = ErrorBody), (status = 403, description = "A session request from another site", body = ErrorBody), (status = 429, description = "Too many failed credentials from this address", body = ErrorBody), (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<Listing<AuditRow>>, ApiError> {
    let page = page(query.page, query.page_size)?;
    let filter = AuditFilter {
        action: action_filter(query.action.as_deref())?,
        key_id: query.key_id,
        since: time_filter("since", query.since.as_deref())?,
        until: time_filter("until", query.until.as_deref())?,
    };
    let (items, total) = crate::store::audit::list(&state.pool, &filter, page).await?;
    Ok(Json(Listing::new(items, page, total)))
}

/// A known action name (None when not given).
pub fn action_filter(text: Option<&str>) -> Result<Option<String>, ApiError> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(text) => Action::parse(text)
            .map(|action| Some(action.as_str().to_string()))
            .ok_or_else(|| {
                ApiError::invalid("action", format!("must be one of {}", Action::names()))
            }),
    }
}

fn time_filter(field: &str, text: Option<&str>) -> Result<Option<i64>, ApiError> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(text) => parse_rfc3339(text).map(Some).ok_or_else(|| {
            ApiError::invalid(
                field,
                "must be an RFC 3339 date-time, e.g. 2027-01-31T00:00:00Z",
            )
        }),
    }
}
