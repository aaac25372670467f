//! `/api/upstreams`: list (with live status), create, show, change, delete (SPEC §12). Every
//! change is stored, audited, and then loaded by the relay for the next request.

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::audit::Actor;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::store;
use crate::upstreams::form::{NewUpstream, UpstreamPatch};
use crate::upstreams::models::Probe;
use crate::upstreams::ops;
use crate::upstreams::spec::{UpstreamSpec, DEFAULT_ID};
use crate::upstreams::view::UpstreamView;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/upstreams", get(list).post(create))
        .route("/upstreams/{id}", get(show).patch(update).delete(remove))
        .route("/upstreams/{id}/test", axum::routing::post(test))
}

/// Every upstream: the built-in `default` first, then the configured ones by id.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UpstreamList {
    pub items: Vec<UpstreamView>,
}

/// What a delete did.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeletedUpstream {
    pub id: i64,
    pub name: String,
    /// Keys it was taken out of (`force=true`).
    pub unbound_key_ids: Vec<i64>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeleteQuery {
    /// true: also take it out of the keys bound to it (else their binding is a 409).
    force: Option<bool>,
}

/// Loads the stored upstreams into the relay after a change.
async fn reload(state: &AppState) -> Result<(), ApiError> {
    state.upstreams.reload().await.map_err(|err| {
        tracing::error!(
            error = format!("{err:#}"),
            "the upstreams could not be reloaded after a change"
        );
        ApiError::Failed(
            "The change is stored, but the relay could not load the upstreams (the server log says why); it keeps the previous ones and tries again every second"
                .into(),
        )
    })
}

async fn view(state: &AppState, spec: &UpstreamSpec) -> Result<UpstreamView, ApiError> {
    let bound = store::upstreams::bound_keys(&state.pool, spec.id).await?;
    Ok(UpstreamView::new(
        spec,
        state.upstreams.health(spec.id),
        bound.len() as i64,
    ))
}

#[utoipa::path(get, path = "/api/upstreams", tag = "upstreams", responses((status = 200, description = "Every upstream, the built-in `default` first", body = UpstreamList), (status = 401, description = "No or wrong admin credential", body = ErrorBody), (status = 403, description = "A session request from another site", body = ErrorBody), (status = 429, description = "Too many failed credentials from this address", body = ErrorBody), (status = 500, description = "A stored upstream cannot be read (the server log says why)", body = ErrorBody), (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody)))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<UpstreamList>, ApiError> {
    let specs = ops::list(&state.keyring).await?;
    let bound = store::upstreams::bound_key_counts(&state.pool).await?;
    let count = |id: i64| bound.get(&id).copied().unwrap_or(0);
    let mut items = Vec::with_capacity(specs.len() + 1);
    items.push(UpstreamView::builtin(
        &state.config,
        state.upstreams.health(DEFAULT_ID),
        count(DEFAULT_ID),
    ));
    for spec in &specs {
        items.push(UpstreamView::new(
            spec,
            state.upstreams.health(spec.id),
            count(spec.id),
        ));
    }
    Ok(Json(UpstreamList { items }))
}

#[utoipa::path(post, path = "/api/upstreams", tag = "upstreams", request_body = NewUpstream, responses((status = 201, description = "The upstream (its credential is never returned)", body = UpstreamView), (status = 400, description = "Invalid input; `field` names it", body = ErrorBody), (status = 409, description = "An upstream with that name exists", body = ErrorBody), (status = 401, description = "No or wrong admin credential", body = ErrorBody), (status = 403, description = "A session request from another site", body = ErrorBody), (status = 429, description = "Too many failed credentials from this address", body = ErrorBody), (status = 500, description = "Stored, but the relay could not load it", body = ErrorBody), (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody)))]
pub(crate) async fn create(
    State(state): State<AppState>,
    Extension(by): Extension<Actor>,
    ApiJson(input): ApiJson<NewUpstream>,
) -> Result<impl IntoResponse, ApiError> {
    let spec = ops::create(&state.keyring, &input, &by).await?;
    reload(&state).await?;
    Ok((StatusCode::CREATED, Json(view(&state, &spec).await?)))
}

#[utoipa::path(get, path = "/api/upstreams/{id}", tag = "upstreams", params(("id" = i64, Path, description = "The upstream's id (0: the built-in `default`)")), responses((status = 200, description = "The upstream", body = UpstreamView), (status = 404, description = "No upstream with that id", body = ErrorBody), (status = 400, description = "Invalid input; `field` names it", body = ErrorBody), (status = 401, description = "No or wrong admin credential", body = ErrorBody), (status = 403, description = "A session request from another site", body = ErrorBody), (status = 429, description = "Too many failed credentials from this address", body = ErrorBody), (status = 500, description = "The stored upstream cannot be read (the server log says why)", body = ErrorBody), (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody)))]
pub(crate) async fn show(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<UpstreamView>, ApiError> {
    if id == DEFAULT_ID {
        let bound = store::upstreams::bound_keys(&state.pool, id).await?;
        return Ok(Json(UpstreamView::builtin(
            &state.config,
            state.upstreams.health(id),
            bound.len() as i64,
        )));
    }
    let spec = ops::get(&state.keyring, id).await?;
    Ok(Json(view(&state, &spec).await?))
}

#[utoipa::path(patch, path = "/api/upstreams/{id}", tag = "upstreams", params(("id" = i64, Path, description = "The upstream's id")), request_body = UpstreamPatch, responses((status = 200, description = "The changed upstream", body = UpstreamView), (status = 404, description = "No upstream with that id", body = ErrorBody), (status = 409, description = "The name is taken, or the id is the built-in upstream's (0)", body = ErrorBody), (status = 400, description = "Invalid input; `field` names it", body = ErrorBody), (status = 401, description = "No or wrong admin credential", body = ErrorBody), (status = 403, description = "A session request from another site", body = ErrorBody), (status = 429, description = "Too many failed credentials from this address", body = ErrorBody), (status = 500, description = "Stored, but the relay could not load it", body = ErrorBody), (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody)))]
pub(crate) async fn update(
    State(state): State<AppState>,
    Extension(by): Extension<Actor>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(patch): ApiJson<UpstreamPatch>,
) -> Result<Json<UpstreamView>, ApiError> {
    let spec = ops::update(&state.keyring, id, &patch, &by).await?;
    reload(&state).await?;
    Ok(Json(view(&state, &spec).await?))
}

#[utoipa::path(delete, path = "/api/upstreams/{id}", tag = "upstreams", params(("id" = i64, Path, description = "The upstream's id"), DeleteQuery), responses((status = 200, description = "Deleted (and taken out of the keys bound to it, with force)", body = DeletedUpstream), (status = 404, description = "No upstream with that id", body = ErrorBody), (status = 409, description = "Keys are bound to it (pass force=true), or the id is the built-in upstream's (0)", body = ErrorBody), (status = 400, description = "Invalid input; `field` names it", body = ErrorBody), (status = 401, description = "No or wrong admin credential", body = ErrorBody), (status = 403, description = "A session request from another site", body = ErrorBody), (status = 429, description = "Too many failed credentials from this address", body = ErrorBody), (status = 500, description = "Deleted, but the relay could not load the rest", body = ErrorBody), (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    Extension(by): Extension<Actor>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<DeleteQuery>,
) -> Result<Json<DeletedUpstream>, ApiError> {
    let deleted = ops::delete(&state.keyring, id, query.force.unwrap_or(false), &by).await?;
    reload(&state).await?;
    Ok(Json(DeletedUpstream {
        id: deleted.id,
        name: deleted.name,
        unbound_key_ids: deleted.unbound_key_ids,
    }))
}

#[utoipa::path(post, path = "/api/upstreams/{id}/test", tag = "upstreams", params(("id" = i64, Path, description = "The upstream's id (0: the built-in `default`)")), responses((status = 200, description = "What asking its model list found: whether it answered, its status, the latency, how many models", body = Probe), (status = 404, description = "No upstream with that id", body = ErrorBody), (status = 400, description = "Invalid input; `field` names it", body = ErrorBody), (status = 401, description = "No or wrong admin credential", body = ErrorBody), (status = 403, description = "A session request from another site", body = ErrorBody), (status = 429, description = "Too many failed credentials from this address", body = ErrorBody), (status = 503, description = "The database is busy or full; retry after Retry-After", body = ErrorBody)))]
pub(crate) async fn test(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Probe>, ApiError> {
    let table = state.upstreams.table();
    let route = table.route(id).ok_or(ApiError::NotFound("upstream"))?;
    Ok(Json(crate::upstreams::models::probe(&route.upstream).await))
}
