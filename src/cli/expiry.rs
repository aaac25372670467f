//! CLI commands of the expiry lifecycle: the default-expiry migration and the seed test keys.

use super::keys::printable;
use crate::audit::Actor;
use crate::cli::output::say;
use crate::clock::{rfc3339, MS_PER_DAY};
use crate::key_ops::{CreateKey, KeyPatch, Keyring};

/// `keygate migrate apikey-expiry [--days N] [--dry-run]`.
pub async fn migrate_expiry(keyring: &Keyring, days: i64, dry_run: bool) -> anyhow::Result<()> {
    let changed = keyring
        .add_default_expiry(days, dry_run, &Actor::cli())
        .await?;
    if changed.is_empty() {
        say!("Every key already has an expiry (or is in activation mode, or revoked): nothing to change.");
        return Ok(());
    }
    let when = changed[0].expires_at.map(rfc3339).unwrap_or_default();
    let verb = if dry_run { "Would give" } else { "Gave" };
    say!(
        "{verb} {} key(s) without an expiry an expiry of {days} days ({when}):",
        changed.len()
    );
    for row in &changed {
        say!("  #{:<5} {}", row.id, printable(&row.name));
    }
    if dry_run {
        say!("Dry run: nothing was changed. Run again without --dry-run to apply.");
    }
    Ok(())
}

/// `keygate keys seed-test`: the guide's five test keys.
pub async fn seed_test(keyring: &Keyring) -> anyhow::Result<()> {
    let choices: [(&str, CreateKey); 5] = [
        (
            "Test Key - Expired",
            CreateKey {
                expires_days: Some(1),
                ..Default::default()
            },
        ),
        (
            "Test Key - 1 Hour",
            CreateKey {
                expires_hours: Some(1),
                ..Default::default()
            },
        ),
        (
            "Test Key - 1 Day",
            CreateKey {
                expires_days: Some(1),
                ..Default::default()
            },
        ),
        (
            "Test Key - 7 Days",
            CreateKey {
                expires_days: Some(7),
                ..Default::default()
            },
        ),
        ("Test Key - Never", CreateKey::default()),
    ];
    say!(
        "{:<6} {:<20} {:<9} {:<26} key",
        "id",
        "name",
        "status",
        "expires_at"
    );
    for (name, request) in choices {
        let request = CreateKey {
            name: name.into(),
            description: Some("created by keygate keys seed-test".into()),
            ..request
        };
        let (mut row, secret) = keyring.create(&request, &Actor::cli()).await?;
        if name.ends_with("Expired") {
            let a_day_ago = rfc3339(keyring.now() - MS_PER_DAY);
            let patch = KeyPatch {
                expires_at: Some(Some(a_day_ago)),
                ..Default::default()
            };
            row = keyring.update(row.id, &patch, &Actor::cli()).await?;
        }
        let view = keyring.view(&row);
        let expires = view
            .expires_at
            .map(rfc3339)
            .unwrap_or_else(|| "never".into());
        say!(
            "{:<6} {:<20} {:<9} {:<26} {secret}",
            view.id,
            printable(&view.name),
            view.status.as_str(),
            expires
        );
    }
    Ok(())
}
