//! `/api/api-logs`: all call logs, newest first, filtered by key, status and model.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::{page, Listing};
use crate::app::AppState;
use crate::error::{ApiError, ApiQuery, ErrorBody};
use crate::store::logs::{LogFilter, LogRow, LogStatus};
use crate::store::Page;

pub fn router() -> Router<AppState> {
    Router::new().route("/api-logs", get(list))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogsQuery {
    key_id: Option<i64>,
    status: Option<String>,
    model: Option<String>,
    /// 1 or more (default 1).
    #[param(minimum = 1)]
    page: Option<i64>,
    /// 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    page_size: Option<i64>,
}

#[utoipa::path(get, path = "/api/api-logs", tag = "logs", params(LogsQuery), responses((status = 200, description = "A page of call logs, newest first", body = Listing<LogRow>), (status = 400, description = "Invalid input; `field` names it", body = ErrorBody), (status = 401, description = "No or wrong admin credential", body = ErrorBody), (status = 403, description = "A session request from another site", body = ErrorBody), (status = 429, description = "Too many failed credentials from this address", body = ErrorBody), (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Json<Listing<LogRow>>, ApiError> {
    let page = page(query.page, query.page_size)?;
    page_of_logs(&state, query.key_id, query.status, query.model, page).await
}

/// One page of logs, shared by `/api/api-logs` and `/api/api-keys/{id}/logs`.
pub async fn page_of_logs(
    state: &AppState,
    key_id: Option<i64>,
    status: Option<String>,
    model: Option<String>,
    page: Page,
) -> Result<Json<Listing<LogRow>>, ApiError> {
    let status = match status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(
            LogStatus::parse(text)
                .ok_or_else(|| ApiError::invalid("status", "must be success or error"))?,
        ),
    };
    let model = model
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty());
    let filter = LogFilter {
        key_id,
        status,
        model,
    };
    let (rows, total) = crate::store::logs::list(&state.pool, &filter, page).await?;
    Ok(Json(Listing::new(rows, page, total)))
}
