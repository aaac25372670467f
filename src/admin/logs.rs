//! `/api/api-logs`: all call logs, newest first, filtered by key, status and model, paged by
//! page number or by cursor (`before`/`after` a row id).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::error::{ApiError, ApiQuery, ErrorBody};
use crate::store::logs::{LogFilter, LogRow, LogStatus, PageAt};

pub fn router() -> Router<AppState> {
    Router::new().route("/api-logs", get(list))
}

/// A log list's query: the filter and where the page starts (shared with a key's logs).
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Only this key's rows (on `/api/api-logs`; a key's own list is already narrowed).
    key_id: Option<i64>,
    /// `success` or `error`.
    status: Option<String>,
    /// Exactly this model.
    model: Option<String>,
    /// 1 or more (default 1); not with `before`/`after`.
    #[param(minimum = 1)]
    page: Option<i64>,
    /// 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    page_size: Option<i64>,
    /// The rows older than this row id (a page's `next_before`).
    before: Option<i64>,
    /// The rows newer than this row id (a page's `prev_after`; 0: the oldest rows).
    after: Option<i64>,
}

/// A page of logs: `{items, page, page_size, total}` as every list (the total exact, from the
/// call log's day counts), plus `total_is_estimate` (always false since those counts; kept for
/// clients written against earlier versions, whose totals past 10,000 rows were estimated) and the
/// cursors of the pages either side (`next_before`: pass as `before` for older rows;
/// `prev_after`: pass as `after` for newer rows; null when there are none). `page` is null on
/// a cursor page.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LogListing {
    pub items: Vec<LogRow>,
    pub page: Option<i64>,
    pub page_size: i64,
    pub total: i64,
    pub total_is_estimate: bool,
    pub next_before: Option<i64>,
    pub prev_after: Option<i64>,
}

#[utoipa::path(get, path = "/api/api-logs", tag = "logs", params(LogsQuery), responses((status = 200, description = "A page of call logs, newest first", body = LogListing), (status = 400, description = "Invalid input; `field` names it", body = ErrorBody), (status = 401, description = "No or wrong admin credential", body = ErrorBody), (status = 403, description = "A session request from another site", body = ErrorBody), (status = 429, description = "Too many failed credentials from this address", body = ErrorBody), (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Json<LogListing>, ApiError> {
    let key_id = query.key_id;
    page_of_logs(&state, key_id, query).await
}

/// One page of logs, shared by `/api/api-logs` and `/api/api-keys/{id}/logs`.
pub async fn page_of_logs(
    state: &AppState,
    key_id: Option<i64>,
    query: LogsQuery,
) -> Result<Json<LogListing>, ApiError> {
    let status = match query.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(
            LogStatus::parse(text)
                .ok_or_else(|| ApiError::invalid("status", "must be success or error"))?,
        ),
    };
    let model = query
        .model
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty());
    let at = page_at(query.page, query.page_size, query.before, query.after)?;
    let filter = LogFilter {
        key_id,
        status,
        model,
    };
    let Some(page) = crate::store::logs::list(&state.pool, &filter, at).await? else {
        let (field, id) = match at {
            PageAt::Before { id, .. } => ("before", id),
            PageAt::After { id, .. } => ("after", id),
            PageAt::Number(_) => ("page", 0),
        };
        return Err(ApiError::invalid(
            field,
            format!(
                "call log {id} does not exist (deleted or pruned); start again from the newest page"
            ),
        ));
    };
    Ok(Json(LogListing {
        items: page.rows,
        page: match at {
            PageAt::Number(page) => Some(page.page),
            _ => None,
        },
        page_size: at.page_size(),
        total: page.total,
        total_is_estimate: false,
        next_before: page.next_before,
        prev_after: page.prev_after,
    }))
}

/// Page numbers (`page`, default 1) or a cursor (`before` a row id, or `after` one; `after=0`
/// starts at the oldest row), never both; `page_size` as every list.
fn page_at(
    page: Option<i64>,
    page_size: Option<i64>,
    before: Option<i64>,
    after: Option<i64>,
) -> Result<PageAt, ApiError> {
    let numbered = super::page(page, page_size)?;
    let page_size = numbered.page_size;
    match (before, after) {
        (None, None) => Ok(PageAt::Number(numbered)),
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "before",
            "give before or after, not both",
        )),
        _ if page.is_some() => Err(ApiError::invalid(
            "page",
            "give a page number or a cursor (before/after), not both",
        )),
        (Some(id), None) if id >= 1 => Ok(PageAt::Before { id, page_size }),
        (Some(_), None) => Err(ApiError::invalid(
            "before",
            "must be a call log id (1 or more)",
        )),
        (None, Some(id)) if id >= 0 => Ok(PageAt::After { id, page_size }),
        (None, Some(_)) => Err(ApiError::invalid(
            "after",
            "must be a call log id, or 0 for the oldest rows",
        )),
    }
}
