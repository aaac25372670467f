//! Which upstreams a request may go to (SPEC §12): its route kind, the key's binding and
//! permissions, the plan of upstreams to try (or the 404 when there is none), and the model
//! list keygate answers itself when several upstreams are configured.

use hyper::header::HeaderMap;
use hyper::Response;

use super::auth::AuthedKey;
use super::record::CallRecord;
use super::{models, Refusal, ReplyBody};
use crate::app::AppState;
use crate::error::ApiError;
use crate::policy::Policy;
use crate::upstreams::registry::{Route, Table};
use crate::upstreams::spec::Kind;

/// The upstreams the key is bound to (empty: any).
fn bound(key: &AuthedKey) -> &[i64] {
    key.policy.as_deref().map_or(&[][..], Policy::upstream_ids)
}

/// The 403 of a key whose `permissions` do not include the route's API.
pub fn permitted(key: &AuthedKey, kind: Kind) -> Result<(), Refusal> {
    if key.policy.as_deref().is_none_or(|p| p.permits(kind)) {
        return Ok(());
    }
    let message = format!(
        "This key may not use the {} API (its permissions); use a key permitted to, or ask the admin to add `{}` to this key's permissions",
        match kind {
            Kind::OpenAi => "OpenAI",
            Kind::Anthropic => "Anthropic Messages",
        },
        kind.as_str()
    );
    Err(Refusal::new(ApiError::Forbidden(message.clone()), message))
}

/// The upstreams to try, in order; a 404 naming the model when none serves it. A model's own
/// path (`/v1/models/{id}`) is routed by that model.
pub fn plan<'t>(
    state: &AppState,
    table: &'t Table,
    kind: Kind,
    key: &AuthedKey,
    path: &str,
    record: &mut CallRecord,
) -> Result<Vec<&'t Route>, Refusal> {
    let bound = bound(key);
    let model = record
        .model
        .as_deref()
        .or_else(|| path.strip_prefix("/v1/models/"));
    let plan = table.plan(
        kind,
        model,
        bound,
        record.timestamp,
        state.upstreams.attempts,
    );
    if !plan.is_empty() {
        return Ok(plan);
    }
    // Not relayed: not the key's use.
    record.authenticated = false;
    let reason = match model {
        Some(model) if !bound.is_empty() => {
            format!("no upstream this key is bound to serves model `{model}`")
        }
        Some(model) => format!("no upstream serves model `{model}`"),
        None => format!("no {} upstream is configured", kind.as_str()),
    };
    let advice = match kind {
        Kind::Anthropic => "add an anthropic upstream (keygate upstreams add --kind anthropic) or use a model one serves",
        Kind::OpenAi => "use a model an upstream serves (GET /v1/models lists them)",
    };
    Err(Refusal::new(
        ApiError::NoRoute(format!("{}; {advice}", capitalized(&reason))),
        reason,
    ))
}

/// `GET /v1/models` with several upstreams: the models the key can reach, in Anthropic's
/// shape when asked with `anthropic-version`.
pub async fn model_list(
    table: &Table,
    key: &AuthedKey,
    headers: &HeaderMap,
    allowed: Option<&Policy>,
    record: &CallRecord,
) -> Response<ReplyBody> {
    let kind = if headers.contains_key("anthropic-version") {
        Kind::Anthropic
    } else {
        Kind::OpenAi
    };
    let reachable = permitted(key, kind).is_ok().then_some(bound(key));
    models::reachable(table, kind, reachable, allowed, record.timestamp).await
}

/// The route kind of a path (SPEC §12): Anthropic's Messages API, or OpenAI's everything else.
pub fn route_kind(path: &str) -> Kind {
    match path {
        "/v1/messages" | "/v1/messages/count_tokens" => Kind::Anthropic,
        _ => Kind::OpenAi,
    }
}

/// `text` with its first letter upper-cased (a reason in the call log, a sentence for the client).
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
