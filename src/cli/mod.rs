//! The command line: `keygate serve` (the default), and the commands that work on the store
//! directly, with or without the server running, through the same key operations.

pub mod audit;
pub mod data;
mod expiry;
pub mod healthcheck;
pub mod keys;
pub mod logs;
pub mod menu;
pub mod output;
pub mod upstreams;

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
    /// Exit 0 when the keygate serving at KEYGATE_LISTEN answers /healthz with 200, else 1
    /// (for container health checks; a wildcard address is asked on loopback).
    Healthcheck,
    /// The audit log of admin changes, newest first.
    Audit(audit::AuditArgs),
    /// Data migrations.
    #[command(subcommand)]
    Migrate(MigrateCommand),
    /// Export and import keys and call logs (moving between machines), and back up the
    /// database.
    #[command(subcommand)]
    Data(DataCommand),
    /// The upstreams requests are relayed to (SPEC §12): list, add, edit, enable, disable,
    /// remove; a running server picks changes up within a second.
    #[command(subcommand)]
    Upstreams(upstreams::UpstreamsCommand),
    /// Call-log maintenance: prune old rows, give disk space back.
    #[command(subcommand)]
    Logs(logs::LogsCommand),
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Write keys and/or call logs to a JSON file.
    Export(data::ExportArgs),
    /// Read a JSON export into this database, in one transaction.
    Import(data::ImportArgs),
    /// Write a consistent snapshot of the database (while the server keeps serving) to a new
    /// private file; restore by starting keygate on it.
    Backup(data::BackupArgs),
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
        Command::Healthcheck => anyhow::bail!("`healthcheck` is run by main"),
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
        Command::Data(DataCommand::Backup(args)) => data::backup(&keyring, &args).await,
        Command::Logs(command) => logs::run(&keyring, command).await,
        Command::Audit(args) => audit::run(&keyring, &args).await,
        Command::Upstreams(command) => upstreams::run(&keyring, &config, command).await,
    }
}
