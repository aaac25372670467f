//! `keygate upstreams …`: list, add, edit, enable, disable, remove, on the store directly (a
//! running server notices within a second), through the admin API's own checks.

use crate::cli::output::say;
use std::collections::BTreeMap;
use std::io::BufRead;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::keys::{confirm, printable};
use crate::audit::Actor;
use crate::config::Config;
use crate::key_ops::Keyring;
use crate::store;
use crate::upstreams::form::{NewUpstream, UpstreamPatch};
use crate::upstreams::health::Health;
use crate::upstreams::ops;
use crate::upstreams::spec::{UpstreamSpec, DEFAULT_ID, DEFAULT_NAME};
use crate::upstreams::view::UpstreamView;

#[derive(Subcommand, Debug)]
pub enum UpstreamsCommand {
    /// List the upstreams, the built-in `default` first (live health is the server's: GET
    /// /api/upstreams).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add an upstream (in use on the next request, also by a running server).
    Add(Box<AddArgs>),
    /// Change an upstream: only the options given.
    Edit(Box<EditArgs>),
    /// Route requests to an upstream again.
    Enable {
        #[arg(value_name = "ID|NAME")]
        upstream: String,
    },
    /// Stop routing requests to an upstream (it stays configured).
    Disable {
        #[arg(value_name = "ID|NAME")]
        upstream: String,
    },
    /// Ask an upstream for its model list with its credential: whether it answers, and how fast
    /// (exit status 1 when it does not).
    Test {
        #[arg(value_name = "ID|NAME")]
        upstream: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove an upstream. Keys bound to it refuse this unless --force takes it out of their
    /// upstream_ids (a key bound to it alone may then use every upstream).
    Remove {
        #[arg(value_name = "ID|NAME")]
        upstream: String,
        /// Also unbind the keys bound to it.
        #[arg(long)]
        force: bool,
        /// Don't ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// The credential: on the command line, or (kept out of the shell's history) from stdin.
#[derive(Args, Debug, Default)]
pub struct CredentialArgs {
    /// The upstream's credential (stored encrypted, never shown again). Visible to other users
    /// of this machine while the command runs: prefer --api-key-stdin.
    #[arg(long, conflicts_with = "api_key_stdin")]
    pub api_key: Option<String>,
    /// Read the credential from the first line of stdin.
    #[arg(long)]
    pub api_key_stdin: bool,
}

impl CredentialArgs {
    fn read(&self) -> anyhow::Result<Option<String>> {
        if let Some(key) = &self.api_key {
            return Ok(Some(key.clone()));
        }
        if !self.api_key_stdin {
            return Ok(None);
        }
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("--api-key-stdin: cannot read stdin")?;
        Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
    }
}

/// What `add` and `edit` share.
#[derive(Args, Debug, Default)]
pub struct FieldArgs {
    /// openai (any OpenAI-compatible API) or anthropic (the Messages API).
    #[arg(long)]
    pub kind: Option<String>,
    /// http(s)://host[:port][/path], e.g. https://api.openai.com/v1 or https://api.anthropic.com.
    #[arg(long)]
    pub base_url: Option<String>,
    /// bearer, api-key (Azure) or x-api-key (Anthropic); default by kind.
    #[arg(long)]
    pub auth_header: Option<String>,
    /// A model name or `prefix*` pattern it serves (repeatable, or comma-separated); `--model ""`
    /// clears the list (any model).
    #[arg(long = "model", value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    /// CLIENT=UPSTREAM: the model sent for a client model (repeatable); `--map ""` clears.
    #[arg(long = "map", value_name = "CLIENT=UPSTREAM")]
    pub model_map: Option<Vec<String>>,
    /// Lower is tried first (0 to 1000).
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i64>,
    /// Share of the traffic within one priority (0 to 1000).
    #[arg(long, allow_negative_numbers = true)]
    pub weight: Option<i64>,
    /// inject or off.
    #[arg(long)]
    pub stream_usage: Option<String>,
    /// NAME:VALUE added to every request to it (repeatable); `--header ""` clears.
    #[arg(long = "header", value_name = "NAME:VALUE")]
    pub extra_headers: Option<Vec<String>>,
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// Unique: letters, digits, `-`, `_`, `.`.
    #[arg(long)]
    pub name: String,
    #[command(flatten)]
    pub fields: FieldArgs,
    #[command(flatten)]
    pub credential: CredentialArgs,
    /// Seconds before a request to it times out (1 to 3600; default KEYGATE_UPSTREAM_TIMEOUT).
    #[arg(long, allow_negative_numbers = true)]
    pub timeout_seconds: Option<i64>,
    /// Add it disabled.
    #[arg(long)]
    pub disabled: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EditArgs {
    #[arg(value_name = "ID|NAME")]
    pub upstream: String,
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub fields: FieldArgs,
    #[command(flatten)]
    pub credential: CredentialArgs,
    /// Remove the stored credential.
    #[arg(long, conflicts_with_all = ["api_key", "api_key_stdin"])]
    pub no_api_key: bool,
    /// 1 to 3600, or `default` (KEYGATE_UPSTREAM_TIMEOUT).
    #[arg(long, allow_negative_numbers = true)]
    pub timeout_seconds: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(
    keyring: &Keyring,
    config: &Config,
    command: UpstreamsCommand,
) -> anyhow::Result<()> {
    let by = Actor::cli();
    match command {
        UpstreamsCommand::List { json } => list(keyring, config, json).await,
        UpstreamsCommand::Add(args) => {
            let args = *args;
            let f = args.fields;
            let input = NewUpstream {
                name: args.name,
                kind: f.kind.context("--kind: required: openai or anthropic")?,
                base_url: f
                    .base_url
                    .context("--base-url: required, e.g. https://api.openai.com/v1")?,
                api_key: args.credential.read()?,
                auth_header: f.auth_header,
                models: f.models.map(non_empty),
                model_map: f.model_map.map(|m| pairs("--map", &m, '=')).transpose()?,
                priority: f.priority,
                weight: f.weight,
                enabled: Some(!args.disabled),
                timeout_seconds: args.timeout_seconds,
                stream_usage: f.stream_usage,
                extra_headers: f
                    .extra_headers
                    .map(|h| pairs("--header", &h, ':'))
                    .transpose()?,
            };
            let spec = ops::create(keyring, &input, &by).await?;
            show(keyring, &spec, args.json, "added").await
        }
        UpstreamsCommand::Edit(args) => {
            let args = *args;
            let id = resolve(keyring, &args.upstream).await?;
            let f = args.fields;
            let api_key = match (args.no_api_key, args.credential.read()?) {
                (true, _) => Some(None),
                (false, Some(key)) => Some(Some(key)),
                (false, None) => None,
            };
            let timeout_seconds = match args.timeout_seconds.as_deref().map(str::trim) {
                None => None,
                Some("default" | "") => Some(None),
                Some(text) => Some(Some(text.parse::<i64>().with_context(|| {
                    format!(
                        "--timeout-seconds: `{text}` is not a whole number of seconds or `default`"
                    )
                })?)),
            };
            let patch = UpstreamPatch {
                name: args.name,
                kind: f.kind,
                base_url: f.base_url,
                api_key,
                auth_header: f.auth_header,
                models: f.models.map(non_empty),
                model_map: f.model_map.map(|m| pairs("--map", &m, '=')).transpose()?,
                priority: f.priority,
                weight: f.weight,
                enabled: None,
                timeout_seconds,
                stream_usage: f.stream_usage,
                extra_headers: f
                    .extra_headers
                    .map(|h| pairs("--header", &h, ':'))
                    .transpose()?,
            };
            let spec = ops::update(keyring, id, &patch, &by).await?;
            show(keyring, &spec, args.json, "changed").await
        }
        UpstreamsCommand::Test { upstream, json } => test(keyring, config, &upstream, json).await,
        UpstreamsCommand::Enable { upstream } => switch(keyring, &upstream, true, &by).await,
        UpstreamsCommand::Disable { upstream } => switch(keyring, &upstream, false, &by).await,
        UpstreamsCommand::Remove {
            upstream,
            force,
            yes,
        } => {
            let id = resolve(keyring, &upstream).await?;
            if id == DEFAULT_ID {
                bail!("{}", ops::BUILTIN);
            }
            let spec = ops::get(keyring, id).await?;
            if !yes
                && !confirm(&format!(
                    "Remove upstream #{id} '{}'? Its call-log rows keep its id",
                    printable(&spec.name)
                ))?
            {
                say!("Not removed.");
                return Ok(());
            }
            let deleted = ops::delete(keyring, id, force, &by).await?;
            say!("Upstream #{id} '{}' removed.", printable(&deleted.name));
            if !deleted.unbound_key_ids.is_empty() {
                say!(
                    "Taken out of the upstream_ids of key(s) {:?}.",
                    deleted.unbound_key_ids
                );
            }
            Ok(())
        }
    }
}

/// Probes an upstream from this machine, as the server would reach it.
async fn test(
    keyring: &Keyring,
    config: &Config,
    upstream: &str,
    json: bool,
) -> anyhow::Result<()> {
    let id = resolve(keyring, upstream).await?;
    let upstream = if id == DEFAULT_ID {
        crate::relay::upstream::Upstream::new(config)?
    } else {
        let spec = ops::get(keyring, id).await?;
        crate::relay::upstream::Upstream::configured(&spec, config)?
    };
    let probe = crate::upstreams::models::probe(&upstream).await;
    if json {
        say!("{}", serde_json::to_string_pretty(&probe)?);
    } else if probe.ok {
        let models = probe
            .models
            .map_or(String::new(), |n| format!(", {n} models"));
        say!(
            "Upstream '{}' answered HTTP {} in {} ms{models}.",
            printable(&upstream.name),
            probe.status.unwrap_or(0),
            probe.latency_ms
        );
    }
    if !probe.ok {
        bail!(
            "upstream '{}' failed its test after {} ms: {}",
            printable(&upstream.name),
            probe.latency_ms,
            probe.error.as_deref().unwrap_or("no answer")
        );
    }
    Ok(())
}

/// Enables or disables an upstream.
async fn switch(
    keyring: &Keyring,
    upstream: &str,
    enabled: bool,
    by: &Actor,
) -> anyhow::Result<()> {
    let id = resolve(keyring, upstream).await?;
    let patch = UpstreamPatch {
        enabled: Some(enabled),
        ..UpstreamPatch::default()
    };
    let spec = ops::update(keyring, id, &patch, by).await?;
    let state = if enabled { "enabled" } else { "disabled" };
    say!("Upstream #{id} '{}' {state}.", printable(&spec.name));
    Ok(())
}

/// The id of the upstream `text` names: an id, or a name (`default`: 0).
pub async fn resolve(keyring: &Keyring, text: &str) -> anyhow::Result<i64> {
    let text = text.trim();
    if text == DEFAULT_NAME {
        return Ok(DEFAULT_ID);
    }
    let found = match text.parse::<i64>() {
        Ok(DEFAULT_ID) => return Ok(DEFAULT_ID),
        Ok(id) => store::upstreams::get(&keyring.pool, id).await?,
        Err(_) => store::upstreams::find_by_name(&keyring.pool, text).await?,
    };
    match found {
        Some(row) => Ok(row.id),
        None => bail!(
            "no upstream `{}`; `keygate upstreams list` shows their ids and names",
            printable(text)
        ),
    }
}

/// The values given, empty ones dropped (`--model ""` clears).
fn non_empty(values: Vec<String>) -> Vec<String> {
    values
        .into_iter()
        .filter(|v| !v.trim().is_empty())
        .collect()
}

/// `A=B` (or `A:B`) values as a map; empty ones dropped.
fn pairs(flag: &str, values: &[String], split: char) -> anyhow::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for value in values.iter().filter(|v| !v.trim().is_empty()) {
        let Some((a, b)) = value.split_once(split) else {
            bail!(
                "{flag}: `{}` is not like {}",
                printable(value),
                if split == '=' {
                    "CLIENT=UPSTREAM"
                } else {
                    "NAME:VALUE"
                }
            );
        };
        map.insert(a.trim().to_string(), b.trim().to_string());
    }
    Ok(map)
}

/// What the CLI can say of an upstream's health: the server keeps it in memory.
fn offline_health(enabled: bool) -> Health {
    Health {
        state: if enabled { "unknown" } else { "disabled" },
        ..Health::default()
    }
}

async fn views(keyring: &Keyring, config: &Config) -> anyhow::Result<Vec<UpstreamView>> {
    let specs = ops::list(keyring).await?;
    let bound = store::upstreams::bound_key_counts(&keyring.pool).await?;
    let count = |id: i64| bound.get(&id).copied().unwrap_or(0);
    let mut views = vec![UpstreamView::builtin(
        config,
        offline_health(true),
        count(DEFAULT_ID),
    )];
    views.extend(
        specs
            .iter()
            .map(|spec| UpstreamView::new(spec, offline_health(spec.enabled), count(spec.id))),
    );
    Ok(views)
}

async fn list(keyring: &Keyring, config: &Config, json: bool) -> anyhow::Result<()> {
    let views = views(keyring, config).await?;
    if json {
        say!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    say!(
        "{:<4} {:<20} {:<9} {:<8} {:<6} {:<8} {:<10} {:<5} BASE URL / MODELS",
        "ID",
        "NAME",
        "KIND",
        "PRIORITY",
        "WEIGHT",
        "ENABLED",
        "CREDENTIAL",
        "KEYS"
    );
    for view in &views {
        let credential = match (&view.api_key_preview, view.has_api_key) {
            (Some(preview), _) => preview.clone(),
            (None, true) => "set".into(),
            (None, false) => "none".into(),
        };
        let models = if view.models.is_empty() {
            "any model".to_string()
        } else {
            view.models.join(", ")
        };
        let priority = if view.builtin {
            "last".to_string()
        } else {
            view.priority.to_string()
        };
        say!(
            "{:<4} {:<20} {:<9} {:<8} {:<6} {:<8} {:<10} {:<5} {} ({})",
            view.id,
            printable(&view.name),
            view.kind.as_str(),
            priority,
            view.weight,
            if view.enabled { "yes" } else { "no" },
            credential,
            view.bound_keys,
            printable(&view.base_url),
            printable(&models),
        );
    }
    Ok(())
}

async fn show(
    keyring: &Keyring,
    spec: &UpstreamSpec,
    json: bool,
    done: &str,
) -> anyhow::Result<()> {
    let bound = store::upstreams::bound_keys(&keyring.pool, spec.id).await?;
    let view = UpstreamView::new(spec, offline_health(spec.enabled), bound.len() as i64);
    if json {
        say!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        say!(
            "Upstream #{} '{}' {done} ({} at {}). A running keygate uses it within a second.",
            view.id,
            printable(&view.name),
            view.kind.as_str(),
            printable(&view.base_url)
        );
    }
    Ok(())
}
