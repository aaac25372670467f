//! `/api/api-keys`: list, create, get, patch, revoke, delete, stats and a key's logs.

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::{page, Listing};
use crate::app::AppState;
use crate::audit::Actor;
use crate::error::{ApiError, ApiJson, ApiQuery};
use crate::key_ops::{CreateKey, KeyPatch, KeyView, RenewExpiring, Renewal, RenewedBatch};
use crate::keys::Status;
use crate::limits::WithLimits;
use crate::store::keys::KeyFilter;
use crate::store::logs::{KeyStats, LogRow};

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

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    search: Option<String>,
    tag: Option<String>,
    page: Option<i64>,
    page_size: Option<i64>,
}

async fn list(
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
    };
    let (rows, total) = state.keyring.list(&filter, page).await?;
    let items = state.keyring.views(&rows).await?;
    Ok(Json(Listing::new(items, page, total)))
}

async fn create(
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

async fn show(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<KeyView>, ApiError> {
    let row = state.keyring.get(id).await?;
    Ok(Json(state.keyring.full_view(&row).await?))
}

async fn update(
    State(state): State<AppState>,
    Extension(by): Extension<Actor>,
    Path(id): Path<i64>,
    ApiJson(WithLimits(patch)): ApiJson<WithLimits<KeyPatch>>,
) -> Result<Json<KeyView>, ApiError> {
    let row = state.keyring.update(id, &patch, &by).await?;
    Ok(Json(state.keyring.full_view(&row).await?))
}

async fn revoke(
    State(state): State<AppState>,
    Extension(by): Extension<Actor>,
    Path(id): Path<i64>,
) -> Result<Json<KeyView>, ApiError> {
    let row = state.keyring.revoke(id, &by).await?;
    Ok(Json(state.keyring.full_view(&row).await?))
}

async fn renew(
    State(state): State<AppState>,
    Extension(by): Extension<Actor>,
    Path(id): Path<i64>,
    ApiJson(renewal): ApiJson<Renewal>,
) -> Result<Json<KeyView>, ApiError> {
    let row = state.keyring.renew(id, &renewal, &by).await?;
    Ok(Json(state.keyring.full_view(&row).await?))
}

async fn renew_expiring(
    State(state): State<AppState>,
    Extension(by): Extension<Actor>,
    ApiJson(request): ApiJson<RenewExpiring>,
) -> Result<Json<RenewedBatch>, ApiError> {
    Ok(Json(state.keyring.renew_expiring(&request, &by).await?))
}

async fn regenerate(
    State(state): State<AppState>,
    Extension(by): Extension<Actor>,
    Path(id): Path<i64>,
) -> Result<Json<KeyView>, ApiError> {
    let (row, secret) = state.keyring.regenerate(id, &by).await?;
    Ok(Json(state.keyring.full_view(&row).await?.with_key(secret)))
}

async fn remove(
    State(state): State<AppState>,
    Extension(by): Extension<Actor>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    state.keyring.delete(id, &by).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct StatsQuery {
    days: Option<i64>,
}

async fn stats(
    State(state): State<AppState>,
    Path(id): Path<i64>,
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

#[derive(Deserialize)]
struct KeyLogsQuery {
    status: Option<String>,
    model: Option<String>,
    page: Option<i64>,
    page_size: Option<i64>,
}

async fn logs(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    ApiQuery(query): ApiQuery<KeyLogsQuery>,
) -> Result<Json<Listing<LogRow>>, ApiError> {
    state.keyring.get(id).await?;
    let page = page(query.page, query.page_size)?;
    super::logs::page_of_logs(&state, Some(id), query.status, query.model, page).await
}
