//! The admin API's OpenAPI 3.1 description, generated from its handlers' annotations and its
//! request and answer types, served at `GET /api/openapi.json` (public: it holds no secret).

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::{Modify, OpenApi, PartialSchema};

use super::{audit, auth, keys, logs, upstreams};
use crate::limits::LimitsPatch;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "keygate admin API",
        description = "Keys, their expiry, restrictions and limits, stats and call logs; the upstreams requests are relayed to. Every operation but login needs `Authorization: Bearer <KEYGATE_ADMIN_TOKEN>` or the console's session cookie. Times are RFC 3339 UTC; costs are USD."
    ),
    paths(
        keys::list,
        keys::create,
        keys::show,
        keys::update,
        keys::remove,
        keys::revoke,
        keys::renew,
        keys::renew_expiring,
        keys::regenerate,
        keys::stats,
        keys::logs,
        logs::list,
        upstreams::list,
        upstreams::create,
        upstreams::show,
        upstreams::update,
        upstreams::remove,
        upstreams::test,
        audit::list,
        auth::login,
        auth::logout,
    ),
    modifiers(&Credentials, &LimitFields),
    security(("admin_token" = []), ("session" = [])),
    tags(
        (name = "keys", description = "API keys: create, change, renew, revoke, regenerate, delete, stats"),
        (name = "upstreams", description = "Where requests are relayed: the built-in upstream and those configured at run time"),
        (name = "logs", description = "Call logs, one row per relayed request"),
        (name = "audit", description = "Every admin change: who, how, from where, what changed"),
        (name = "auth", description = "The console's session"),
    )
)]
pub struct ApiDoc;

/// The two ways to authenticate: the admin token as a bearer, or the session cookie.
struct Credentials;

impl Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("KEYGATE_ADMIN_TOKEN"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("keygate_session"))),
        );
    }
}

/// The limit fields are read beside a create's or PATCH's own (`limits::WithLimits`): their
/// schemas get `LimitsPatch`'s properties, declared once with the limits.
struct LimitFields;

impl Modify for LimitFields {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let RefOr::T(Schema::Object(limits)) = LimitsPatch::schema() else {
            return;
        };
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        for name in ["CreateKey", "KeyPatch"] {
            if let Some(RefOr::T(Schema::Object(request))) = components.schemas.get_mut(name) {
                for (field, schema) in &limits.properties {
                    request.properties.insert(field.clone(), schema.clone());
                }
            }
        }
    }
}

/// `GET /api/openapi.json`.
pub async fn document() -> impl IntoResponse {
    let json = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".into());
    ([(header::CONTENT_TYPE, "application/json")], json)
}
