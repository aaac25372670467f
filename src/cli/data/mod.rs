//! `keygate data export|import`: the JSON file (a `metadata` block, then a `data` block of
//! rows), sanitizing, conflict choices and prompts, progress and summaries. The SQL is in
//! `store::transfer`; rows are streamed both ways, never all held in memory.

mod backup;
mod export;
mod import;
mod parse;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{anyhow, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

pub use backup::backup;
pub use export::export;
pub use import::import;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Output file (default: keygate-export-YYYY-MM-DD.json); never overwritten.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Comma-separated: upstreams, apikeys, logs.
    #[arg(long, default_value = "upstreams,apikeys,logs")]
    pub types: String,
    /// Drop key hashes, encrypted keys and upstream credentials, mask IPs, redact credentials
    /// from error messages.
    #[arg(long)]
    pub sanitize: bool,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The export file to read.
    #[arg(long)]
    pub input: PathBuf,
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

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The snapshot file to write (mode 0600); an existing file is refused without --force.
    #[arg(long)]
    pub output: PathBuf,
    /// Replace --output if it exists.
    #[arg(long)]
    pub force: bool,
}

/// The version of the file layout this binary writes. Version 2 added the call logs' `cost`
/// and `cached_tokens`, and the keys' restriction lists and tags (`allowed_models`,
/// `allowed_clients`, `allowed_ips`, `allowed_endpoints`, `tags`). Version 3 added the keys'
/// limits (`limits::Limits::FIELDS`). Version 4 added the upstreams (SPEC §12), the keys'
/// `upstream_ids` and `permissions`, renamed the call logs' `cached_tokens` to
/// `cache_read_tokens` (older files' are read as such) and added their `cache_write_tokens`,
/// `upstream_id` and `attempts`.
const FORMAT_VERSION: u32 = 4;
/// The oldest version this binary reads (its logs import at cost 0, its keys without
/// restrictions or limits).
const OLDEST_FORMAT_VERSION: u32 = 1;

/// What an export can hold, in the order it is written (keys before the logs that refer to them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum DataType {
    /// Before the keys bound to them.
    Upstreams,
    ApiKeys,
    Logs,
}

impl DataType {
    fn name(self) -> &'static str {
        match self {
            DataType::Upstreams => "upstreams",
            DataType::ApiKeys => "apikeys",
            DataType::Logs => "logs",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [DataType::Upstreams, DataType::ApiKeys, DataType::Logs]
            .into_iter()
            .find(|t| t.name() == text)
    }
}

const VALID_TYPES: &str = "upstreams, apikeys, logs";

fn parse_types(text: &str) -> anyhow::Result<Vec<DataType>> {
    let mut types = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let data_type = DataType::parse(name).ok_or_else(|| {
            anyhow!("--types: unknown type `{name}`; valid types are: {VALID_TYPES}")
        })?;
        if !types.contains(&data_type) {
            types.push(data_type);
        }
    }
    if types.is_empty() {
        bail!("--types: name at least one type: {VALID_TYPES}");
    }
    types.sort();
    Ok(types)
}

/// The file's `metadata` block.
#[derive(Debug, Serialize, Deserialize)]
struct Metadata {
    format_version: u32,
    #[serde(default)]
    keygate_version: String,
    #[serde(default)]
    exported_at: String,
    #[serde(default)]
    counts: BTreeMap<String, u64>,
    #[serde(default)]
    sanitized: bool,
    #[serde(default)]
    types: Vec<String>,
}

/// A progress bar on stderr when it is a terminal; hidden otherwise (pipes, logs, tests).
fn progress_bar(total: u64, verb: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} rows ({eta} left)")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(verb);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_checked_deduplicated_and_ordered() {
        assert_eq!(
            parse_types("logs, apikeys,logs").unwrap(),
            [DataType::ApiKeys, DataType::Logs]
        );
        assert_eq!(
            parse_types("apikeys,upstreams").unwrap(),
            [DataType::Upstreams, DataType::ApiKeys]
        );
        let err = parse_types("apikeys,users").unwrap_err().to_string();
        assert!(
            err.contains("`users`") && err.contains("upstreams, apikeys, logs"),
            "{err}"
        );
        assert!(parse_types(" , ").is_err());
    }
}
