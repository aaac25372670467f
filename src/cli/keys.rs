//! `keygate keys …`: the key commands, with a coloured table or `--json`.

use crate::cli::output::say;
use std::borrow::Cow;
use std::io::IsTerminal;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use console::style;

use crate::audit::Actor;
use crate::clock::{parse_rfc3339, rfc3339, MS_PER_DAY, MS_PER_HOUR};
use crate::key_ops::{CreateKey, KeyPatch, KeyView, Keyring, RenewExpiring, Renewal};
use crate::keys::{ActivationUnit, ExpirationMode, Status};
use crate::limits::LimitsPatch;
use crate::store::keys::KeyFilter;
use crate::store::Page;

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// List keys: id, name, masked key, status, expiry, usage.
    List(ListArgs),
    /// Create a key and print it (the only time the full key is shown).
    Create(Box<CreateArgs>),
    /// Show one key.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Change a key's name, description, restrictions, tags or limits (in force on the next request).
    Edit(Box<EditArgs>),
    /// Change a key's expiry: 1h, 1d, 7d, 30d, 90d, 365d (any Nh/Nd), never, or an RFC 3339 date-time.
    Expiry { id: i64, expiry: String },
    /// Renew a key (also an expired or disabled one): N days from now, to a date, or never.
    Renew {
        id: i64,
        #[arg(long, conflicts_with_all = ["until", "never"])]
        days: Option<i64>,
        /// RFC 3339 date-time in the future.
        #[arg(long, conflicts_with = "never")]
        until: Option<String>,
        #[arg(long)]
        never: bool,
    },
    /// Extend every key expiring within N days.
    RenewExpiring {
        #[arg(long, default_value_t = 7)]
        within: i64,
        #[arg(long, default_value_t = 30)]
        extend: i64,
        /// Only these key ids (comma-separated).
        #[arg(long, value_delimiter = ',')]
        ids: Option<Vec<i64>>,
    },
    /// Revoke a key at once and for good (its record and logs stay).
    Revoke { id: i64 },
    /// Give a key a new secret (printed once); the old one stops working at once.
    Regenerate {
        id: i64,
        /// Keep the replaced key working this many hours (up to 720), so clients can move.
        #[arg(long)]
        grace_hours: Option<i64>,
    },
    /// Delete a key and all its call logs.
    Delete {
        id: i64,
        /// Don't ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Create the five test keys of the expiry guide (expired, 1 hour, 1 day, 7 days, never).
    SeedTest,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// active, pending, expired, disabled or revoked.
    #[arg(long)]
    pub status: Option<String>,
    /// Text to find in name or description.
    #[arg(long)]
    pub search: Option<String>,
    /// Only keys with this tag.
    #[arg(long)]
    pub tag: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// A key's restriction lists and tags, comma-separated; an empty value (`""`) clears a list.
#[derive(Args, Debug, Default)]
pub struct RestrictionArgs {
    /// Models the key may use: names or `prefix*` patterns (e.g. gpt-4o-mini,claude-*).
    #[arg(long, value_delimiter = ',')]
    pub allowed_models: Option<Vec<String>>,
    /// User-Agents that may use the key: exact or `prefix*`, case-insensitive.
    #[arg(long, value_delimiter = ',')]
    pub allowed_clients: Option<Vec<String>>,
    /// IP addresses or CIDRs the key may be used from (behind a proxy: KEYGATE_TRUSTED_PROXIES).
    #[arg(long, value_delimiter = ',')]
    pub allowed_ips: Option<Vec<String>>,
    /// Paths the key may call (e.g. /v1/chat/completions,/v1/embeddings), exact or `prefix*`.
    #[arg(long, value_delimiter = ',')]
    pub allowed_endpoints: Option<Vec<String>>,
    /// Labels (the key list filters by them).
    #[arg(long, value_delimiter = ',')]
    pub tags: Option<Vec<String>>,
    /// An upstream the key may be relayed to, by id or name (repeatable, or comma-separated;
    /// 0 or `default`: the built-in one); `--upstream ""` clears the binding (any upstream).
    #[arg(long = "upstream", value_delimiter = ',', value_name = "ID|NAME")]
    pub upstreams: Option<Vec<String>>,
    /// A route kind the key may use: openai or anthropic (repeatable, or comma-separated);
    /// `--permission ""` clears them (both).
    #[arg(long = "permission", value_delimiter = ',', value_name = "KIND")]
    pub permissions: Option<Vec<String>>,
}

impl RestrictionArgs {
    /// The `--upstream` values as ids (names looked up); None when not given.
    async fn upstream_ids(&self, keyring: &Keyring) -> anyhow::Result<Option<Vec<i64>>> {
        let Some(given) = &self.upstreams else {
            return Ok(None);
        };
        let mut ids = Vec::with_capacity(given.len());
        for text in given.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
            ids.push(super::upstreams::resolve(keyring, text).await?);
        }
        Ok(Some(ids))
    }

    /// The `--permission` values, empty ones dropped; None when not given.
    fn permissions(&self) -> Option<Vec<String>> {
        self.permissions.as_ref().map(|given| {
            given
                .iter()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect()
        })
    }
}

#[derive(Args, Debug)]
pub struct EditArgs {
    pub id: i64,
    #[arg(long)]
    pub name: Option<String>,
    /// An empty value clears it.
    #[arg(long)]
    pub description: Option<String>,
    #[command(flatten)]
    pub restrictions: RestrictionArgs,
    /// Limits to change (`--rate-limit-requests 0` lifts that limit).
    #[command(flatten)]
    pub limits: LimitsPatch,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub description: Option<String>,
    /// 1h, 1d, 7d, 30d, 90d, 180d, 365d (any Nh/Nd), never, or an RFC 3339 date-time.
    #[arg(long, default_value = "never", conflicts_with = "activation")]
    pub expires: String,
    /// Activation mode: the key lives this long (Nh or Nd) from its first use.
    #[arg(long)]
    pub activation: Option<String>,
    #[command(flatten)]
    pub restrictions: RestrictionArgs,
    #[command(flatten)]
    pub limits: LimitsPatch,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(keyring: &Keyring, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::List(args) => list(keyring, args).await,
        KeysCommand::Create(args) => create(keyring, *args).await,
        KeysCommand::Show { id, json } => {
            let view = keyring.full_view(&keyring.get(id).await?).await?;
            if json {
                say!("{}", serde_json::to_string_pretty(&view)?);
                Ok(())
            } else {
                print_keys(std::slice::from_ref(&view), false)?;
                say!("  {:<18} {}", "total_tokens_used", view.total_tokens_used);
                say!("  {:<18} ${:.6}", "total_cost", view.total_cost);
                say!("  {:<18} ${:.6}", "daily_cost", view.daily_cost);
                say!("  {:<18} ${:.6}", "weekly_cost", view.weekly_cost);
                print_restrictions(&view)?;
                print_limits(&view)?;
                Ok(())
            }
        }
        KeysCommand::Edit(args) => {
            let args = *args;
            let r = args.restrictions;
            let patch = KeyPatch {
                upstream_ids: r.upstream_ids(keyring).await?,
                permissions: r.permissions(),
                name: args.name,
                description: args.description.map(|d| Some(d).filter(|d| !d.is_empty())),
                allowed_models: r.allowed_models,
                allowed_clients: r.allowed_clients,
                allowed_ips: r.allowed_ips,
                allowed_endpoints: r.allowed_endpoints,
                tags: r.tags,
                limits: args.limits,
                ..Default::default()
            };
            let view = keyring.view(&keyring.update(args.id, &patch, &Actor::cli()).await?);
            say!("Key #{} '{}' changed.", view.id, printable(&view.name));
            print_restrictions(&view)?;
            print_limits(&view)?;
            Ok(())
        }
        KeysCommand::Expiry { id, expiry } => {
            let expires_at = parse_expiry(&expiry, keyring.now())?;
            let patch = KeyPatch {
                expires_at: Some(expires_at.map(rfc3339)),
                ..Default::default()
            };
            let row = keyring.update(id, &patch, &Actor::cli()).await?;
            say!(
                "Expiry of key #{id} set to {}.",
                describe_expiry(&keyring.view(&row))
            );
            Ok(())
        }
        KeysCommand::Renew {
            id,
            days,
            until,
            never,
        } => {
            let renewal = Renewal {
                days,
                expires_at: until,
                never: never.then_some(true),
            };
            let renewal = if renewal.days.is_none() && renewal.expires_at.is_none() && !never {
                Renewal {
                    days: Some(30),
                    ..renewal
                }
            } else {
                renewal
            };
            let row = keyring.renew(id, &renewal, &Actor::cli()).await?;
            say!(
                "Key #{id} renewed: {}.",
                describe_expiry(&keyring.view(&row))
            );
            Ok(())
        }
        KeysCommand::RenewExpiring {
            within,
            extend,
            ids,
        } => {
            let request = RenewExpiring {
                within_days: Some(within),
                extend_days: Some(extend),
                ids,
            };
            let batch = keyring.renew_expiring(&request, &Actor::cli()).await?;
            if batch.renewed.is_empty() {
                say!("No key expires within {within} days: nothing renewed.");
            } else {
                say!("Renewed {} key(s) by {extend} days:", batch.renewed.len());
                print_keys(&batch.renewed, false)?;
            }
            if !batch.skipped_ids.is_empty() {
                say!(
                    "Skipped (not expiring within {within} days): {:?}",
                    batch.skipped_ids
                );
            }
            Ok(())
        }
        KeysCommand::Revoke { id } => {
            keyring.revoke(id, &Actor::cli()).await?;
            say!(
                "Key #{id} revoked: it can never authenticate again. Its record and logs are kept."
            );
            Ok(())
        }
        KeysCommand::Regenerate { id, grace_hours } => {
            let regenerated = keyring.regenerate(id, grace_hours, &Actor::cli()).await?;
            say!(
                "New key for #{id} '{}' (shown once, store it now):\n\n  {}\n",
                printable(&regenerated.row.name),
                regenerated.secret
            );
            match regenerated.grace_until {
                Some(until) => say!(
                    "The old key works until {} UTC.",
                    &rfc3339(until)[..16].replace('T', " ")
                ),
                None => say!("The old key stopped working."),
            }
            Ok(())
        }
        KeysCommand::Delete { id, yes } => {
            let row = keyring.get(id).await?;
            if !yes
                && !confirm(&format!(
                    "Delete key #{id} '{}' and all its call logs? This cannot be undone",
                    printable(&row.name)
                ))?
            {
                say!("Not deleted.");
                return Ok(());
            }
            keyring.delete(id, &Actor::cli()).await?;
            say!("Key #{id} and its call logs deleted.");
            Ok(())
        }
        KeysCommand::SeedTest => super::expiry::seed_test(keyring).await,
    }
}

/// Asks on the terminal; without one, refuses (the caller says which flag skips the question).
pub fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("{question}? There is no terminal to ask on: pass --yes to confirm.");
    }
    Ok(dialoguer::Confirm::new()
        .with_prompt(question)
        .default(false)
        .interact()?)
}

async fn list(keyring: &Keyring, args: ListArgs) -> anyhow::Result<()> {
    let status = match args.status.as_deref() {
        None => None,
        Some(text) => Some(Status::parse(text).with_context(|| {
            format!("--status: `{text}` is not one of active, pending, expired, disabled, revoked")
        })?),
    };
    let filter = KeyFilter {
        status,
        search: args.search,
        tag: args.tag,
        sort: None,
    };
    let mut views = Vec::new();
    let mut page = Page {
        page: 1,
        page_size: 200,
    };
    loop {
        let (rows, total) = keyring.list(&filter, page).await?;
        views.extend(rows.iter().map(|row| keyring.view(row)));
        if views.len() as i64 >= total || rows.is_empty() {
            break;
        }
        page.page += 1;
    }
    if views.is_empty() && !args.json {
        say!("No keys. Create one with: keygate keys create --name NAME");
        return Ok(());
    }
    print_keys(&views, args.json)
}

async fn create(keyring: &Keyring, args: CreateArgs) -> anyhow::Result<()> {
    let now = keyring.now();
    let r = args.restrictions;
    let mut request = CreateKey {
        upstream_ids: r.upstream_ids(keyring).await?,
        permissions: r.permissions(),
        name: args.name,
        description: args.description,
        allowed_models: r.allowed_models,
        allowed_clients: r.allowed_clients,
        allowed_ips: r.allowed_ips,
        allowed_endpoints: r.allowed_endpoints,
        tags: r.tags,
        limits: args.limits,
        ..Default::default()
    };
    if let Some(period) = &args.activation {
        let (n, unit) = parse_period(period)
            .with_context(|| format!("--activation: `{period}` is not like 12h or 30d"))?;
        request.expiration_mode = Some(ExpirationMode::Activation);
        request.activation_period = Some(n);
        request.activation_unit = Some(unit);
    } else {
        match parse_expiry(&args.expires, now)? {
            None => request.never = Some(true),
            Some(at) => request.expires_at = Some(rfc3339(at)),
        }
    }
    let (row, secret) = keyring.create(&request, &Actor::cli()).await?;
    let view = keyring.view(&row).with_key(secret.clone());
    if args.json {
        say!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    say!(
        "Created key #{} '{}', {}.",
        view.id,
        printable(&view.name),
        describe_expiry(&view)
    );
    print_restrictions(&view)?;
    print_limits(&view)?;
    say!("\n  {secret}\n\nThis is the only time the full key is shown: store it now.");
    Ok(())
}

/// The key's restriction lists and tags, one line each (escaped: they come from the store).
pub fn print_restrictions(view: &KeyView) -> anyhow::Result<()> {
    for (field, list) in view.restrictions.entries() {
        let shown = if list.is_empty() {
            if field == "tags" {
                "none".to_string()
            } else {
                "any (no restriction)".to_string()
            }
        } else {
            list.0
                .iter()
                .map(|entry| printable(entry).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        };
        say!("  {field:<18} {shown}");
    }
    print_binding(view)?;
    Ok(())
}

/// The upstreams and APIs the key is bound to (SPEC §12), one line each.
fn print_binding(view: &KeyView) -> anyhow::Result<()> {
    let ids = &view.binding.upstream_ids.0;
    let upstreams = if ids.is_empty() {
        "any".to_string()
    } else {
        ids.iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    say!("  {:<18} {upstreams}", "upstream_ids");
    let kinds = &view.binding.permissions.0;
    let permissions = if kinds.is_empty() {
        "any (openai, anthropic)".to_string()
    } else {
        kinds
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    say!("  {:<18} {permissions}", "permissions");
    Ok(())
}

/// The key's limits, one line each.
pub fn print_limits(view: &KeyView) -> anyhow::Result<()> {
    for (field, value) in view.limits.entries() {
        let shown = match field {
            _ if value == 0.0 => "none".to_string(),
            "rate_limit_window" => format!("{value} min"),
            _ if field.contains("cost") => format!("${value}"),
            _ => value.to_string(),
        };
        say!("  {field:<18} {shown}");
    }
    Ok(())
}

/// `Nh` / `Nd` → (N, unit).
fn parse_period(text: &str) -> Option<(i64, ActivationUnit)> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: i64 = number.parse().ok().filter(|n| *n > 0)?;
    match unit {
        "h" => Some((n, ActivationUnit::Hours)),
        "d" => Some((n, ActivationUnit::Days)),
        _ => None,
    }
}

/// The expiry choices of the seeds: `never`, `Nh`, `Nd`, or an RFC 3339 date-time in the future.
pub fn parse_expiry(text: &str, now: i64) -> anyhow::Result<Option<i64>> {
    if text.trim().eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    if let Some((n, unit)) = parse_period(text) {
        let unit_ms = if unit == ActivationUnit::Hours {
            MS_PER_HOUR
        } else {
            MS_PER_DAY
        };
        return Ok(Some(now + n * unit_ms));
    }
    match parse_rfc3339(text) {
        Some(at) if at > now => Ok(Some(at)),
        Some(_) => bail!("expiry `{text}` is in the past: give a future date-time"),
        None => bail!("expiry `{text}` is not one of 1h, 1d, 7d, 30d, 90d, 365d, never, or an RFC 3339 date-time like 2027-01-31T00:00:00Z"),
    }
}

/// "never expires", "expires 2026-12-01 10:00 UTC (in 6d)", "expired 2026-11-01 …".
pub fn describe_expiry(view: &KeyView) -> String {
    match (view.expires_at, view.expires_in_seconds) {
        (Some(at), Some(secs)) => {
            let when = rfc3339(at)[..16].replace('T', " ") + " UTC";
            if secs <= 0 {
                format!("expired {when}")
            } else {
                format!("expires {when} (in {})", human(secs))
            }
        }
        _ if view.status == Status::Pending => format!(
            "starts counting at first use ({} {})",
            view.activation_period.unwrap_or_default(),
            view.activation_unit.as_deref().unwrap_or("days")
        ),
        _ => "never expires".into(),
    }
}

fn human(secs: i64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3_600 => format!("{}h", s / 3_600),
        s => format!("{}m", (s / 60).max(1)),
    }
}

/// A coloured status: red expired/revoked, yellow expiring within 7 days, green active.
pub fn coloured_status(view: &KeyView) -> String {
    let text = if view.expiring_soon {
        "expiring soon"
    } else {
        view.status.as_str()
    };
    let styled = match view.status {
        Status::Expired | Status::Revoked => style(text).red(),
        Status::Active if view.expiring_soon => style(text).yellow(),
        Status::Active => style(text).green(),
        Status::Disabled | Status::Pending => style(text).dim(),
    };
    styled.to_string()
}

pub fn print_keys(views: &[KeyView], json: bool) -> anyhow::Result<()> {
    if json {
        say!("{}", serde_json::to_string_pretty(views)?);
        return Ok(());
    }
    say!(
        "{:>5}  {:<24} {:<10} {:<14} {:<22} {:>7}  last used",
        "id",
        "name",
        "key",
        "status",
        "expires",
        "usage"
    );
    for view in views {
        let expires = match view.expires_at {
            None if view.status == Status::Pending => {
                "at first use +".to_string()
                    + &view.activation_period.unwrap_or_default().to_string()
                    + &view.activation_unit.as_deref().unwrap_or("d")[..1]
            }
            None => "∞ never".into(),
            Some(at) => rfc3339(at)[..16].replace('T', " "),
        };
        let status = coloured_status(view);
        // Pad by the visible width: colour codes take no columns.
        let pad = 14usize.saturating_sub(console::measure_text_width(&status));
        say!(
            "{:>5}  {:<24} {:<10} {status}{} {:<22} {:>7}  {}",
            view.id,
            truncate(&printable(&view.name), 24),
            view.key_preview,
            " ".repeat(pad),
            expires,
            view.usage_count,
            view.last_used_at
                .map(|t| rfc3339(t)[..16].replace('T', " "))
                .unwrap_or_else(|| "-".into()),
        );
    }
    Ok(())
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        text.chars().take(width - 1).collect::<String>() + "…"
    }
}

/// Text from the store as it may be shown on a terminal: control characters (ESC, BEL, CR,
/// DEL, C1) and bidirectional overrides are written as `\u{1b}` escapes, so a key name cannot
/// move the cursor, recolour or rewrite the screen. Every name or description printed goes
/// through it.
pub fn printable(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("plain name é"), "plain name é");
        assert_eq!(
            printable("a\u{1b}[2J\u{7}b\r\u{9b}c\u{202e}d"),
            "a\\u{1b}[2J\\u{7}b\\u{d}\\u{9b}c\\u{202e}d"
        );
    }
}
