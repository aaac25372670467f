//! What an admin sends to create or change an upstream, and its checks: each bad field a 400
//! naming it and what to send. The admin API, the CLI and imports all validate through here.

use std::collections::BTreeMap;

use axum::http::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::spec::{AuthHeader, Kind, UpstreamSpec, DEFAULT_NAME};
use crate::config::StreamUsage;
use crate::error::ApiError;
use crate::key_ops::present;
use crate::policy::{self, ListKind};

/// Longest name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Largest `weight` and `priority`.
pub const MAX_WEIGHT: i64 = 1000;
pub const MAX_PRIORITY: i64 = 1000;
/// Longest `timeout_seconds` (an hour).
pub const MAX_TIMEOUT_SECONDS: i64 = 3600;
/// Most `model_map` and `extra_headers` entries.
pub const MAX_MAP_ENTRIES: usize = 100;
pub const MAX_HEADERS: usize = 20;
const MAX_URL_BYTES: usize = 2048;
const MAX_API_KEY_BYTES: usize = 4096;
const MAX_HEADER_VALUE_BYTES: usize = 1024;

/// `POST /api/upstreams`: an upstream; omitted fields take their defaults.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUpstream {
    /// Unique: letters, digits, `-`, `_`, `.`; not `default` (the built-in upstream's).
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
    #[schema(value_type = Kind)]
    pub kind: String,
    /// `http(s)://host[:port][/path]`, no query or fragment; a trailing `/` is dropped.
    pub base_url: String,
    /// The credential, write-only (never shown again); omitted: none (a local server).
    #[schema(min_length = 1, max_length = 4096)]
    pub api_key: Option<String>,
    /// How the credential is sent; default by kind: `bearer` (openai), `x-api-key` (anthropic).
    #[schema(value_type = Option<AuthHeader>)]
    pub auth_header: Option<String>,
    /// Model names or `prefix*` patterns it serves; empty or omitted: any model.
    pub models: Option<Vec<String>>,
    /// Client model → the model sent to this upstream.
    pub model_map: Option<BTreeMap<String, String>>,
    /// Lower is tried first (default 0).
    #[schema(minimum = 0, maximum = 1000)]
    pub priority: Option<i64>,
    /// Share of the traffic within one priority (default 1; 0: only when the others cannot be used).
    #[schema(minimum = 0, maximum = 1000)]
    pub weight: Option<i64>,
    /// Default true.
    pub enabled: Option<bool>,
    /// Overrides KEYGATE_UPSTREAM_TIMEOUT for this upstream.
    #[schema(minimum = 1, maximum = 3600)]
    pub timeout_seconds: Option<i64>,
    /// Default `inject`.
    #[schema(value_type = Option<StreamUsage>)]
    pub stream_usage: Option<String>,
    /// Headers added to every request sent to it (e.g. `OpenAI-Organization`); never
    /// hop-by-hop ones, `Host`, `Content-Length` or a credential header.
    pub extra_headers: Option<BTreeMap<String, String>>,
}

/// `PATCH /api/upstreams/{id}`: absent fields are unchanged; a given list or map replaces
/// the upstream's.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamPatch {
    #[schema(min_length = 1, max_length = 64)]
    pub name: Option<String>,
    /// Changing the kind also changes `auth_header` if it was the old kind's default.
    #[schema(value_type = Option<Kind>)]
    pub kind: Option<String>,
    pub base_url: Option<String>,
    /// A new credential replaces the stored one; `null` removes it; absent keeps it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 4096)]
    pub api_key: Option<Option<String>>,
    #[schema(value_type = Option<AuthHeader>)]
    pub auth_header: Option<String>,
    pub models: Option<Vec<String>>,
    pub model_map: Option<BTreeMap<String, String>>,
    #[schema(minimum = 0, maximum = 1000)]
    pub priority: Option<i64>,
    #[schema(minimum = 0, maximum = 1000)]
    pub weight: Option<i64>,
    pub enabled: Option<bool>,
    /// `null` removes the override.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 3600)]
    pub timeout_seconds: Option<Option<i64>>,
    #[schema(value_type = Option<StreamUsage>)]
    pub stream_usage: Option<String>,
    pub extra_headers: Option<BTreeMap<String, String>>,
}

/// The upstream `input` describes (id 0, no timestamps yet): every field checked, defaults
/// filled in. A duplicate name is the store's to find (409).
pub fn new_spec(input: &NewUpstream) -> Result<UpstreamSpec, ApiError> {
    let kind = kind(&input.kind)?;
    Ok(UpstreamSpec {
        id: 0,
        name: name(&input.name)?,
        kind,
        base_url: base_url(&input.base_url)?,
        api_key: input.api_key.as_deref().map(api_key).transpose()?,
        auth_header: match &input.auth_header {
            Some(text) => auth_header(text)?,
            None => kind.default_auth_header(),
        },
        models: models(input.models.as_deref().unwrap_or_default())?,
        model_map: model_map(input.model_map.as_ref().unwrap_or(&BTreeMap::new()))?,
        priority: priority(input.priority.unwrap_or(0))?,
        weight: weight(input.weight.unwrap_or(1))?,
        enabled: input.enabled.unwrap_or(true),
        timeout_seconds: input.timeout_seconds.map(timeout_seconds).transpose()?,
        stream_usage: match &input.stream_usage {
            Some(text) => stream_usage(text)?,
            None => StreamUsage::Inject,
        },
        extra_headers: extra_headers(input.extra_headers.as_ref().unwrap_or(&BTreeMap::new()))?,
        created_at: 0,
        updated_at: 0,
    })
}

/// Applies `patch` to `spec`, checking every given field (nothing is changed on an error:
/// the caller drops the copy).
pub fn apply(spec: &mut UpstreamSpec, patch: &UpstreamPatch) -> Result<(), ApiError> {
    if let Some(text) = &patch.name {
        spec.name = name(text)?;
    }
    if let Some(text) = &patch.kind {
        let new = kind(text)?;
        if patch.auth_header.is_none() && spec.auth_header == spec.kind.default_auth_header() {
            spec.auth_header = new.default_auth_header();
        }
        spec.kind = new;
    }
    if let Some(text) = &patch.base_url {
        spec.base_url = base_url(text)?;
    }
    if let Some(given) = &patch.api_key {
        spec.api_key = given.as_deref().map(api_key).transpose()?;
    }
    if let Some(text) = &patch.auth_header {
        spec.auth_header = auth_header(text)?;
    }
    if let Some(list) = &patch.models {
        spec.models = models(list)?;
    }
    if let Some(map) = &patch.model_map {
        spec.model_map = model_map(map)?;
    }
    if let Some(n) = patch.priority {
        spec.priority = priority(n)?;
    }
    if let Some(n) = patch.weight {
        spec.weight = weight(n)?;
    }
    if let Some(enabled) = patch.enabled {
        spec.enabled = enabled;
    }
    if let Some(given) = patch.timeout_seconds {
        spec.timeout_seconds = given.map(timeout_seconds).transpose()?;
    }
    if let Some(text) = &patch.stream_usage {
        spec.stream_usage = stream_usage(text)?;
    }
    if let Some(map) = &patch.extra_headers {
        spec.extra_headers = extra_headers(map)?;
    }
    Ok(())
}

pub fn name(text: &str) -> Result<String, ApiError> {
    let text = text.trim();
    let invalid = |why: &str| {
        ApiError::invalid(
            "name",
            format!("{why}; send 1 to {MAX_NAME_CHARS} letters, digits, `-`, `_` or `.`, e.g. openai-main"),
        )
    };
    if text.is_empty() {
        return Err(invalid("is empty"));
    }
    if text.chars().count() > MAX_NAME_CHARS {
        return Err(invalid("is too long"));
    }
    if !text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(&format!(
            "`{}` has other characters",
            text.escape_debug()
        )));
    }
    if text.chars().all(|c| c.is_ascii_digit()) {
        return Err(invalid("is only digits (it would read as an id)"));
    }
    if text.eq_ignore_ascii_case(DEFAULT_NAME) {
        return Err(ApiError::invalid(
            "name",
            "`default` is the built-in upstream (KEYGATE_UPSTREAM_URL); choose another name",
        ));
    }
    Ok(text.to_string())
}

pub fn kind(text: &str) -> Result<Kind, ApiError> {
    Kind::parse(text.trim()).ok_or_else(|| {
        ApiError::invalid(
            "kind",
            format!(
                "`{}` is not a kind; send openai (any OpenAI-compatible API) or anthropic (the Messages API)",
                text.escape_debug()
            ),
        )
    })
}

pub fn auth_header(text: &str) -> Result<AuthHeader, ApiError> {
    AuthHeader::parse(text.trim()).ok_or_else(|| {
        ApiError::invalid(
            "auth_header",
            format!(
                "`{}` is not one of bearer (Authorization: Bearer), api-key (Azure) or x-api-key (Anthropic)",
                text.escape_debug()
            ),
        )
    })
}

pub fn stream_usage(text: &str) -> Result<StreamUsage, ApiError> {
    StreamUsage::parse(text.trim()).ok_or_else(|| {
        ApiError::invalid(
            "stream_usage",
            format!(
                "`{}` is not one of inject (ask streams for their usage) or off",
                text.trim().escape_debug()
            ),
        )
    })
}

/// An http(s) URL with a host and no query, fragment or user; without its trailing `/`.
pub fn base_url(text: &str) -> Result<String, ApiError> {
    let invalid = |why: String| {
        ApiError::invalid(
            "base_url",
            format!("{why}; send an http:// or https:// URL like https://api.openai.com/v1"),
        )
    };
    let text = text.trim().trim_end_matches('/');
    let shown = || text.escape_debug().to_string();
    if text.is_empty() {
        return Err(invalid("is empty".into()));
    }
    if text.len() > MAX_URL_BYTES {
        return Err(invalid(format!("is longer than {MAX_URL_BYTES} bytes")));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(format!(
            "`{}` contains a space or control character",
            shown()
        )));
    }
    if text.contains('#') {
        return Err(invalid(format!("`{}` has a fragment (`#…`)", shown())));
    }
    let uri: axum::http::Uri = text
        .parse()
        .map_err(|_| invalid(format!("`{}` is not a URL", shown())))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(invalid(format!(
            "`{}` does not start with http:// or https://",
            shown()
        )));
    }
    let Some(authority) = uri.authority() else {
        return Err(invalid(format!("`{}` has no host", shown())));
    };
    if authority.as_str().contains('@') {
        return Err(ApiError::invalid(
            "base_url",
            "holds a user or password; send the URL without it and the credential in api_key",
        ));
    }
    if authority.host().is_empty() {
        return Err(invalid(format!("`{}` has no host", shown())));
    }
    if uri.query().is_some() || text.contains('?') {
        return Err(invalid(format!(
            "`{}` has a query (`?…`): requests keep their own",
            shown()
        )));
    }
    Ok(text.to_string())
}

/// A credential: not empty, printable ASCII (it is sent in a header).
pub fn api_key(text: &str) -> Result<String, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ApiError::invalid(
            "api_key",
            "is empty; send the credential, or leave api_key out for an upstream that takes none",
        ));
    }
    if text.len() > MAX_API_KEY_BYTES {
        return Err(ApiError::invalid(
            "api_key",
            format!("is longer than {MAX_API_KEY_BYTES} bytes"),
        ));
    }
    if !text.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ApiError::invalid(
            "api_key",
            "may hold only printable ASCII without spaces (it is sent in a header)",
        ));
    }
    Ok(text.to_string())
}

/// Model names or `prefix*` patterns, checked like a key's `allowed_models`.
pub fn models(list: &[String]) -> Result<Vec<String>, ApiError> {
    policy::validate(ListKind::Models, list).map_err(|invalid| {
        let field = invalid
            .field
            .replacen(ListKind::Models.field(), "models", 1);
        ApiError::invalid(field, invalid.message)
    })
}

/// Client model → upstream model: both sides non-empty names.
pub fn model_map(map: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ApiError> {
    if map.len() > MAX_MAP_ENTRIES {
        return Err(ApiError::invalid(
            "model_map",
            format!("at most {MAX_MAP_ENTRIES} entries; send fewer"),
        ));
    }
    let name = |text: &str| {
        let text = text.trim();
        (!text.is_empty()
            && text.len() <= policy::MAX_ENTRY_BYTES
            && !text.chars().any(char::is_control))
        .then(|| text.to_string())
    };
    let mut checked = BTreeMap::new();
    for (from, to) in map {
        let shown = from.escape_debug();
        let from = name(from).ok_or_else(|| {
            ApiError::invalid(
                "model_map",
                format!(
                    "the key `{shown}` is not a model name (1 to {} bytes, no control character); send {{\"client-model\": \"upstream-model\"}}",
                    policy::MAX_ENTRY_BYTES
                ),
            )
        })?;
        let to = name(to).ok_or_else(|| {
            ApiError::invalid(
                "model_map",
                format!(
                    "the value of `{shown}` is not a model name (1 to {} bytes, no control character); send the model this upstream knows",
                    policy::MAX_ENTRY_BYTES
                ),
            )
        })?;
        checked.insert(from, to);
    }
    Ok(checked)
}

pub fn priority(n: i64) -> Result<i64, ApiError> {
    if !(0..=MAX_PRIORITY).contains(&n) {
        return Err(ApiError::invalid(
            "priority",
            format!("must be a whole number from 0 to {MAX_PRIORITY} (lower is tried first)"),
        ));
    }
    Ok(n)
}

pub fn weight(n: i64) -> Result<u32, ApiError> {
    u32::try_from(n)
        .ok()
        .filter(|n| i64::from(*n) <= MAX_WEIGHT)
        .ok_or_else(|| {
            ApiError::invalid(
                "weight",
                format!(
                    "must be a whole number from 0 to {MAX_WEIGHT} (its share within one priority)"
                ),
            )
        })
}

pub fn timeout_seconds(n: i64) -> Result<u32, ApiError> {
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_TIMEOUT_SECONDS).contains(&i64::from(*n)))
        .ok_or_else(|| {
            ApiError::invalid(
                "timeout_seconds",
                format!("must be a whole number of seconds from 1 to {MAX_TIMEOUT_SECONDS}, or null for KEYGATE_UPSTREAM_TIMEOUT"),
            )
        })
}

/// Why keygate sends a header itself and an upstream may not add it (None: it may).
fn reserved(name: &str) -> Option<&'static str> {
    Some(match name {
        // Each applies to one connection: keygate manages its own connections to the upstream.
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "te"
        | "trailer" | "upgrade" | "proxy-authenticate" | "proxy-authorization" => {
            "is a hop-by-hop header (it applies to one connection, which keygate manages)"
        }
        "host" => "is set by keygate from base_url",
        "content-length" => "is set by keygate from the body it sends",
        "authorization" | "api-key" | "x-api-key" => {
            "carries a credential: put the credential in api_key and choose the header with auth_header (the credential is then encrypted and never shown)"
        }
        _ => return None,
    })
}

/// Headers by their lowercase name; values visible ASCII.
pub fn extra_headers(map: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ApiError> {
    if map.len() > MAX_HEADERS {
        return Err(ApiError::invalid(
            "extra_headers",
            format!("at most {MAX_HEADERS} headers; send fewer"),
        ));
    }
    let mut checked = BTreeMap::new();
    for (name, value) in map {
        let shown = name.escape_debug();
        let header = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
            ApiError::invalid(
                "extra_headers",
                format!("`{shown}` is not a header name; send names like OpenAI-Organization"),
            )
        })?;
        let lower = header.as_str();
        if let Some(why) = reserved(lower) {
            return Err(ApiError::invalid(
                "extra_headers",
                format!("`{shown}` {why}; leave it out"),
            ));
        }
        let value = value.trim();
        let printable = value.chars().all(|c| c == ' ' || c.is_ascii_graphic());
        if value.is_empty()
            || value.len() > MAX_HEADER_VALUE_BYTES
            || !printable
            || HeaderValue::from_str(value).is_err()
        {
            return Err(ApiError::invalid(
                "extra_headers",
                format!("the value of `{shown}` must be 1 to {MAX_HEADER_VALUE_BYTES} printable ASCII characters"),
            ));
        }
        if checked
            .insert(lower.to_string(), value.to_string())
            .is_some()
        {
            return Err(ApiError::invalid(
                "extra_headers",
                format!("`{shown}` is given twice (header names ignore case)"),
            ));
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(err: ApiError) -> String {
        match err {
            ApiError::Invalid { field, .. } => field,
            other => panic!("not a 400: {other}"),
        }
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            base_url(" https://api.openai.com/v1/ ").unwrap(),
            "https://api.openai.com/v1"
        );
        assert_eq!(
            base_url("http://127.0.0.1:11434").unwrap(),
            "http://127.0.0.1:11434"
        );
        for bad in [
            "",
            "ftp://x/v1",
            "api.openai.com/v1",
            "https://",
            "https://x/v1?a=b",
            "https://x/v1#top",
            "https://user:pw@x/v1",
            "https://x/ v1",
        ] {
            assert_eq!(field(base_url(bad).unwrap_err()), "base_url", "{bad}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(name(" openai-main ").unwrap(), "openai-main");
        for bad in ["", "default", "DEFAULT", "a b", "123", &"x".repeat(65)] {
            assert_eq!(field(name(bad).unwrap_err()), "name", "{bad}");
        }
    }

    #[test]
    fn headers() {
        let map = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        let ok = extra_headers(&map("OpenAI-Organization", "org-1")).unwrap();
        assert_eq!(ok["openai-organization"], "org-1");
        for bad in [
            "Authorization",
            "X-Api-Key",
            "api-key",
            "Host",
            "content-length",
            "Connection",
            "Transfer-Encoding",
            "bad header",
        ] {
            assert!(extra_headers(&map(bad, "v")).is_err(), "{bad}");
        }
        assert!(extra_headers(&map("x-a", "line\nbreak")).is_err());
        assert!(extra_headers(&map("x-a", "")).is_err());
    }

    #[test]
    fn defaults_by_kind() {
        let spec = new_spec(&NewUpstream {
            name: "claude".into(),
            kind: "anthropic".into(),
            base_url: "https://api.anthropic.com".into(),
            ..NewUpstream::default()
        })
        .unwrap();
        assert_eq!(spec.auth_header, AuthHeader::XApiKey);
        assert_eq!((spec.weight, spec.priority, spec.enabled), (1, 0, true));
        assert_eq!(spec.stream_usage, StreamUsage::Inject);
        assert_eq!(spec.api_key, None);
        let mut changed = spec.clone();
        apply(
            &mut changed,
            &UpstreamPatch {
                kind: Some("openai".into()),
                ..UpstreamPatch::default()
            },
        )
        .unwrap();
        assert_eq!(changed.auth_header, AuthHeader::Bearer);
        assert_eq!(field(weight(-1).unwrap_err()), "weight");
        assert_eq!(field(priority(-1).unwrap_err()), "priority");
        assert_eq!(field(timeout_seconds(0).unwrap_err()), "timeout_seconds");
        assert_eq!(field(api_key("  ").unwrap_err()), "api_key");
        assert_eq!(field(models(&["a*b".into()]).unwrap_err()), "models[0]");
    }
}
