//! The JSON admin API under `/api`: every route needs the admin token or a console session,
//! except login.

pub mod audit;
pub mod auth;
pub mod keys;
pub mod logs;
pub mod openapi;
pub mod throttle;
pub mod upstreams;

use axum::middleware;
use axum::Router;
use serde::Serialize;

use crate::app::AppState;
use crate::error::ApiError;
use crate::store::Page;

pub fn router(state: &AppState) -> Router<AppState> {
    let protected = Router::new()
        .merge(keys::router())
        .merge(audit::router())
        .merge(logs::router())
        .merge(upstreams::router())
        .merge(auth::session_router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ));
    let public =
        auth::public_router().route("/openapi.json", axum::routing::get(openapi::document));
    Router::new().nest("/api", protected.merge(public))
}

/// Validates the `page` (default 1) and `page_size` (default 50, at most 200) parameters.
pub fn page(page: Option<i64>, page_size: Option<i64>) -> Result<Page, ApiError> {
    let page = page.unwrap_or(1);
    let page_size = page_size.unwrap_or(50);
    if page < 1 {
        return Err(ApiError::invalid("page", "must be 1 or more"));
    }
    if !(1..=200).contains(&page_size) {
        return Err(ApiError::invalid("page_size", "must be between 1 and 200"));
    }
    let page = Page { page, page_size };
    if page.checked_offset().is_none() {
        return Err(ApiError::invalid(
            "page",
            format!(
                "is too large: page × page_size must stay below {}",
                i64::MAX
            ),
        ));
    }
    Ok(page)
}

/// A page of a list: `{items, page, page_size, total}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub page: i64,
    pub page_size: i64,
    pub total: i64,
}

impl<T> Listing<T> {
    pub fn new(items: Vec<T>, page: Page, total: i64) -> Self {
        Listing {
            items,
            page: page.page,
            page_size: page.page_size,
            total,
        }
    }
}
