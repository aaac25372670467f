//! One configured upstream as stored and as the relay uses it: its kind, address, credential
//! (decrypted, never shown), the models it serves and its place in the routing order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::StreamUsage;

/// The id of the built-in upstream `default` (the environment's `KEYGATE_UPSTREAM_URL`): it
/// has no row in `upstreams`; call-log rows it answered carry this id.
pub const DEFAULT_ID: i64 = 0;
/// The built-in upstream's name; no configured upstream may take it.
pub const DEFAULT_NAME: &str = "default";

/// The API an upstream speaks, and the route kind a request is (`POST /v1/messages` and
/// `/v1/messages/count_tokens` are `anthropic`, every other `/v1/*` is `openai`). Also a key's
/// `permissions` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Any OpenAI-compatible API (OpenAI, Azure's v1 API, DeepSeek, vLLM, Ollama, OpenRouter).
    #[serde(rename = "openai")]
    OpenAi,
    /// The Anthropic Messages API and compatible relays.
    Anthropic,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::OpenAi, Kind::Anthropic];

    /// The kind named `text` (exactly as the API writes it).
    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OpenAi => "openai",
            Kind::Anthropic => "anthropic",
        }
    }

    /// The default `auth_header` of an upstream of this kind.
    pub fn default_auth_header(self) -> AuthHeader {
        match self {
            Kind::OpenAi => AuthHeader::Bearer,
            Kind::Anthropic => AuthHeader::XApiKey,
        }
    }
}

/// How the upstream's credential is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum AuthHeader {
    /// `Authorization: Bearer <credential>`.
    #[serde(rename = "bearer")]
    Bearer,
    /// `api-key: <credential>` (Azure OpenAI).
    #[serde(rename = "api-key")]
    ApiKey,
    /// `x-api-key: <credential>` (Anthropic).
    #[serde(rename = "x-api-key")]
    XApiKey,
}

impl AuthHeader {
    pub const ALL: [AuthHeader; 3] = [AuthHeader::Bearer, AuthHeader::ApiKey, AuthHeader::XApiKey];

    /// The way named `text` (exactly as the API writes it).
    pub fn parse(text: &str) -> Option<AuthHeader> {
        AuthHeader::ALL.into_iter().find(|way| way.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthHeader::Bearer => "bearer",
            AuthHeader::ApiKey => "api-key",
            AuthHeader::XApiKey => "x-api-key",
        }
    }
}

/// One upstream, validated, with its credential decrypted (`api_key`: never serialized).
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamSpec {
    pub id: i64,
    /// Unique; never `default`.
    pub name: String,
    pub kind: Kind,
    /// `http(s)://host[:port][/path]`, no query, no trailing `/`. For `openai` like OpenAI's
    /// base URL (`https://api.openai.com/v1`: `/v1/x` goes to `{base_url}/x`); for `anthropic`
    /// like `ANTHROPIC_BASE_URL` (`https://api.anthropic.com`: `/v1/x` goes to
    /// `{base_url}/v1/x`).
    pub base_url: String,
    /// The credential; `None`: sent without one (a local vLLM or Ollama).
    pub api_key: Option<String>,
    pub auth_header: AuthHeader,
    /// Exact names or `prefix*` patterns; empty: any model.
    pub models: Vec<String>,
    /// Client model → the model sent upstream.
    pub model_map: BTreeMap<String, String>,
    /// Lower is tried first.
    pub priority: i64,
    /// Share of the traffic within one priority (0: only when the others of its priority
    /// cannot be used).
    pub weight: u32,
    pub enabled: bool,
    /// Overrides `KEYGATE_UPSTREAM_TIMEOUT` for this upstream.
    pub timeout_seconds: Option<u32>,
    pub stream_usage: StreamUsage,
    /// Added to every request sent to it (e.g. `OpenAI-Organization`).
    pub extra_headers: BTreeMap<String, String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl UpstreamSpec {
    /// The spec of a stored row, its credential decrypted with `fernet`. A row this build
    /// cannot read (edited by hand, or a Fernet key that changed) is an error naming it.
    pub fn from_row(
        row: crate::store::upstreams::UpstreamRow,
        fernet: &fernet::Fernet,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let what =
            |field: &str| format!("upstream `{}` (id {}): stored `{field}`", row.name, row.id);
        let named = |field: &str, text: &str| format!("{}: `{text}` is not known", what(field));
        let kind =
            Kind::parse(&row.kind).ok_or_else(|| anyhow::anyhow!(named("kind", &row.kind)))?;
        let auth_header = AuthHeader::parse(&row.auth_header)
            .ok_or_else(|| anyhow::anyhow!(named("auth_header", &row.auth_header)))?;
        let stream_usage = StreamUsage::parse(&row.stream_usage)
            .ok_or_else(|| anyhow::anyhow!(named("stream_usage", &row.stream_usage)))?;
        let api_key = match &row.encrypted_api_key {
            None => None,
            Some(token) => {
                let plain = fernet.decrypt(token).map_err(|_| {
                    anyhow::anyhow!(
                        "{}: cannot be decrypted with this Fernet key (KEYGATE_FERNET_KEY or the data directory's fernet.key changed?)",
                        what("api_key")
                    )
                })?;
                Some(String::from_utf8(plain).with_context(|| what("api_key"))?)
            }
        };
        Ok(UpstreamSpec {
            kind,
            auth_header,
            stream_usage,
            api_key,
            models: serde_json::from_str(&row.models).with_context(|| what("models"))?,
            model_map: serde_json::from_str(&row.model_map).with_context(|| what("model_map"))?,
            extra_headers: serde_json::from_str(&row.extra_headers)
                .with_context(|| what("extra_headers"))?,
            weight: u32::try_from(row.weight).with_context(|| what("weight"))?,
            timeout_seconds: row
                .timeout_seconds
                .map(u32::try_from)
                .transpose()
                .with_context(|| what("timeout_seconds"))?,
            priority: row.priority,
            enabled: row.enabled,
            created_at: row.created_at,
            updated_at: row.updated_at,
            base_url: row.base_url,
            id: row.id,
            name: row.name,
        })
    }
}

impl UpstreamSpec {
    /// Whether it serves `model`: any model when its list is empty, else a listed name or a
    /// `prefix*` pattern. A request without a model is routed by its route kind alone.
    pub fn serves(&self, model: Option<&str>) -> bool {
        let Some(model) = model else { return true };
        self.models.is_empty()
            || self
                .models
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => model.starts_with(prefix),
                    None => pattern == model,
                })
    }

    /// The model to send upstream for the client's `model`, when `model_map` renames it.
    pub fn mapped(&self, model: Option<&str>) -> Option<&str> {
        model
            .and_then(|m| self.model_map.get(m))
            .map(String::as_str)
    }
}
