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
