//! An upstream as the admin API, the CLI and the console show it: never its credential,
//! only whether it has one and (for a long one) its last 4 characters.

use std::collections::BTreeMap;

use serde::Serialize;

use super::health::Health;
use super::spec::{AuthHeader, Kind, UpstreamSpec, DEFAULT_ID, DEFAULT_NAME};
use crate::clock::ser_opt_ms;
use crate::config::{Config, StreamUsage};

/// Credentials shorter than this get no preview (4 characters of a short secret are too many).
const PREVIEW_MIN_CHARS: usize = 16;

/// One upstream.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct UpstreamView {
    /// 0: the built-in upstream `default`.
    pub id: i64,
    pub name: String,
    /// The built-in upstream (KEYGATE_UPSTREAM_URL): read-only here, tried after every
    /// configured one.
    pub builtin: bool,
    pub kind: Kind,
    pub base_url: String,
    pub auth_header: AuthHeader,
    /// Whether a credential is stored (it is never returned).
    pub has_api_key: bool,
    /// `…` and the credential's last 4 characters (none for a credential under 16 characters).
    pub api_key_preview: Option<String>,
    /// Names or `prefix*` patterns; empty: any model.
    pub models: Vec<String>,
    pub model_map: BTreeMap<String, String>,
    pub priority: i64,
    pub weight: u32,
    pub enabled: bool,
    /// None: KEYGATE_UPSTREAM_TIMEOUT.
    pub timeout_seconds: Option<u32>,
    pub stream_usage: StreamUsage,
    pub extra_headers: BTreeMap<String, String>,
    /// Its live health (in memory).
    pub status: Health,
    /// Keys bound to it (its id in their `upstream_ids`).
    pub bound_keys: i64,
    /// None for the built-in upstream.
    #[serde(serialize_with = "ser_opt_ms")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub created_at: Option<i64>,
    #[serde(serialize_with = "ser_opt_ms")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<i64>,
}

/// `…` and the last 4 characters of a long credential.
fn preview(key: Option<&str>) -> Option<String> {
    let key = key?;
    let count = key.chars().count();
    if count < PREVIEW_MIN_CHARS {
        return None;
    }
    Some(format!(
        "…{}",
        key.chars().skip(count - 4).collect::<String>()
    ))
}

impl UpstreamView {
    pub fn new(spec: &UpstreamSpec, status: Health, bound_keys: i64) -> Self {
        UpstreamView {
            id: spec.id,
            name: spec.name.clone(),
            builtin: false,
            kind: spec.kind,
            base_url: spec.base_url.clone(),
            auth_header: spec.auth_header,
            has_api_key: spec.api_key.is_some(),
            api_key_preview: preview(spec.api_key.as_deref()),
            models: spec.models.clone(),
            model_map: spec.model_map.clone(),
            priority: spec.priority,
            weight: spec.weight,
            enabled: spec.enabled,
            timeout_seconds: spec.timeout_seconds,
            stream_usage: spec.stream_usage,
            extra_headers: spec.extra_headers.clone(),
            status,
            bound_keys,
            created_at: Some(spec.created_at),
            updated_at: Some(spec.updated_at),
        }
    }

    /// The built-in upstream `default`, from the environment.
    pub fn builtin(config: &Config, status: Health, bound_keys: i64) -> Self {
        let base_url = config.upstream_url.to_string();
        UpstreamView {
            id: DEFAULT_ID,
            name: DEFAULT_NAME.into(),
            builtin: true,
            kind: Kind::OpenAi,
            base_url: base_url.trim_end_matches('/').to_string(),
            auth_header: AuthHeader::Bearer,
            has_api_key: config.upstream_api_key.is_some(),
            api_key_preview: preview(config.upstream_api_key.as_deref()),
            models: Vec::new(),
            model_map: BTreeMap::new(),
            priority: 0,
            weight: 1,
            enabled: true,
            timeout_seconds: None,
            stream_usage: config.stream_usage,
            extra_headers: BTreeMap::new(),
            status,
            bound_keys,
            created_at: None,
            updated_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::preview;

    #[test]
    fn previews_only_long_credentials() {
        assert_eq!(preview(None), None);
        assert_eq!(preview(Some("short-secret")), None);
        assert_eq!(
            preview(Some("sk-0123456789abcdefWXYZ")).as_deref(),
            Some("…WXYZ")
        );
    }
}
