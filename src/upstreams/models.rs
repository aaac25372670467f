//! What models an upstream serves: its configured list, or when that has none (or only
//! `prefix*` patterns) what it answers on `GET /v1/models`, kept 5 minutes; and the probe
//! behind `POST /api/upstreams/{id}/test` and `keygate upstreams test`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::spec::UpstreamSpec;
use crate::relay::upstream::Upstream;

/// How long an upstream's own model list is kept (SPEC §12).
pub const LIST_KEPT_MS: i64 = 5 * 60 * 1000;
/// The largest model list read (OpenAI's is about 10 KB; OpenRouter's a few hundred).
const MAX_LIST_BYTES: usize = 8 << 20;

/// An upstream's model list as it last answered, and when (UTC ms).
#[derive(Default)]
pub struct ListCache(Mutex<Option<(i64, Arc<[String]>)>>);

#[derive(Deserialize)]
struct List {
    data: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    id: String,
}

/// The ids of a model list (OpenAI's `{"object":"list","data":[{"id":…}]}` and Anthropic's
/// `{"data":[{"id":…}],"has_more":…}` alike).
fn ids(body: &[u8]) -> Option<Vec<String>> {
    let list: List = serde_json::from_slice(body).ok()?;
    Some(list.data.into_iter().map(|entry| entry.id).collect())
}

/// The models `spec`'s upstream serves: its listed names when it lists only names, else its
/// answer to `GET /v1/models` (cached) narrowed to its patterns. An upstream that does not
/// answer contributes nothing (and is asked again next time).
pub async fn served(spec: &UpstreamSpec, upstream: &Upstream, now: i64) -> Arc<[String]> {
    if !spec.models.is_empty() && spec.models.iter().all(|m| !m.ends_with('*')) {
        return spec.models.iter().cloned().collect();
    }
    if let Some((at, list)) = upstream
        .models
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        if now.saturating_sub(at) < LIST_KEPT_MS {
            return list;
        }
    }
    let asked = match upstream.get("models", MAX_LIST_BYTES).await {
        Ok((200, body)) => ids(&body),
        Ok((status, _)) => {
            tracing::debug!(upstream = %upstream.name, status, "an upstream's model list was refused");
            None
        }
        Err(error) => {
            tracing::debug!(upstream = %upstream.name, %error, "an upstream's model list could not be read");
            None
        }
    };
    let Some(asked) = asked else {
        return Arc::from([]);
    };
    let list: Arc<[String]> = asked
        .into_iter()
        .filter(|model| spec.serves(Some(model)))
        .collect();
    *upstream.models.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, list.clone()));
    list
}

/// What a probe of an upstream found.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Probe {
    /// Whether it answered its model list with a 2xx.
    pub ok: bool,
    /// Its HTTP status (none when it could not be reached).
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// Models in its answer, when it was a model list.
    pub models: Option<usize>,
    /// Why not, redacted of its credential.
    pub error: Option<String>,
}

/// Asks `upstream` for its model list.
pub async fn probe(upstream: &Upstream) -> Probe {
    let started = Instant::now();
    let answer = upstream.get("models", MAX_LIST_BYTES).await;
    let latency_ms = started.elapsed().as_millis() as u64;
    match answer {
        Ok((status, body)) => {
            let ok = (200..300).contains(&status);
            let error = (!ok).then(|| {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                upstream.redact(&format!("HTTP {status}: {}", text.trim()))
            });
            Probe {
                ok,
                status: Some(status),
                latency_ms,
                models: ids(&body).map(|ids| ids.len()),
                error,
            }
        }
        Err(error) => Probe {
            ok: false,
            status: None,
            latency_ms,
            models: None,
            error: Some(error),
        },
    }
}
