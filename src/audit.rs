//! The audit trail of admin changes: who (admin token, console session or CLI), from where,
//! what was done to which key, and which non-secret fields changed from what to what.

use std::net::IpAddr;

use serde_json::{json, Map, Value};
use sqlx::SqliteExecutor;

use crate::clock::rfc3339;
use crate::store::{self, audit::NewEntry, keys::KeyRow};

/// How an admin change was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// `Authorization: Bearer $KEYGATE_ADMIN_TOKEN`.
    Token,
    /// The web console's session cookie.
    Session,
    /// The `keygate` command line, on the store directly.
    Cli,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Token => "token",
            Via::Session => "session",
            Via::Cli => "cli",
        }
    }
}

/// Who made a change and from where.
#[derive(Clone, Debug)]
pub struct Actor {
    pub via: Via,
    /// The client's address as the relay computes it (trusted proxies honoured); none for the CLI.
    pub ip: Option<IpAddr>,
    /// The CLI's OS user, when known.
    pub os_user: Option<String>,
}

impl Actor {
    /// An admin API request.
    pub fn admin(via: Via, ip: IpAddr) -> Actor {
        Actor {
            via,
            ip: Some(ip.to_canonical()),
            os_user: None,
        }
    }

    /// This process, run from the command line by the current OS user.
    pub fn cli() -> Actor {
        Actor {
            via: Via::Cli,
            ip: None,
            os_user: os_user(),
        }
    }
}

/// The login name of the user running this process: `$USER`/`$LOGNAME`, else the uid.
fn os_user() -> Option<String> {
    let named = ["USER", "LOGNAME"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty());
    #[cfg(unix)]
    let named = named.or_else(|| {
        // SAFETY: getuid has no preconditions and cannot fail.
        Some(format!("uid {}", unsafe { libc::getuid() }))
    });
    named
}

/// What was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Create,
    Edit,
    Renew,
    BatchRenew,
    Revoke,
    Regenerate,
    Delete,
    /// `keygate migrate apikey-expiry`: keys without an expiry given one.
    DefaultExpiry,
    Import,
    Prune,
    Login,
    Logout,
    /// A burst of failed admin authentications reached a limit (one entry per burst).
    LoginFailures,
    /// An upstream (SPEC §12) added, changed or removed.
    UpstreamCreate,
    UpstreamUpdate,
    UpstreamDelete,
}

impl Action {
    pub const ALL: [Action; 16] = [
        Action::Create,
        Action::Edit,
        Action::Renew,
        Action::BatchRenew,
        Action::Revoke,
        Action::Regenerate,
        Action::Delete,
        Action::DefaultExpiry,
        Action::Import,
        Action::Prune,
        Action::Login,
        Action::Logout,
        Action::LoginFailures,
        Action::UpstreamCreate,
        Action::UpstreamUpdate,
        Action::UpstreamDelete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Edit => "edit",
            Action::Renew => "renew",
            Action::BatchRenew => "batch_renew",
            Action::Revoke => "revoke",
            Action::Regenerate => "regenerate",
            Action::Delete => "delete",
            Action::DefaultExpiry => "default_expiry",
            Action::Import => "import",
            Action::Prune => "prune",
            Action::Login => "login",
            Action::Logout => "logout",
            Action::LoginFailures => "login_failures",
            Action::UpstreamCreate => "upstream.create",
            Action::UpstreamUpdate => "upstream.update",
            Action::UpstreamDelete => "upstream.delete",
        }
    }

    pub fn parse(text: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == text.trim())
    }

    /// The names, for an error that lists them.
    pub fn names() -> String {
        Action::ALL.map(Action::as_str).join(", ")
    }
}

/// Appends one entry (in the caller's transaction when it passes one).
pub async fn record<'e>(
    db: impl SqliteExecutor<'e>,
    at: i64,
    by: &Actor,
    action: Action,
    key: Option<(i64, &str)>,
    details: Value,
) -> sqlx::Result<()> {
    store::audit::insert(
        db,
        &NewEntry {
            at,
            via: by.via.as_str(),
            os_user: by.os_user.as_deref(),
            ip: by.ip.map(|ip| ip.to_string()),
            action: action.as_str(),
            key_id: key.map(|(id, _)| id),
            key_name: key.map(|(_, name)| name),
            details: details.to_string(),
        },
    )
    .await
}

/// An action on one key, with the fields that changed from `before` to `after` (None: the key
/// did not exist before, or no longer does).
pub async fn record_key<'e>(
    db: impl SqliteExecutor<'e>,
    at: i64,
    by: &Actor,
    action: Action,
    before: Option<&KeyRow>,
    after: Option<&KeyRow>,
) -> sqlx::Result<()> {
    let Some(key) = after.or(before) else {
        return Ok(());
    };
    let details = json!({ "changes": changes(before, after) });
    record(db, at, by, action, Some((key.id, &key.name)), details).await
}

/// `keygate logs prune` (and the retention task): what was pruned. For the operations code to
/// call once the rows are gone.
pub async fn record_prune<'e>(
    db: impl SqliteExecutor<'e>,
    at: i64,
    by: &Actor,
    older_than: i64,
    rows_deleted: u64,
) -> sqlx::Result<()> {
    let details = json!({ "older_than": rfc3339(older_than), "rows_deleted": rows_deleted });
    record(db, at, by, Action::Prune, None, details).await
}

/// The non-secret fields of a key as the trail shows them: never its hash, encrypted copy
/// or secret (the preview is what every list shows already).
pub fn snapshot(row: &KeyRow) -> Map<String, Value> {
    let time = |ms: Option<i64>| ms.map_or(Value::Null, |ms| Value::String(rfc3339(ms)));
    let mut fields = Map::new();
    fields.insert("name".into(), json!(row.name));
    fields.insert("description".into(), json!(row.description));
    fields.insert("key_preview".into(), json!(row.key_preview));
    fields.insert("expires_at".into(), time(row.expires_at));
    fields.insert("expiration_mode".into(), json!(row.expiration_mode));
    fields.insert("activation_period".into(), json!(row.activation_period));
    fields.insert("activation_unit".into(), json!(row.activation_unit));
    fields.insert("activated_at".into(), time(row.activated_at));
    fields.insert("is_active".into(), json!(row.is_active));
    fields.insert("revoked_at".into(), time(row.revoked_at));
    for (name, list) in row.restrictions.entries() {
        fields.insert(name.into(), json!(list.0));
    }
    fields.insert("upstream_ids".into(), json!(row.binding.upstream_ids.0));
    fields.insert("permissions".into(), json!(row.binding.permissions.0));
    // By the limits' own types (whole numbers stay whole).
    if let Ok(Value::Object(limits)) = serde_json::to_value(row.limits) {
        fields.extend(limits);
    }
    fields
}

/// A value that says nothing on its own (left out of a creation's or deletion's changes).
fn is_blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

/// `{field: {"old": …, "new": …}}` for each field that differs.
pub fn changes(before: Option<&KeyRow>, after: Option<&KeyRow>) -> Map<String, Value> {
    diff(
        before.map(snapshot).unwrap_or_default(),
        after.map(snapshot).unwrap_or_default(),
    )
}

/// `{field: {"old": …, "new": …}}` for each field of two snapshots that differs.
pub fn diff(old: Map<String, Value>, new: Map<String, Value>) -> Map<String, Value> {
    let mut changed = Map::new();
    let names = new
        .keys()
        .chain(old.keys().filter(|k| !new.contains_key(*k)));
    for name in names {
        let was = old.get(name).cloned().unwrap_or(Value::Null);
        let now = new.get(name).cloned().unwrap_or(Value::Null);
        if was != now && !(is_blank(&was) && is_blank(&now)) {
            changed.insert(name.clone(), json!({ "old": was, "new": now }));
        }
    }
    changed
}
