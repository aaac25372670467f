//! The command line: `keygate serve` (the default), and the commands that work on the store
//! directly, with or without the server running, through the same key operations.

pub mod audit;
pub mod data;
mod expiry;
pub mod keys;
pub mod menu;

use clap::{Parser, Subcommand};

use crate::clock::Clock;
use crate::config::{Config, ConfigArgs};
use crate::key_ops::Keyring;

#[derive(Parser, Debug)]
#[command(
    name = "keygate",
    version,
    about = "API key gateway for OpenAI-compatible LLM APIs"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway (the default when no command is given).
    Serve,
    /// Manage API keys; with no subcommand, an interactive menu (on a terminal).
    Keys {
        #[command(subcommand)]
        command: Option<keys::KeysCommand>,
    },
    /// The audit log of admin changes, newest first.
    Audit(audit::AuditArgs),
    /// Data migrations.
    #[command(subcommand)]
    Migrate(MigrateCommand),
    /// Export and import keys and call logs (backups, moving between machines).
    #[command(subcommand)]
    Data(DataCommand),
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Write keys and/or call logs to a JSON file.
    Export(data::ExportArgs),
    /// Read a JSON export into this database, in one transaction.
    Import(data::ImportArgs),
}

#[derive(Subcommand, Debug)]
pub enum MigrateCommand {
    /// Give every key without an expiry (fixed mode, not revoked) one N days from now.
    /// Keys that already expire are untouched, so running it twice changes nothing.
    ApikeyExpiry {
        /// Days from now until the new expiry.
        #[arg(long, default_value_t = 30)]
        days: i64,
        /// Show what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Runs a command other than `serve`.
pub async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    let keyring = Keyring::open(&config, Clock::System).await?;
    match command {
        Command::Serve => anyhow::bail!("`serve` is run by main"),
        Command::Keys {
            command: Some(command),
        } => keys::run(&keyring, command).await,
        Command::Keys { command: None } => menu::run(&keyring).await,
        Command::Migrate(MigrateCommand::ApikeyExpiry { days, dry_run }) => {
            expiry::migrate_expiry(&keyring, days, dry_run).await
        }
        Command::Data(DataCommand::Export(args)) => {
            data::export(&keyring, &args, config.upstream_api_key.as_deref()).await
        }
        Command::Data(DataCommand::Import(args)) => data::import(&keyring, &args).await,
        Command::Audit(args) => audit::run(&keyring, &args).await,
    }
}
