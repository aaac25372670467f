//! `GET /v1/models`: with upstreams configured, keygate's own list of the models the key can
//! reach (SPEC §12), in OpenAI's shape or, asked with `anthropic-version`, Anthropic's; with
//! only the built-in upstream, its list, filtered to a restricted key's models.

use axum::body::Body;
use axum::response::IntoResponse;
use http_body_util::{BodyExt, Limited};
use hyper::header::{self, HeaderValue};
use hyper::Response;
use serde_json::Value;

use super::upstream::RecordedBody;
use super::ReplyBody;
use crate::error::ApiError;
use crate::policy::Policy;
use crate::upstreams::registry::Table;
use crate::upstreams::spec::Kind;

/// The models reachable through the upstreams of `kind` in `table` (those in `bound` when it is
/// not empty; none when it is None: the key may not use `kind`), less those `allowed` forbids, each named once with the first upstream serving
/// it, in the order they are tried.
pub async fn reachable(
    table: &Table,
    kind: Kind,
    bound: Option<&[i64]>,
    allowed: Option<&Policy>,
    now: i64,
) -> Response<ReplyBody> {
    let routes: Vec<_> = match bound {
        None => Vec::new(),
        Some(bound) => table
            .routes
            .iter()
            .filter(|r| r.spec.enabled && r.spec.kind == kind)
            .filter(|r| bound.is_empty() || bound.contains(&r.spec.id))
            .collect(),
    };
    let lists = futures_util::future::join_all(
        routes
            .iter()
            .map(|r| crate::upstreams::models::served(&r.spec, &r.upstream, now)),
    )
    .await;
    let mut seen = std::collections::HashSet::new();
    let mut data = Vec::new();
    for (route, list) in routes.iter().zip(&lists) {
        for model in list.iter() {
            if allowed.is_some_and(|p| p.model(Some(model)).is_err()) || !seen.insert(model) {
                continue;
            }
            data.push(match kind {
                Kind::OpenAi => serde_json::json!({"id": model, "object": "model", "created": 0, "owned_by": &*route.spec.name}),
                Kind::Anthropic => serde_json::json!({"type": "model", "id": model, "display_name": model, "created_at": "1970-01-01T00:00:00Z"}),
            });
        }
    }
    let body = match kind {
        Kind::OpenAi => serde_json::json!({"object": "list", "data": data}),
        Kind::Anthropic => {
            let id = |entry: Option<&Value>| entry.map_or(Value::Null, |e| e["id"].clone());
            serde_json::json!({"data": &data, "has_more": false, "first_id": id(data.first()), "last_id": id(data.last())})
        }
    };
    axum::Json(body).into_response().map(ReplyBody::Local)
}

/// The largest model list read to be filtered (OpenAI's is about 10 KB).
const MAX_LIST_BYTES: usize = 8 << 20;

/// The upstream's answer with, when it is a JSON list of the OpenAI shape
/// (`{"object":"list","data":[{"id":…},…]}`), only the models `allowed` lets the key use.
/// Other answers (errors, encoded bodies, other shapes) pass unchanged. The call record is
/// the upstream body's, as for any relayed answer.
pub async fn filtered(response: Response<RecordedBody>, allowed: &Policy) -> Response<ReplyBody> {
    let (mut parts, body) = response.into_parts();
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if !parts.status.is_success() || encoded {
        return Response::from_parts(parts, ReplyBody::Upstream(body));
    }
    let bytes = match Limited::new(body, MAX_LIST_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            // Too large to filter, or the upstream failed mid-body: never the whole list.
            return ApiError::BadGateway(
                "The upstream's model list could not be read to filter it for this key; try again later"
                    .into(),
            )
            .into_response()
            .map(ReplyBody::Local);
        }
    };
    let body = match filter_list(&bytes, allowed) {
        Some(rewritten) => {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
            Body::from(rewritten)
        }
        None => Body::from(bytes),
    };
    Response::from_parts(parts, ReplyBody::Local(body))
}

/// The list without the models the key may not use; None when `json` is not such a list.
fn filter_list(json: &[u8], allowed: &Policy) -> Option<Vec<u8>> {
    let mut list: Value = serde_json::from_slice(json).ok()?;
    if list.get("object").and_then(Value::as_str) != Some("list") {
        return None;
    }
    let data = list.get_mut("data")?.as_array_mut()?;
    data.retain(|model| {
        model
            .get("id")
            .and_then(Value::as_str)
            .is_some_and(|id| allowed.model(Some(id)).is_ok())
    });
    serde_json::to_vec(&list).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Lists;

    #[test]
    fn keeps_only_allowed_models() {
        let models = vec!["gpt-4o-mini".to_string(), "claude-*".to_string()];
        let policy = Policy::from_lists(&Lists {
            allowed_models: &models,
            ..Lists::default()
        })
        .unwrap()
        .unwrap();
        let upstream = br#"{"object":"list","data":[{"id":"gpt-4o"},{"id":"gpt-4o-mini","object":"model"},{"id":"claude-3"},{"no":"id"}]}"#;
        let out: Value = serde_json::from_slice(&filter_list(upstream, &policy).unwrap()).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"object":"list","data":[{"id":"gpt-4o-mini","object":"model"},{"id":"claude-3"}]})
        );
        assert!(filter_list(br#"{"object":"model","id":"x"}"#, &policy).is_none());
        assert!(filter_list(b"not json", &policy).is_none());
    }
}
