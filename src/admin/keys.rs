//! `/api/api-keys`: list, create, get, patch, revoke, delete, stats and a key's logs.

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::logs::{LogListing, LogsQuery};
use super::{page, Listing};
use crate::app::AppState;
use crate::audit::Actor;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::key_ops::{
    CreateKey, KeyPatch, KeyView, Regenerate, RenewExpiring, Renewal, RenewedBatch,
};
use crate::keys::Status;
use crate::limits::WithLimits;
use crate::store::keys::{KeyFilter, KeySort, SortColumn};
use crate::store::logs::KeyStats;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api-keys", get(list).post(create))
        .route("/api-keys/{id}", get(show).patch(update).delete(remove))
        .route("/api-keys/renew-expiring", post(renew_expiring))
        .route("/api-keys/{id}/revoke", post(revoke))
        .route("/api-keys/{id}/renew", post(renew))
        .route("/api-keys/{id}/regenerate", post(regenerate))
        .route("/api-keys/{id}/stats", get(stats))
        .route("/api-keys/{id}/logs", get(logs))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    status: Option<String>,
    search: Option<String>,
    tag: Option<String>,
    /// name, created_at, expires_at, usage_count or last_used_at (default: newest first).
    sort: Option<String>,
    /// asc (default) or desc.
    order: Option<String>,
    /// 1 or more (default 1).
    #[param(minimum = 1)]
    page: Option<i64>,
    /// 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    page_size: Option<i64>,
}

/// The order a key list asks for.
fn key_sort(sort: Option<&str>, order: Option<&str>) -> Result<Option<KeySort>, ApiError> {
    let descending = match order.filter(|o| !o.is_empty()) {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(ApiError::invalid("order", "must be asc or desc")),
    };
    let Some(sort) = sort.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let column = SortColumn::parse(sort).ok_or_else(|| {
        ApiError::invalid("sort", format!("must be one of {}", SortColumn::NAMES))
    })?;
    Ok(Some(KeySort { column, descending }))
}

#[utoipa::path(get, path = "/api/api-keys", tag = "keys", params(ListQuery), responses((status = 200, description = "A page of keys", body = Listing<KeyView>), (status = 400, description = "Invalid input; `field` names it", body = ErrorBody), (status = 401, description = "No or wrong admin credential", body = ErrorBody), (status = 403, description = "A session request from another site", body = ErrorBody), (status = 429, description = "Too many failed credentials from this address", body = ErrorBody), (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Listing<KeyView>>, ApiError> {
    let page = page(query.page, query.page_size)?;
    let status = match query.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(Status::parse(text).ok_or_else(|| {
            ApiError::invalid(
                "status",
                "must be one of active, pending, expired, disabled, revoked",
            )
        })?),
    };
    let filter = KeyFilter {
        status,
        search: query.search.filter(|s| !s.trim().is_empty()),
        tag: query
            .tag
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()),
        sort: key_sort(query.sort.as_deref(), query.order.as_deref())?,
    };
    let (rows, total) = state.keyring.list(&filter, page).await?;
    let items = state.keyring.views(&rows).await?;
    Ok(Json(Listing::new(items, page, total)))
}

#[utoipa::path(post, path = "/api/api-keys", tag = "keys", request_body = CreateKey, responses((status = 201, description = "The key, with the full `key` (shown this once)", body = KeyView), (status = 400, description = "Invalid input; `field` names it", body = ErrorBody), (status = 401, description = "No or wrong admin credential", body = ErrorBody), (status = 403, description = "A session request from another site", body = ErrorBody), (status = 429, description = "Too many failed credentials from this address", body = ErrorBody), (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody)))]
pub(crate) async fn create(
    State(state): State<AppState>,
    Extension(by): Extension<Actor>,
    ApiJson(WithLimits(request)): ApiJson<WithLimits<CreateKey>>,
) -> Result<impl IntoResponse, ApiError> {
    let (row, secret) = state.keyring.create(&request, &by).await?;
    Ok((
        StatusCode::CREATED,
        Json(state.keyring.view(&row).with_key(secret)),
    ))
}

#[utoipa::path(get, path = "/api/api-keys/{id}", tag = "keys", params(("id" = i64, Path, description = "The key's id")), responses((status = 200, description = "The key", body = KeyView), (status = 404, description = "No key with that id", body = ErrorBody), (status = 400, description = "Invalid input; `field` names it", body = ErrorBody), (status = 401, description = "No or wrong admin credential", body = ErrorBody), (status = 403, description = "A session request from another site", body = ErrorBody), (status = 429, description = "Too many failed credentials from this address", body = ErrorBody), (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody)))]
pub(crate) async fn show(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<KeyView>, ApiError> {
    let row = state.keyring.get(id).await?;
    Ok(Json(state.keyring.full_view(&row).await?))
}

#[utoipa::path(patch, path = "/api/api-keys/{id}", tag = "keys", params(("id" = i64, Path, description = "The key's id")), request_body = KeyPatch, responses((status = 200, description = "The changed key", body = KeyView), (status = 404, description = "No key with that id", body = ErrorBody), (status = 409, description = "The key is revoked", body = ErrorBody), (status = 400, description = "Invalid input; `field` names it", body = ErrorBody), (status = 401, description = "No or wrong admin credential", body = ErrorBody), (status = 403, description = "A session request from another site", body = ErrorBody), (status = 429, description = "Too many failed credentials from this address", body = ErrorBody), (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody)))]
pub(crate) async fn update(
    State(state): State<AppState>,
    Extension(by): Extension<Actor>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(WithLimits(patch)): ApiJson<WithLimits<KeyPatch>>,
) -> Result<Json<KeyView>, ApiError> {
    let row = state.keyring.update(id, &patch, &by).await?;
    Ok(Json(state.keyring.full_view(&row).await?))
}

#[utoipa::path(post, path = "/api/api-keys/{id}/revoke", tag = "keys", params(("id" = i64, Path, description = "The key's id")), responses((status = 200, description = "The revoked key", body = KeyView), (status = 404, description = "No key with that id", body = ErrorBody), (status = 400, description = "Invalid input; `field` names it", body = ErrorBody), (status = 401, description = "No or wrong admin credential", body = ErrorBody), (status = 403, description = "A session request from another site", body = ErrorBody), (status = 429, description = "Too many failed credentials from this address", body = ErrorBody), (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody)))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    Extension(by): Extension<Actor>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<KeyView>, ApiError> {
    let row = state.keyring.revoke(id, &by).await?;
    Ok(Json(state.keyring.full_view(&row).await?))
}

#[utoipa::path(post, path = "/api/api-keys/{id}/renew", tag = "keys", params(("id" = i64, Path, description = "The key's id")), request_body = Renewal, responses((status = 200, description = "The renewed key", body = KeyView), (status = 404, description = "No key with that id", body = ErrorBody), (status = 409, description = "The key is revoked", body = ErrorBody), (status = 400, description = "Invalid input; `field` names it", body = ErrorBody), (status = 401, description = "No or wrong admin credential", body = ErrorBody), (status = 403, description = "A session request from another site", body = ErrorBody), (status = 429, description = "Too many failed credentials from this address", body = ErrorBody), (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody)))]
pub(crate) async fn renew(
    State(state): State<AppState>,
    Extension(by): Extension<Actor>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(renewal): ApiJson<Renewal>,
) -> Result<Json<KeyView>, ApiError> {
    let row = state.keyring.renew(id, &renewal, &by).await?;
    Ok(Json(state.keyring.full_view(&row).await?))
}

#[utoipa::path(post, path = "/api/api-keys/renew-expiring", tag = "keys", request_body = RenewExpiring, responses((status = 200, description = "What was renewed", body = RenewedBatch), (status = 400, description = "Invalid input; `field` names it", body = ErrorBody), (status = 401, description = "No or wrong admin credential", body = ErrorBody), (status = 403, description = "A session request from another site", body = ErrorBody), (status = 429, description = "Too many failed credentials from this address", body = ErrorBody), (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody)))]
pub(crate) async fn renew_expiring(
    State(state): State<AppState>,
    Extension(by): Extension<Actor>,
    ApiJson(request): ApiJson<RenewExpiring>,
) -> Result<Json<RenewedBatch>, ApiError> {
    Ok(Json(state.keyring.renew_expiring(&request, &by).await?))
}

#[utoipa::path(post, path = "/api/api-keys/{id}/regenerate", tag = "keys", params(("id" = i64, Path, description = "The key's id")), request_body(content = Option<Regenerate>, description = "Optional: a grace period for the replaced secret"), responses((status = 200, description = "The key, with the new full `key` (shown this once)", body = KeyView), (status = 404, description = "No key with that id", body = ErrorBody), (status = 409, description = "The key is revoked", body = ErrorBody), (status = 400, description = "Invalid input; `field` names it", body = ErrorBody), (status = 401, description = "No or wrong admin credential", body = ErrorBody), (status = 403, description = "A session request from another site", body = ErrorBody), (status = 429, description = "Too many failed credentials from this address", body = ErrorBody), (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody)))]
pub(crate) async fn regenerate(
    State(state): State<AppState>,
    Extension(by): Extension<Actor>,
    ApiPath(id): ApiPath<i64>,
    body: axum::body::Bytes,
) -> Result<Json<KeyView>, ApiError> {
    // The body is optional: `{}` or nothing regenerates without a grace period.
    let request: Regenerate = if body.iter().all(u8::is_ascii_whitespace) {
        Regenerate::default()
    } else {
        serde_json::from_slice::<Option<Regenerate>>(&body)
            .map(Option::unwrap_or_default)
            .map_err(|err| {
                ApiError::invalid(
                    "body",
                    format!("{err}; send {{\"grace_hours\": 24}} or nothing"),
                )
            })?
    };
    let regenerated = state
        .keyring
        .regenerate(id, request.grace_hours, &by)
        .await?;
    let mut view = state
        .keyring
        .full_view(&regenerated.row)
        .await?
        .with_key(regenerated.secret);
    view.previous_key_valid_until = regenerated.grace_until;
    Ok(Json(view))
}

#[utoipa::path(delete, path = "/api/api-keys/{id}", tag = "keys", params(("id" = i64, Path, description = "The key's id")), responses((status = 204, description = "The key and its call logs are deleted"), (status = 404, description = "No key with that id", body = ErrorBody), (status = 400, description = "Invalid input; `field` names it", body = ErrorBody), (status = 401, description = "No or wrong admin credential", body = ErrorBody), (status = 403, description = "A session request from another site", body = ErrorBody), (status = 429, description = "Too many failed credentials from this address", body = ErrorBody), (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    Extension(by): Extension<Actor>,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, ApiError> {
    state.keyring.delete(id, &by).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StatsQuery {
    /// 1 to 366 (default 30).
    #[param(minimum = 1, maximum = 366)]
    days: Option<i64>,
}

#[utoipa::path(get, path = "/api/api-keys/{id}/stats", tag = "keys", params(("id" = i64, Path, description = "The key's id"), StatsQuery), responses((status = 200, description = "The key's usage over the last `days` UTC days", body = KeyStats), (status = 404, description = "No key with that id", body = ErrorBody), (status = 400, description = "Invalid input; `field` names it", body = ErrorBody), (status = 401, description = "No or wrong admin credential", body = ErrorBody), (status = 403, description = "A session request from another site", body = ErrorBody), (status = 429, description = "Too many failed credentials from this address", body = ErrorBody), (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody)))]
pub(crate) async fn stats(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<StatsQuery>,
) -> Result<Json<KeyStats>, ApiError> {
    let days = query.days.unwrap_or(30);
    if !(1..=366).contains(&days) {
        return Err(ApiError::invalid("days", "must be between 1 and 366"));
    }
    state.keyring.get(id).await?;
    Ok(Json(
        crate::store::logs::stats(&state.pool, id, days, state.clock.now_ms()).await?,
    ))
}

/// A key's logs take the query of `/api/api-logs` (a `key_id` given there is ignored).
#[utoipa::path(get, path = "/api/api-keys/{id}/logs", tag = "logs", params(("id" = i64, Path, description = "The key's id"), LogsQuery), responses((status = 200, description = "A page of the key's call logs, newest first", body = LogListing), (status = 404, description = "No key with that id", body = ErrorBody), (status = 400, description = "Invalid input; `field` names it", body = ErrorBody), (status = 401, description = "No or wrong admin credential", body = ErrorBody), (status = 403, description = "A session request from another site", body = ErrorBody), (status = 429, description = "Too many failed credentials from this address", body = ErrorBody), (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody)))]
pub(crate) async fn logs(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Json<LogListing>, ApiError> {
    state.keyring.get(id).await?;
    super::logs::page_of_logs(&state, Some(id), query).await
}
