//! A key's restrictions as a pure value with pure checks: the models, clients (User-Agent),
//! IP addresses and endpoints it may use, each list parsed and validated once.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::upstreams::spec::Kind;

/// Most entries a list may hold.
pub const MAX_ENTRIES: usize = 100;
/// Longest entry, in bytes (below the 256 bytes a call record keeps of a model name, so a
/// name cut there never equals an entry).
pub const MAX_ENTRY_BYTES: usize = 200;
/// Patterns named in a refusal's message; the rest are counted.
const SHOWN_PATTERNS: usize = 10;

/// A list of texts stored as a JSON array in one TEXT column (`[]` when empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TextList(pub Vec<String>);

impl TextList {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The stored form: a JSON array.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "[]".into())
    }
}

impl TryFrom<String> for TextList {
    type Error = serde_json::Error;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        serde_json::from_str(&text).map(TextList)
    }
}

/// A list of numbers (a key's `upstream_ids`) stored as a JSON array in one TEXT column.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdList(pub Vec<i64>);

/// A list of route kinds (a key's `permissions`) stored as a JSON array in one TEXT column.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KindList(pub Vec<Kind>);

macro_rules! json_list {
    ($list:ty) => {
        impl $list {
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }

            /// The stored form: a JSON array.
            pub fn to_json(&self) -> String {
                serde_json::to_string(&self.0).unwrap_or_else(|_| "[]".into())
            }
        }

        impl TryFrom<String> for $list {
            type Error = serde_json::Error;

            fn try_from(text: String) -> Result<Self, Self::Error> {
                serde_json::from_str(&text).map(Self)
            }
        }
    };
}
json_list!(IdList);
json_list!(KindList);

/// The lists a key is restricted by, as stored and shown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lists<'a> {
    pub allowed_models: &'a [String],
    pub allowed_clients: &'a [String],
    pub allowed_ips: &'a [String],
    pub allowed_endpoints: &'a [String],
    /// The upstreams it may be relayed to; empty: any.
    pub upstream_ids: &'a [i64],
    /// The route kinds it may use; empty: any.
    pub permissions: &'a [Kind],
}

/// What each list holds; names the field in errors and the thing in refusals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    Models,
    Clients,
    Ips,
    Endpoints,
    Tags,
}

impl ListKind {
    pub fn field(self) -> &'static str {
        match self {
            ListKind::Models => "allowed_models",
            ListKind::Clients => "allowed_clients",
            ListKind::Ips => "allowed_ips",
            ListKind::Endpoints => "allowed_endpoints",
            ListKind::Tags => "tags",
        }
    }

    fn what(self) -> &'static str {
        match self {
            ListKind::Models => "a model name like gpt-4o-mini, or a prefix pattern like claude-*",
            ListKind::Clients => {
                "a User-Agent like my-app/1.0, or a prefix pattern like OpenAI/Python*"
            }
            ListKind::Ips => "an IP address like 203.0.113.7, or a CIDR like 10.0.0.0/8",
            ListKind::Endpoints => {
                "a path under /v1/ like /v1/chat/completions, or a prefix pattern like /v1/audio/*"
            }
            ListKind::Tags => "a label like team-a",
        }
    }
}

/// A list entry that cannot be used: the field (`allowed_ips[2]`) and what to send instead.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

/// Checks a list as given (by the admin API, the CLI or an import file): entries trimmed,
/// empty or repeated ones dropped, each one checked. Returns the list to store.
pub fn validate(kind: ListKind, entries: &[String]) -> Result<Vec<String>, Invalid> {
    let field = kind.field();
    let mut kept: Vec<String> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let invalid = |why: String| Invalid {
            field: format!("{field}[{i}]"),
            message: format!("{why}; send {}", kind.what()),
        };
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        if entry.len() > MAX_ENTRY_BYTES {
            return Err(invalid(format!("longer than {MAX_ENTRY_BYTES} bytes")));
        }
        if entry.chars().any(char::is_control) {
            return Err(invalid("contains a control character".into()));
        }
        let star = entry.find('*');
        if kind != ListKind::Tags && star.is_some_and(|at| at + 1 != entry.len()) {
            return Err(invalid(format!(
                "`{entry}`: `*` may only end a pattern (a prefix)"
            )));
        }
        match kind {
            ListKind::Ips => {
                parse_net(entry)
                    .ok_or_else(|| invalid(format!("`{entry}` is not an IP address or a CIDR")))?;
            }
            ListKind::Endpoints if !entry.starts_with("/v1/") => {
                return Err(invalid(format!("`{entry}` does not start with /v1/")));
            }
            ListKind::Tags if entry.contains(',') => {
                return Err(invalid(format!("`{entry}` contains a comma")));
            }
            _ => {}
        }
        let entry = if kind == ListKind::Ips {
            parse_net(entry).map_or_else(|| entry.to_string(), |net| show_net(net, entry))
        } else {
            entry.to_string()
        };
        if !kept.contains(&entry) {
            kept.push(entry);
        }
    }
    if kept.len() > MAX_ENTRIES {
        return Err(Invalid {
            field: field.into(),
            message: format!("at most {MAX_ENTRIES} entries; send fewer"),
        });
    }
    Ok(kept)
}

/// Checks a key's `permissions` as given: each `openai` or `anthropic` (repeats dropped).
pub fn validate_permissions(entries: &[String]) -> Result<Vec<Kind>, Invalid> {
    let mut kept = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let kind = Kind::parse(entry.trim()).ok_or_else(|| Invalid {
            field: format!("permissions[{i}]"),
            message: format!(
                "`{}` is not a permission; send openai (the OpenAI-compatible routes) or anthropic (/v1/messages)",
                entry.escape_debug()
            ),
        })?;
        if !kept.contains(&kind) {
            kept.push(kind);
        }
    }
    Ok(kept)
}

/// Checks a key's `upstream_ids` as given: each the id of an upstream in `known` (or 0, the
/// built-in `default`); repeats dropped.
pub fn validate_upstream_ids(ids: &[i64], known: &[i64]) -> Result<Vec<i64>, Invalid> {
    let mut kept = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        if *id != crate::upstreams::spec::DEFAULT_ID && !known.contains(id) {
            return Err(Invalid {
                field: format!("upstream_ids[{i}]"),
                message: format!(
                    "no upstream has id {id}; send ids from GET /api/upstreams (`keygate upstreams list`), or [] for any upstream"
                ),
            });
        }
        if !kept.contains(id) {
            kept.push(*id);
        }
    }
    if kept.len() > MAX_ENTRIES {
        return Err(Invalid {
            field: "upstream_ids".into(),
            message: format!("at most {MAX_ENTRIES} entries; send fewer"),
        });
    }
    Ok(kept)
}

/// An IP address (a network of one) or a CIDR; IPv4-mapped IPv6 counts as IPv4.
fn parse_net(text: &str) -> Option<IpNet> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(IpNet::from(ip.to_canonical()));
    }
    let net: IpNet = text.parse().ok()?;
    Some(net.trunc())
}

/// The stored form of a network: an address as given, a CIDR with its host bits cleared.
fn show_net(net: IpNet, given: &str) -> String {
    if given.contains('/') {
        net.to_string()
    } else {
        net.addr().to_string()
    }
}

/// Exact texts and prefixes (`prefix*`), matched case-sensitively or not.
#[derive(Clone, Debug, Default)]
struct Patterns {
    exact: Vec<String>,
    prefixes: Vec<String>,
    /// The patterns as a refusal names them.
    shown: String,
    ignore_case: bool,
}

impl Patterns {
    fn new(entries: &[String], ignore_case: bool) -> Patterns {
        let mut patterns = Patterns {
            shown: shown(entries),
            ignore_case,
            ..Patterns::default()
        };
        for entry in entries {
            let entry = if ignore_case {
                entry.to_ascii_lowercase()
            } else {
                entry.clone()
            };
            match entry.strip_suffix('*') {
                Some(prefix) => patterns.prefixes.push(prefix.to_string()),
                None => patterns.exact.push(entry),
            }
        }
        patterns
    }

    fn is_open(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    fn matches(&self, text: &str) -> bool {
        if self.ignore_case {
            self.exact.iter().any(|e| e.eq_ignore_ascii_case(text))
                || self.prefixes.iter().any(|p| {
                    text.get(..p.len())
                        .is_some_and(|head| head.eq_ignore_ascii_case(p))
                })
        } else {
            self.exact.iter().any(|e| e == text)
                || self.prefixes.iter().any(|p| text.starts_with(p.as_str()))
        }
    }
}

fn shown(entries: &[String]) -> String {
    let mut text = entries
        .iter()
        .take(SHOWN_PATTERNS)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if entries.len() > SHOWN_PATTERNS {
        text.push_str(&format!(" and {} more", entries.len() - SHOWN_PATTERNS));
    }
    text
}

/// What a key may use, parsed once (when the key is loaded), checked per request without
/// allocating unless the request is refused.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    models: Patterns,
    clients: Patterns,
    ips: Vec<IpNet>,
    ips_shown: String,
    endpoints: Patterns,
    upstream_ids: Vec<i64>,
    permissions: Vec<Kind>,
}

/// Why a request was refused: what was asked for and what is allowed (the 403's message and
/// its call-log row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub kind: ListKind,
    /// The refused value (None: the request did not say, e.g. no User-Agent).
    pub value: Option<String>,
    pub allowed: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (thing, missing) = match self.kind {
            ListKind::Models => (
                "model",
                "a request that does not name one model (one JSON `model` field)",
            ),
            ListKind::Clients => ("client", "a request without a User-Agent"),
            ListKind::Ips => ("IP address", "a request from an unknown address"),
            ListKind::Endpoints => ("endpoint", "this endpoint"),
            ListKind::Tags => ("tag", "this tag"),
        };
        match &self.value {
            Some(value) => write!(f, "{thing} {value} is not allowed for this key")?,
            None => write!(f, "{missing} is not allowed for this key")?,
        }
        write!(f, "; allowed: {}", self.allowed)
    }
}

impl Policy {
    /// The policy of a key's stored lists; None when the key has no restriction (the relay
    /// then pays one branch). Entries were validated when stored; one that does not parse
    /// anyway (a database edited by hand) is an error, so a key is never less restricted
    /// than it says.
    pub fn from_lists(lists: &Lists<'_>) -> Result<Option<Policy>, Invalid> {
        if lists.allowed_models.is_empty()
            && lists.allowed_clients.is_empty()
            && lists.allowed_ips.is_empty()
            && lists.allowed_endpoints.is_empty()
            && lists.upstream_ids.is_empty()
            && lists.permissions.is_empty()
        {
            return Ok(None);
        }
        let mut ips = Vec::with_capacity(lists.allowed_ips.len());
        for (i, entry) in lists.allowed_ips.iter().enumerate() {
            ips.push(parse_net(entry.trim()).ok_or_else(|| Invalid {
                field: format!("allowed_ips[{i}]"),
                message: format!("`{entry}` is not an IP address or a CIDR"),
            })?);
        }
        Ok(Some(Policy {
            models: Patterns::new(lists.allowed_models, false),
            clients: Patterns::new(lists.allowed_clients, true),
            ips_shown: shown(lists.allowed_ips),
            ips,
            endpoints: Patterns::new(lists.allowed_endpoints, false),
            upstream_ids: lists.upstream_ids.to_vec(),
            permissions: lists.permissions.to_vec(),
        }))
    }

    /// The upstreams the key is bound to; empty: any.
    pub fn upstream_ids(&self) -> &[i64] {
        &self.upstream_ids
    }

    /// The key may use routes of `kind` (true when its `permissions` are empty).
    pub fn permits(&self, kind: Kind) -> bool {
        self.permissions.is_empty() || self.permissions.contains(&kind)
    }

    pub fn restricts_models(&self) -> bool {
        !self.models.is_open()
    }

    /// `model` may be used (None: the request names none).
    pub fn model(&self, model: Option<&str>) -> Result<(), Refused> {
        check(&self.models, ListKind::Models, model)
    }

    /// A client with this User-Agent may use the key.
    pub fn client(&self, user_agent: Option<&str>) -> Result<(), Refused> {
        check(&self.clients, ListKind::Clients, user_agent)
    }

    pub fn ip(&self, ip: Option<IpAddr>) -> Result<(), Refused> {
        if self.ips.is_empty() {
            return Ok(());
        }
        let ip = ip.map(|ip| ip.to_canonical());
        if ip.is_some_and(|ip| self.ips.iter().any(|net| net.contains(&ip))) {
            return Ok(());
        }
        Err(Refused {
            kind: ListKind::Ips,
            value: ip.map(|ip| ip.to_string()),
            allowed: self.ips_shown.clone(),
        })
    }

    /// `path` (without its query) may be requested.
    pub fn endpoint(&self, path: &str) -> Result<(), Refused> {
        check(&self.endpoints, ListKind::Endpoints, Some(path))
    }
}

fn check(patterns: &Patterns, kind: ListKind, value: Option<&str>) -> Result<(), Refused> {
    if patterns.is_open() || value.is_some_and(|v| patterns.matches(v)) {
        return Ok(());
    }
    Err(Refused {
        kind,
        value: value.map(|v| {
            let mut v = v.to_string();
            crate::relay::record::cap(&mut v, MAX_ENTRY_BYTES);
            v
        }),
        allowed: patterns.shown.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn policy(models: &[&str], clients: &[&str], ips: &[&str], endpoints: &[&str]) -> Policy {
        let (m, c, i, e) = (list(models), list(clients), list(ips), list(endpoints));
        Policy::from_lists(&Lists {
            allowed_models: &m,
            allowed_clients: &c,
            allowed_ips: &i,
            allowed_endpoints: &e,
            ..Lists::default()
        })
        .unwrap()
        .unwrap()
    }

    #[test]
    fn no_lists_no_policy() {
        assert!(Policy::from_lists(&Lists::default()).unwrap().is_none());
    }

    #[test]
    fn a_binding_alone_makes_a_policy() {
        let bound = Policy::from_lists(&Lists {
            upstream_ids: &[3, 5],
            ..Lists::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(bound.upstream_ids(), [3, 5]);
        assert!(bound.permits(Kind::Anthropic) && bound.permits(Kind::OpenAi));
        assert!(bound.model(Some("any")).is_ok() && !bound.restricts_models());
        let allowed = Policy::from_lists(&Lists {
            permissions: &[Kind::Anthropic],
            ..Lists::default()
        })
        .unwrap()
        .unwrap();
        assert!(allowed.permits(Kind::Anthropic));
        assert!(!allowed.permits(Kind::OpenAi));
        assert!(allowed.upstream_ids().is_empty());
        assert!(allowed.client(None).is_ok() && allowed.ip(None).is_ok());
    }

    #[test]
    fn models_exact_and_prefix() {
        let p = policy(&["gpt-4o-mini", "claude-*"], &[], &[], &[]);
        assert!(p.model(Some("gpt-4o-mini")).is_ok());
        assert!(p.model(Some("claude-3-opus")).is_ok());
        assert!(p.model(Some("claude-")).is_ok());
        let refused = p.model(Some("gpt-4o")).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "model gpt-4o is not allowed for this key; allowed: gpt-4o-mini, claude-*"
        );
        assert!(
            p.model(Some("GPT-4O-MINI")).is_err(),
            "models are case-sensitive"
        );
        assert!(p.model(Some("claud")).is_err());
        assert_eq!(
            p.model(None).unwrap_err().to_string(),
            "a request that does not name one model (one JSON `model` field) is not allowed for this key; allowed: gpt-4o-mini, claude-*"
        );
        // Other lists are open.
        assert!(p.client(None).is_ok());
        assert!(p.ip(None).is_ok());
        assert!(p.endpoint("/v1/anything").is_ok());
    }

    #[test]
    fn clients_ignore_case() {
        let p = policy(&[], &["my-app/1.0", "OpenAI/Python*"], &[], &[]);
        assert!(p.client(Some("MY-APP/1.0")).is_ok());
        assert!(p.client(Some("openai/python 1.50.0")).is_ok());
        assert!(p.client(Some("my-app/1.01")).is_err());
        assert!(p.client(Some("curl/8")).is_err());
        assert!(p.client(None).is_err());
        // A multi-byte User-Agent shorter or longer than a prefix never panics.
        assert!(p.client(Some("é")).is_err());
        assert!(p.client(Some("OpenAI/Pythoné")).is_ok());
        assert!(p.client(Some("OpenAI/Pytéon")).is_err());
    }

    #[test]
    fn ips_and_cidrs() {
        let p = policy(
            &[],
            &[],
            &["203.0.113.7", "10.0.0.0/8", "2001:db8::/32"],
            &[],
        );
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(p.ip(ip("203.0.113.7")).is_ok());
        assert!(p.ip(ip("::ffff:203.0.113.7")).is_ok());
        assert!(p.ip(ip("10.255.255.255")).is_ok());
        assert!(p.ip(ip("2001:db8::1")).is_ok());
        assert!(p.ip(ip("11.0.0.0")).is_err());
        assert!(p.ip(ip("203.0.113.8")).is_err());
        assert_eq!(
            p.ip(ip("192.0.2.1")).unwrap_err().to_string(),
            "IP address 192.0.2.1 is not allowed for this key; allowed: 203.0.113.7, 10.0.0.0/8, 2001:db8::/32"
        );
        assert!(p.ip(None).is_err());
    }

    #[test]
    fn endpoints() {
        let p = policy(&[], &[], &[], &["/v1/chat/completions", "/v1/audio/*"]);
        assert!(p.endpoint("/v1/chat/completions").is_ok());
        assert!(p.endpoint("/v1/audio/speech").is_ok());
        assert!(p.endpoint("/v1/chat/completions/x").is_err());
        assert!(p.endpoint("/v1/embeddings").is_err());
    }

    #[test]
    fn validation_names_the_entry() {
        let err = validate(ListKind::Ips, &list(&["10.0.0.1", "", "nope"])).unwrap_err();
        assert_eq!(err.field, "allowed_ips[2]");
        assert!(
            err.message
                .contains("`nope` is not an IP address or a CIDR"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("send an IP address"),
            "{}",
            err.message
        );
        let err = validate(ListKind::Models, &list(&["a*b"])).unwrap_err();
        assert_eq!(err.field, "allowed_models[0]");
        let err = validate(ListKind::Endpoints, &list(&["/v2/x"])).unwrap_err();
        assert_eq!(err.field, "allowed_endpoints[0]");
        let long = "x".repeat(MAX_ENTRY_BYTES + 1);
        assert_eq!(
            validate(ListKind::Tags, &[long]).unwrap_err().field,
            "tags[0]"
        );
        assert_eq!(
            validate(ListKind::Tags, &list(&["a,b"])).unwrap_err().field,
            "tags[0]"
        );
        let many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("m{i}")).collect();
        assert_eq!(
            validate(ListKind::Models, &many).unwrap_err().field,
            "allowed_models"
        );
        assert_eq!(
            validate(
                ListKind::Ips,
                &list(&[" 10.1.2.3/8 ", "10.0.0.0/8", "::ffff:1.2.3.4"])
            )
            .unwrap(),
            list(&["10.0.0.0/8", "1.2.3.4"])
        );
        assert_eq!(
            validate(ListKind::Models, &list(&["a", " a ", ""])).unwrap(),
            list(&["a"])
        );
    }

    #[test]
    fn stored_lists_round_trip() {
        let stored = TextList(list(&["a", "b*"]));
        assert_eq!(TextList::try_from(stored.to_json()).unwrap(), stored);
        assert!(TextList::try_from("not json".to_string()).is_err());
    }
}
