//! `keygate audit`: the audit log of admin changes, newest first, as a table or `--json`.

use crate::cli::output::say;
use anyhow::bail;
use clap::Args;
use console::style;

use super::keys::printable;
use crate::audit::Action;
use crate::clock::rfc3339;
use crate::key_ops::Keyring;
use crate::store::audit::{AuditFilter, AuditRow};
use crate::store::Page;

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only entries about this key id.
    #[arg(long)]
    pub key_id: Option<i64>,
    /// Only this action: create, edit, renew, batch_renew, revoke, regenerate, delete,
    /// default_expiry, import, prune, login, logout, login_failures.
    #[arg(long)]
    pub action: Option<String>,
    /// How many entries, newest first (at most 200).
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(keyring: &Keyring, args: &AuditArgs) -> anyhow::Result<()> {
    if !(1..=200).contains(&args.limit) {
        bail!("--limit: must be between 1 and 200");
    }
    let action = match args.action.as_deref() {
        None => None,
        Some(text) => match Action::parse(text) {
            Some(action) => Some(action.as_str().to_string()),
            None => bail!("--action: `{text}` is not one of {}", Action::names()),
        },
    };
    let filter = AuditFilter {
        action,
        key_id: args.key_id,
        ..AuditFilter::default()
    };
    let page = Page {
        page: 1,
        page_size: args.limit,
    };
    let (rows, total) = crate::store::audit::list(&keyring.pool, &filter, page).await?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        say!("No audit entries.");
        return Ok(());
    }
    say!(
        "{:<24} {:<15} {:<22} {:<22} {:<16} changes",
        "when",
        "action",
        "key",
        "by",
        "from"
    );
    for row in &rows {
        print_row(row)?;
    }
    if total > rows.len() as i64 {
        say!(
            "{}",
            style(format!(
                "({} of {total} entries; --limit shows more)",
                rows.len()
            ))
            .dim()
        );
    }
    Ok(())
}

fn print_row(row: &AuditRow) -> anyhow::Result<()> {
    let key = match (row.key_id, &row.key_name) {
        (Some(id), Some(name)) => format!("#{id} {}", printable(name)),
        (Some(id), None) => format!("#{id}"),
        _ => "-".into(),
    };
    let by = match &row.os_user {
        Some(user) => format!("{} ({})", row.via, printable(user)),
        None => row.via.clone(),
    };
    say!(
        "{:<24} {:<15} {:<22} {:<22} {:<16} {}",
        rfc3339(row.at),
        row.action,
        key,
        by,
        row.ip.as_deref().unwrap_or("-"),
        summary(&row.details)
    );
    Ok(())
}

/// The changed field names (or the details as they are), on one line.
fn summary(details: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(details).unwrap_or_default();
    let text = match value.get("changes").and_then(|c| c.as_object()) {
        Some(changes) => changes
            .iter()
            .map(|(field, change)| format!("{field}: {} → {}", change["old"], change["new"]))
            .collect::<Vec<_>>()
            .join("; "),
        None => details.to_string(),
    };
    printable(&text).into_owned()
}
