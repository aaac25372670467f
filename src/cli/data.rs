//! `keygate data export|import`: JSON backups of keys and call logs.

use clap::Args;

use crate::key_ops::Keyring;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Output file (default: keygate-export-YYYY-MM-DD.json).
    #[arg(long)]
    pub output: Option<std::path::PathBuf>,
    /// Comma-separated: apikeys, logs.
    #[arg(long, default_value = "apikeys,logs")]
    pub types: String,
    /// Drop key hashes and encrypted keys, mask IPs.
    #[arg(long)]
    pub sanitize: bool,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The export file to read.
    #[arg(long)]
    pub input: std::path::PathBuf,
    /// Keep existing rows on conflict.
    #[arg(long, conflicts_with = "force")]
    pub skip_conflicts: bool,
    /// Overwrite existing rows on conflict.
    #[arg(long)]
    pub force: bool,
    /// Report what would happen; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn export(_keyring: &Keyring, _args: &ExportArgs) -> anyhow::Result<()> {
    anyhow::bail!("data export is being written")
}

pub async fn import(_keyring: &Keyring, _args: &ImportArgs) -> anyhow::Result<()> {
    anyhow::bail!("data import is being written")
}
