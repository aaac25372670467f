//! `keygate keys` with no subcommand: the interactive menu of the seeds (view, change expiry,
//! renew expiring keys, delete). Without a terminal it prints help instead of waiting.

use crate::cli::output::say;
use std::io::IsTerminal;

use clap::CommandFactory;
use dialoguer::theme::ColorfulTheme;
use dialoguer::{Confirm, Input, Select};

use super::keys::{describe_expiry, parse_expiry, print_keys, printable};
use super::Cli;
use crate::audit::Actor;
use crate::clock::{rfc3339, MS_PER_DAY};
use crate::key_ops::{KeyPatch, KeyView, Keyring, RenewExpiring};
use crate::store::keys::KeyFilter;
use crate::store::{self, Page};

const EXPIRY_CHOICES: [(&str, &str); 8] = [
    ("1 hour", "1h"),
    ("1 day", "1d"),
    ("7 days", "7d"),
    ("30 days", "30d"),
    ("90 days", "90d"),
    ("365 days", "365d"),
    ("Never expires", "never"),
    ("Custom date-time", ""),
];

pub async fn run(keyring: &Keyring) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        let mut cli = Cli::command();
        if let Some(keys) = cli.find_subcommand_mut("keys") {
            keys.print_help()?;
        }
        say!("\n(The interactive menu needs a terminal; use the subcommands above in scripts.)");
        return Ok(());
    }
    let theme = ColorfulTheme::default();
    loop {
        let items = [
            "📋 View all API keys",
            "🔧 Change a key's expiry",
            "🔄 Renew keys expiring within 7 days",
            "🗑️  Delete a key",
            "🚪 Exit",
        ];
        let choice = Select::with_theme(&theme)
            .with_prompt("keygate keys")
            .items(items)
            .default(0)
            .interact_opt()?;
        match choice {
            Some(0) => print_keys(&all_keys(keyring).await?, false)?,
            Some(1) => change_expiry(keyring, &theme).await?,
            Some(2) => renew_expiring(keyring, &theme).await?,
            Some(3) => delete(keyring, &theme).await?,
            _ => return Ok(()),
        }
        say!();
    }
}

async fn all_keys(keyring: &Keyring) -> anyhow::Result<Vec<KeyView>> {
    let mut views = Vec::new();
    let mut page = Page {
        page: 1,
        page_size: 200,
    };
    loop {
        let (rows, total) = keyring.list(&KeyFilter::default(), page).await?;
        views.extend(rows.iter().map(|row| keyring.view(row)));
        if views.len() as i64 >= total || rows.is_empty() {
            return Ok(views);
        }
        page.page += 1;
    }
}

fn label(view: &KeyView) -> String {
    format!(
        "#{} {} — {}, {}",
        view.id,
        printable(&view.name),
        view.status.as_str(),
        describe_expiry(view)
    )
}

async fn pick_key(
    keyring: &Keyring,
    theme: &ColorfulTheme,
    prompt: &str,
) -> anyhow::Result<Option<KeyView>> {
    let views = all_keys(keyring).await?;
    if views.is_empty() {
        say!("No keys yet.");
        return Ok(None);
    }
    let labels: Vec<String> = views.iter().map(label).collect();
    let picked = Select::with_theme(theme)
        .with_prompt(prompt)
        .items(&labels)
        .default(0)
        .interact_opt()?;
    Ok(picked.map(|i| views[i].clone()))
}

async fn change_expiry(keyring: &Keyring, theme: &ColorfulTheme) -> anyhow::Result<()> {
    let Some(view) = pick_key(keyring, theme, "Which key?").await? else {
        return Ok(());
    };
    let labels: Vec<&str> = EXPIRY_CHOICES.iter().map(|(label, _)| *label).collect();
    let Some(choice) = Select::with_theme(theme)
        .with_prompt("New expiry")
        .items(&labels)
        .default(3)
        .interact_opt()?
    else {
        return Ok(());
    };
    let text = match EXPIRY_CHOICES[choice].1 {
        "" => Input::<String>::with_theme(theme)
            .with_prompt("Date-time (RFC 3339, e.g. 2027-01-31T00:00:00Z)")
            .interact_text()?,
        preset => preset.to_string(),
    };
    let expires_at = match parse_expiry(&text, keyring.now()) {
        Ok(at) => at,
        Err(err) => {
            say!("{err}");
            return Ok(());
        }
    };
    let patch = KeyPatch {
        expires_at: Some(expires_at.map(rfc3339)),
        ..Default::default()
    };
    let row = keyring.update(view.id, &patch, &Actor::cli()).await?;
    say!(
        "Key #{} now {}.",
        view.id,
        describe_expiry(&keyring.view(&row))
    );
    Ok(())
}

async fn renew_expiring(keyring: &Keyring, theme: &ColorfulTheme) -> anyhow::Result<()> {
    let now = keyring.now();
    let expiring = store::keys::expiring_between(&keyring.pool, now, now + 7 * MS_PER_DAY).await?;
    if expiring.is_empty() {
        say!("No key expires within 7 days.");
        return Ok(());
    }
    let views: Vec<KeyView> = expiring.iter().map(|row| keyring.view(row)).collect();
    print_keys(&views, false)?;
    let how = [
        "Renew all by 30 days",
        "Renew all by 90 days",
        "Choose one by one",
        "Back",
    ];
    let renew = |ids: Vec<i64>, days: i64| RenewExpiring {
        within_days: Some(7),
        extend_days: Some(days),
        ids: Some(ids),
    };
    match Select::with_theme(theme)
        .with_prompt("Renew")
        .items(how)
        .default(0)
        .interact_opt()?
    {
        Some(choice @ (0 | 1)) => {
            let days = if choice == 0 { 30 } else { 90 };
            let batch = keyring
                .renew_expiring(
                    &renew(views.iter().map(|v| v.id).collect(), days),
                    &Actor::cli(),
                )
                .await?;
            say!("Renewed {} key(s) by {days} days.", batch.renewed.len());
        }
        Some(2) => {
            for view in &views {
                let options = ["+30 days", "+90 days", "Skip"];
                let prompt = label(view);
                match Select::with_theme(theme)
                    .with_prompt(prompt)
                    .items(options)
                    .default(0)
                    .interact_opt()?
                {
                    Some(choice @ (0 | 1)) => {
                        let days = if choice == 0 { 30 } else { 90 };
                        keyring
                            .renew_expiring(&renew(vec![view.id], days), &Actor::cli())
                            .await?;
                        say!("Key #{} renewed by {days} days.", view.id);
                    }
                    Some(_) => continue,
                    None => break,
                }
            }
        }
        _ => {}
    }
    Ok(())
}

async fn delete(keyring: &Keyring, theme: &ColorfulTheme) -> anyhow::Result<()> {
    let Some(view) = pick_key(keyring, theme, "Delete which key?").await? else {
        return Ok(());
    };
    let question = format!(
        "Delete key #{} '{}' and all its call logs? This cannot be undone",
        view.id,
        printable(&view.name)
    );
    if Confirm::with_theme(theme)
        .with_prompt(question)
        .default(false)
        .interact()?
    {
        keyring.delete(view.id, &Actor::cli()).await?;
        say!("Key #{} deleted.", view.id);
    } else {
        say!("Not deleted.");
    }
    Ok(())
}
