//! `keygate data export|import`: the JSON file (a `metadata` block, then a `data` block of
//! rows), sanitizing, conflict choices and prompts, progress and summaries. The SQL is in
//! `store::transfer`; rows are streamed both ways, never all held in memory.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use futures_util::TryStreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use sqlx::SqliteConnection;
use tokio::sync::mpsc;

use crate::clock::{parse_rfc3339, rfc3339};
use crate::key_ops::Keyring;
use crate::keys;
use crate::store;
use crate::store::keys::KeyRow;
use crate::store::logs::LogRow;
use crate::store::transfer::{self, KeyClash};

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Output file (default: keygate-export-YYYY-MM-DD.json); never overwritten.
    #[arg(long)]
    pub output: Option<PathBuf>,
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

/// The version of the file layout this binary writes and reads.
const FORMAT_VERSION: u32 = 1;
/// Rows an export reads per statement.
const ROWS_PER_READ: i64 = 10_000;
/// Conflicts named in the error that refuses an import.
const CONFLICTS_LISTED: usize = 5;

/// What an export can hold, in the order it is written (keys before the logs that refer to them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum DataType {
    ApiKeys,
    Logs,
}

impl DataType {
    fn name(self) -> &'static str {
        match self {
            DataType::ApiKeys => "apikeys",
            DataType::Logs => "logs",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [DataType::ApiKeys, DataType::Logs]
            .into_iter()
            .find(|t| t.name() == text)
    }
}

const VALID_TYPES: &str = "apikeys, logs";

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

// ---------------------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------------------

pub async fn export(keyring: &Keyring, args: &ExportArgs) -> anyhow::Result<()> {
    let types = parse_types(&args.types)?;
    let now = keyring.now();
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("keygate-export-{}.json", &rfc3339(now)[..10])));
    let file = create_private(&path)?;
    let counts = match write_export(keyring, &types, args.sanitize, now, file).await {
        Ok(counts) => counts,
        Err(err) => {
            // A partial export is worse than none: it would import as a smaller backup.
            let _ = std::fs::remove_file(&path);
            return Err(err.context(format!("the export failed; {} was removed", path.display())));
        }
    };
    let counted = counts
        .iter()
        .map(|(data_type, n)| match data_type {
            DataType::ApiKeys => format!("{n} API key(s)"),
            DataType::Logs => format!("{n} call log(s)"),
        })
        .collect::<Vec<_>>()
        .join(" and ");
    let note = if args.sanitize {
        "sanitized: no key hashes or encrypted keys, IP addresses masked; keys imported from it \
         cannot authenticate until they are regenerated"
    } else {
        "not sanitized: it holds key hashes and encrypted keys, keep it private"
    };
    println!("Exported {counted} to {} ({note}).", path.display());
    Ok(())
}

/// Creates `path` for writing with mode 0600; refuses to replace an existing file.
fn create_private(path: &Path) -> anyhow::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|err| {
        if err.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow!(
                "{} already exists; pass another --output or delete it",
                path.display()
            )
        } else {
            anyhow!(err).context(format!("cannot create {}", path.display()))
        }
    })
}

/// Writes the export, one row per line, from one snapshot of the database.
async fn write_export(
    keyring: &Keyring,
    types: &[DataType],
    sanitize: bool,
    now: i64,
    file: File,
) -> anyhow::Result<Vec<(DataType, u64)>> {
    let mut tx = transfer::begin_read(&keyring.pool).await?;
    let mut counts = Vec::new();
    for &data_type in types {
        let n = match data_type {
            DataType::ApiKeys => transfer::count_keys(&mut tx).await?,
            DataType::Logs => transfer::count_logs(&mut tx).await?,
        };
        counts.push((data_type, u64::try_from(n).unwrap_or_default()));
    }
    let metadata = Metadata {
        format_version: FORMAT_VERSION,
        keygate_version: env!("CARGO_PKG_VERSION").to_string(),
        exported_at: rfc3339(now),
        counts: counts
            .iter()
            .map(|(t, n)| (t.name().to_string(), *n))
            .collect(),
        sanitized: sanitize,
        types: types.iter().map(|t| t.name().to_string()).collect(),
    };
    let progress = progress_bar(counts.iter().map(|(_, n)| n).sum(), "exporting");
    let mut out = BufWriter::new(file);
    write!(out, "{{\n  \"metadata\": ")?;
    serde_json::to_writer(&mut out, &metadata)?;
    write!(out, ",\n  \"data\": {{")?;
    for (i, &(data_type, expected)) in counts.iter().enumerate() {
        let comma = if i > 0 { "," } else { "" };
        write!(out, "{comma}\n    \"{}\": [", data_type.name())?;
        let mut written = 0u64;
        // In slices by id, each streamed row by row: one statement never runs for the
        // whole export, and the snapshot keeps the slices consistent.
        let mut after = i64::MIN;
        loop {
            let before = written;
            match data_type {
                DataType::ApiKeys => {
                    let mut rows = transfer::keys_after(&mut tx, after, ROWS_PER_READ);
                    while let Some(row) = rows.try_next().await? {
                        after = row.id;
                        write_row(
                            &mut out,
                            written,
                            &ExportedKey {
                                row: &row,
                                sanitize,
                            },
                        )?;
                        written += 1;
                    }
                }
                DataType::Logs => {
                    let mut rows = transfer::logs_after(&mut tx, after, ROWS_PER_READ);
                    while let Some(mut row) = rows.try_next().await? {
                        after = row.id;
                        if sanitize {
                            row.ip_address = row.ip_address.as_deref().and_then(mask_ip);
                        }
                        write_row(&mut out, written, &row)?;
                        written += 1;
                    }
                }
            }
            progress.inc(written - before);
            if written - before < ROWS_PER_READ as u64 {
                break;
            }
        }
        if written != expected {
            bail!("counted {expected} {} but read {written}", data_type.name());
        }
        write!(out, "{}]", if written > 0 { "\n    " } else { "" })?;
    }
    write!(out, "\n  }}\n}}\n")?;
    let file = out.into_inner().map_err(|err| anyhow!(err.into_error()))?;
    file.sync_all()?;
    tx.rollback().await?;
    progress.finish_and_clear();
    Ok(counts)
}

fn write_row(out: &mut impl Write, index: u64, row: &impl Serialize) -> anyhow::Result<()> {
    write!(out, "{}\n      ", if index > 0 { "," } else { "" })?;
    serde_json::to_writer(&mut *out, row)?;
    Ok(())
}

/// A key as the file holds it: every column by name, times in RFC 3339; sanitized, without
/// `key_hash` and `encrypted_key`.
struct ExportedKey<'a> {
    row: &'a KeyRow,
    sanitize: bool,
}

impl Serialize for ExportedKey<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.row;
        let time = |ms: Option<i64>| ms.map(rfc3339);
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("id", &r.id)?;
        if !self.sanitize {
            map.serialize_entry("key_hash", &r.key_hash)?;
            map.serialize_entry("encrypted_key", &r.encrypted_key)?;
        }
        map.serialize_entry("key_preview", &r.key_preview)?;
        map.serialize_entry("name", &r.name)?;
        map.serialize_entry("description", &r.description)?;
        map.serialize_entry("created_at", &rfc3339(r.created_at))?;
        map.serialize_entry("updated_at", &rfc3339(r.updated_at))?;
        map.serialize_entry("expires_at", &time(r.expires_at))?;
        map.serialize_entry("expiration_mode", &r.expiration_mode)?;
        map.serialize_entry("activation_period", &r.activation_period)?;
        map.serialize_entry("activation_unit", &r.activation_unit)?;
        map.serialize_entry("activated_at", &time(r.activated_at))?;
        map.serialize_entry("is_active", &r.is_active)?;
        map.serialize_entry("revoked_at", &time(r.revoked_at))?;
        map.serialize_entry("usage_count", &r.usage_count)?;
        map.serialize_entry("last_used_at", &time(r.last_used_at))?;
        map.end()
    }
}

/// An IP address with its host part dropped: IPv4 `a.b.c.0`, IPv6 its first three groups and
/// `::`. Text that is not an IP address is dropped whole.
fn mask_ip(text: &str) -> Option<String> {
    match text.trim().parse::<IpAddr>().ok()? {
        IpAddr::V4(ip) => {
            let [a, b, c, _] = ip.octets();
            Some(format!("{a}.{b}.{c}.0"))
        }
        IpAddr::V6(ip) => {
            let s = ip.segments();
            Some(format!("{:x}:{:x}:{:x}::", s[0], s[1], s[2]))
        }
    }
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

// ---------------------------------------------------------------------------------------
// Import
// ---------------------------------------------------------------------------------------

pub async fn import(keyring: &Keyring, args: &ImportArgs) -> anyhow::Result<()> {
    let file = args.input.display().to_string();
    let resolve = if args.skip_conflicts {
        Resolve::Skip
    } else if args.force {
        Resolve::Overwrite
    } else if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        // Ask before the write transaction starts, so no lock is held while a person thinks.
        let mut asking = Importer::new(keyring, Pass::Ask, Resolve::Ask(Choices::default()));
        let mut conn = keyring.pool.acquire().await?;
        read_into(&args.input, &mut conn, &mut asking)
            .await
            .with_context(|| format!("cannot import {file}; nothing was changed"))?;
        asking.resolve
    } else {
        Resolve::Refuse
    };
    let mut importer = Importer::new(keyring, Pass::Write, resolve);
    // The write lock is held from the start, so the conflicts checked stay true until commit.
    let mut tx = store::begin_write(&keyring.pool)
        .await
        .context("cannot start the import transaction")?;
    read_into(&args.input, &mut tx, &mut importer)
        .await
        .with_context(|| format!("cannot import {file}; nothing was changed"))?;
    if importer.unresolved.count > 0 {
        tx.rollback().await?;
        bail!(
            "{} row(s) of {file} already exist in this database: {}. Nothing was imported. \
             Pass --skip-conflicts to keep the existing rows or --force to overwrite them \
             (in a terminal, keygate asks row by row).",
            importer.unresolved.count,
            importer.unresolved.listed()
        );
    }
    if args.dry_run {
        tx.rollback().await?;
        println!(
            "Dry run of {file}: would import {}. Nothing was changed.",
            importer.tally.describe(&importer.types)
        );
    } else {
        tx.commit().await.context("cannot commit the import")?;
        keyring.cache.clear();
        println!(
            "Imported {file}: {}.",
            importer.tally.describe(&importer.types)
        );
    }
    if importer.tally.keys_to_regenerate > 0 {
        println!(
            "{} new key(s) come without their secret (a sanitized export): they cannot authenticate \
             until regenerated (`keygate keys regenerate <id>`, POST /api/api-keys/{{id}}/regenerate, \
             or Regenerate in the console).",
            importer.tally.keys_to_regenerate
        );
    }
    if importer.tally.keys_merged > 0 {
        println!(
            "{} key(s) of the file have the same secret as an existing key under another id: that \
             key stands for them, and their call logs go to it.",
            importer.tally.keys_merged
        );
    }
    if importer.tally.undecryptable > 0 {
        println!(
            "{} key(s) have an encrypted copy that this server's Fernet key cannot read (exported \
             with another KEYGATE_FERNET_KEY?); they still authenticate by their hash.",
            importer.tally.undecryptable
        );
    }
    Ok(())
}

/// Streams the file's rows into `importer`: a blocking thread parses and sends one row at a
/// time over a bounded channel; this side applies them. Either side's error stops both.
async fn read_into(
    path: &Path,
    conn: &mut SqliteConnection,
    importer: &mut Importer<'_>,
) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let (sink, mut items) = mpsc::channel(256);
    let reader = tokio::task::spawn_blocking(move || parse_export(BufReader::new(file), &sink));
    let applied = async {
        while let Some(item) = items.recv().await {
            importer.apply(conn, item).await?;
        }
        anyhow::Ok(())
    }
    .await;
    drop(items);
    importer.progress.finish_and_clear();
    let parsed = reader
        .await
        .context("the file reader stopped unexpectedly")?;
    applied?;
    parsed.context("not a valid keygate export")
}

/// One thing read from the file, in file order.
enum Item {
    Metadata(Metadata),
    Key(usize, ImportedKey),
    Log(usize, LogRow),
}

/// A key row of the file. `has_secret` is false for sanitized rows, whose `key_hash` is a
/// fresh random one that no key matches.
struct ImportedKey {
    row: KeyRow,
    has_secret: bool,
}

/// Which pass over the file: asking about conflicts (at a terminal, before writing), or writing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Ask,
    Write,
}

/// What happens to a row that already exists.
enum Resolve {
    Skip,
    Overwrite,
    /// Not a terminal and no flag: nothing is written; the error names the flags.
    Refuse,
    /// The answers given at the terminal.
    Ask(Choices),
}

#[derive(Default)]
struct Choices {
    keys: HashMap<i64, bool>,
    logs: HashMap<i64, bool>,
    /// "a(ll)" (true) or "s(kip all)" (false): the answer for every later conflict.
    rest: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Conflict {
    Key(i64),
    Log(i64),
}

#[derive(Default)]
struct Counts {
    new: u64,
    overwritten: u64,
    skipped: u64,
}

#[derive(Default)]
struct Tally {
    keys: Counts,
    logs: Counts,
    keys_to_regenerate: u64,
    keys_merged: u64,
    undecryptable: u64,
}

impl Tally {
    fn describe(&self, types: &[DataType]) -> String {
        types
            .iter()
            .map(|t| {
                let (what, c) = match t {
                    DataType::ApiKeys => ("API keys", &self.keys),
                    DataType::Logs => ("call logs", &self.logs),
                };
                format!(
                    "{what}: {} new, {} overwritten, {} skipped",
                    c.new, c.overwritten, c.skipped
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Conflicts left without an answer; the first few are named in the error.
#[derive(Default)]
struct Unresolved {
    count: u64,
    first: Vec<String>,
}

impl Unresolved {
    fn add(&mut self, what: String) {
        self.count += 1;
        if self.first.len() < CONFLICTS_LISTED {
            self.first.push(what);
        }
    }

    fn listed(&self) -> String {
        let more = self.count - self.first.len() as u64;
        let mut text = self.first.join(", ");
        if more > 0 {
            text.push_str(&format!(" and {more} more"));
        }
        text
    }
}

/// Applies the file's rows to the database, one at a time, and counts what it did.
struct Importer<'a> {
    keyring: &'a Keyring,
    pass: Pass,
    resolve: Resolve,
    /// The types the file's metadata lists (for the summary).
    types: Vec<DataType>,
    progress: ProgressBar,
    /// Key ids known to exist in the database (or to be written by this import).
    known_keys: HashSet<i64>,
    /// Imported key id → the existing key with the same secret that stands for it.
    merged: HashMap<i64, i64>,
    tally: Tally,
    unresolved: Unresolved,
}

impl<'a> Importer<'a> {
    fn new(keyring: &'a Keyring, pass: Pass, resolve: Resolve) -> Self {
        Importer {
            keyring,
            pass,
            resolve,
            types: vec![DataType::ApiKeys, DataType::Logs],
            progress: ProgressBar::hidden(),
            known_keys: HashSet::new(),
            merged: HashMap::new(),
            tally: Tally::default(),
            unresolved: Unresolved::default(),
        }
    }

    async fn apply(&mut self, conn: &mut SqliteConnection, item: Item) -> anyhow::Result<()> {
        match item {
            Item::Metadata(metadata) => {
                let types: Vec<DataType> = metadata
                    .types
                    .iter()
                    .filter_map(|t| DataType::parse(t))
                    .collect();
                if !types.is_empty() {
                    self.types = types;
                }
                let verb = match self.pass {
                    Pass::Ask => "checking",
                    Pass::Write => "importing",
                };
                self.progress = progress_bar(metadata.counts.values().sum(), verb);
            }
            Item::Key(index, key) => {
                self.key(conn, index, key).await?;
                self.progress.inc(1);
            }
            Item::Log(index, log) => {
                self.log(conn, index, log).await?;
                self.progress.inc(1);
            }
        }
        Ok(())
    }

    async fn key(
        &mut self,
        conn: &mut SqliteConnection,
        index: usize,
        key: ImportedKey,
    ) -> anyhow::Result<()> {
        let ImportedKey {
            mut row,
            has_secret,
        } = key;
        let at = format!("data.apikeys[{index}] (id {})", row.id);
        let clash = transfer::key_clash(conn, row.id, &row.key_hash)
            .await
            .with_context(|| at.clone())?;
        if clash.is_none() {
            self.tally.keys.new += 1;
            if !has_secret {
                self.tally.keys_to_regenerate += 1;
            }
            self.check_encrypted_copy(&row, has_secret);
            self.known_keys.insert(row.id);
            if self.pass == Pass::Write {
                transfer::insert_key(conn, &row)
                    .await
                    .with_context(|| at.clone())?;
            }
            return Ok(());
        }
        let what = describe_clash(&row, &clash);
        match self.decide(Conflict::Key(row.id), &what)? {
            None => {
                self.unresolved.add(what);
                self.stand_in(&row, &clash);
            }
            Some(false) => {
                self.tally.keys.skipped += 1;
                self.stand_in(&row, &clash);
            }
            Some(true) => {
                let target = match (clash.same_id, clash.same_secret) {
                    (Some(_), Some(other)) => bail!(
                        "{at}: key #{} exists and its secret belongs to key #{} '{}'; one imported key \
                         cannot overwrite two: delete one of them first, or pass --skip-conflicts",
                        row.id,
                        other.id,
                        other.name
                    ),
                    (Some(existing), None) => existing,
                    (None, Some(other)) => {
                        self.merged.insert(row.id, other.id);
                        self.tally.keys_merged += 1;
                        other
                    }
                    (None, None) => return Ok(()),
                };
                if !has_secret {
                    // A sanitized row carries no secret: the existing key keeps its own.
                    row.key_hash = target.key_hash.clone();
                    row.encrypted_key = target.encrypted_key.clone();
                    row.key_preview = target.key_preview.clone();
                }
                self.check_encrypted_copy(&row, true);
                self.tally.keys.overwritten += 1;
                self.known_keys.insert(target.id);
                if self.pass == Pass::Write {
                    transfer::overwrite_key(conn, target.id, &row)
                        .await
                        .with_context(|| at.clone())?;
                }
            }
        }
        Ok(())
    }

    /// Which existing key stands for an imported key that was not written: the one with its
    /// id, else the one with its secret.
    fn stand_in(&mut self, row: &KeyRow, clash: &KeyClash) {
        match (&clash.same_id, &clash.same_secret) {
            (None, Some(other)) => {
                self.merged.insert(row.id, other.id);
                self.tally.keys_merged += 1;
                self.known_keys.insert(other.id);
            }
            _ => {
                self.known_keys.insert(row.id);
            }
        }
    }

    /// Counts encrypted copies this server's Fernet key cannot read back to the key's hash.
    fn check_encrypted_copy(&mut self, row: &KeyRow, has_secret: bool) {
        let Some(token) = row.encrypted_key.as_deref().filter(|_| has_secret) else {
            return;
        };
        let readable = self
            .keyring
            .fernet
            .decrypt(token)
            .ok()
            .and_then(|plain| String::from_utf8(plain).ok())
            .is_some_and(|secret| keys::hash_hex(&secret) == row.key_hash);
        if !readable {
            self.tally.undecryptable += 1;
        }
    }

    async fn log(
        &mut self,
        conn: &mut SqliteConnection,
        index: usize,
        mut row: LogRow,
    ) -> anyhow::Result<()> {
        let at = format!("data.logs[{index}] (id {})", row.id);
        if let Some(key_id) = row.api_key_id {
            let stand_in = self.merged.get(&key_id).copied().unwrap_or(key_id);
            row.api_key_id = Some(stand_in);
            if self.pass == Pass::Write && !self.key_known(conn, stand_in).await? {
                bail!(
                    "{at}: api_key_id {key_id} matches no key in this database or earlier in the file \
                     (export the keys with the logs: --types apikeys,logs)"
                );
            }
        }
        if !transfer::log_exists(conn, row.id)
            .await
            .with_context(|| at.clone())?
        {
            self.tally.logs.new += 1;
            if self.pass == Pass::Write {
                transfer::insert_log(conn, &row)
                    .await
                    .with_context(|| at.clone())?;
            }
            return Ok(());
        }
        let what = format!("call log #{}", row.id);
        match self.decide(Conflict::Log(row.id), &what)? {
            None => self.unresolved.add(what),
            Some(false) => self.tally.logs.skipped += 1,
            Some(true) => {
                self.tally.logs.overwritten += 1;
                if self.pass == Pass::Write {
                    transfer::overwrite_log(conn, &row)
                        .await
                        .with_context(|| at.clone())?;
                }
            }
        }
        Ok(())
    }

    async fn key_known(&mut self, conn: &mut SqliteConnection, id: i64) -> anyhow::Result<bool> {
        if self.known_keys.contains(&id) {
            return Ok(true);
        }
        let exists = transfer::key_exists(conn, id).await?;
        if exists {
            self.known_keys.insert(id);
        }
        Ok(exists)
    }

    /// Overwrite (Some(true)), keep the existing row (Some(false)), or no answer (None).
    fn decide(&mut self, conflict: Conflict, what: &str) -> anyhow::Result<Option<bool>> {
        let choices = match &mut self.resolve {
            Resolve::Skip => return Ok(Some(false)),
            Resolve::Overwrite => return Ok(Some(true)),
            Resolve::Refuse => return Ok(None),
            Resolve::Ask(choices) => choices,
        };
        let answered = match conflict {
            Conflict::Key(id) => choices.keys.get(&id),
            Conflict::Log(id) => choices.logs.get(&id),
        };
        if let Some(answer) = answered.copied().or(choices.rest) {
            return Ok(Some(answer));
        }
        if self.pass == Pass::Write {
            // A conflict that the asking pass did not see (the file repeats a row, or the
            // database changed since): refused like any unanswered one.
            return Ok(None);
        }
        let answer = self.progress.suspend(|| ask(what))?;
        let (overwrite, rest) = match answer {
            Answer::Yes => (true, None),
            Answer::No => (false, None),
            Answer::All => (true, Some(true)),
            Answer::SkipAll => (false, Some(false)),
        };
        choices.rest = rest;
        match conflict {
            Conflict::Key(id) => choices.keys.insert(id, overwrite),
            Conflict::Log(id) => choices.logs.insert(id, overwrite),
        };
        Ok(Some(overwrite))
    }
}

fn describe_clash(row: &KeyRow, clash: &KeyClash) -> String {
    match (&clash.same_id, &clash.same_secret) {
        (Some(existing), _) => format!("key #{} '{}'", existing.id, existing.name),
        (None, Some(other)) => format!(
            "key #{} '{}' (the same secret as key #{} '{}' here)",
            row.id, row.name, other.id, other.name
        ),
        (None, None) => format!("key #{}", row.id),
    }
}

enum Answer {
    Yes,
    No,
    All,
    SkipAll,
}

/// Asks on stderr whether to overwrite an existing row; reads the answer from stdin.
fn ask(what: &str) -> anyhow::Result<Answer> {
    let stdin = std::io::stdin();
    loop {
        eprint!("{what} already exists. Overwrite it? [y/N/a(ll)/s(kip all)] ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            bail!("no answer (end of input)");
        }
        match line.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" => return Ok(Answer::Yes),
            "" | "n" | "no" => return Ok(Answer::No),
            "a" | "all" => return Ok(Answer::All),
            "s" | "skip all" | "skip" => return Ok(Answer::SkipAll),
            _ => eprintln!("Answer y, n, a or s."),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading the file: a streaming parse that hands over one row at a time
// ---------------------------------------------------------------------------------------

/// Parses an export from `reader`, sending each row to `sink` as soon as it is read.
fn parse_export(reader: impl Read, sink: &mpsc::Sender<Item>) -> anyhow::Result<()> {
    let line = Cell::new(1);
    let row_error = RefCell::new(None);
    let reading = Reading {
        sink,
        line: &line,
        row_error: &row_error,
    };
    let mut de = serde_json::Deserializer::from_reader(LineCounter {
        inner: reader,
        line: &line,
    });
    let parsed = ExportSeed { reading }
        .deserialize(&mut de)
        .and_then(|()| de.end());
    match (parsed, row_error.take()) {
        (Ok(()), _) => Ok(()),
        // A row's own message already names its row, field and line.
        (Err(_), Some(row_error)) => Err(anyhow!(row_error)),
        (Err(err), None) => Err(err.into()),
    }
}

/// Counts the lines read so far, so a row's error can name the line the row ends on.
struct LineCounter<'a, R> {
    inner: R,
    line: &'a Cell<u64>,
}

impl<R: Read> Read for LineCounter<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let newlines = buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        self.line.set(self.line.get() + newlines);
        Ok(n)
    }
}

/// What every level of the parse shares: where rows go, the current line, and a bad row's
/// message (kept whole rather than wrapped in serde_json's position).
#[derive(Clone, Copy)]
struct Reading<'a> {
    sink: &'a mpsc::Sender<Item>,
    line: &'a Cell<u64>,
    row_error: &'a RefCell<Option<String>>,
}

impl Reading<'_> {
    fn send<E: de::Error>(self, item: Item) -> Result<(), E> {
        self.sink
            .blocking_send(item)
            .map_err(|_| E::custom("the import stopped"))
    }

    fn bad_row<E: de::Error>(self, message: String) -> E {
        *self.row_error.borrow_mut() = Some(message);
        E::custom("invalid row")
    }
}

/// The top level: `metadata` first (checked), then `data`; other fields are ignored.
struct ExportSeed<'a> {
    reading: Reading<'a>,
}

impl<'de> DeserializeSeed<'de> for ExportSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ExportSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a keygate export: an object with `metadata` and then `data`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut sanitized = None;
        let mut has_data = false;
        while let Some(field) = map.next_key::<String>()? {
            match field.as_str() {
                "metadata" if sanitized.is_none() => {
                    let metadata: Metadata = map.next_value()?;
                    if metadata.format_version != FORMAT_VERSION {
                        return Err(de::Error::custom(format_args!(
                            "metadata.format_version is {}, but this keygate ({}) reads version {FORMAT_VERSION}",
                            metadata.format_version,
                            env!("CARGO_PKG_VERSION")
                        )));
                    }
                    sanitized = Some(metadata.sanitized);
                    self.reading.send(Item::Metadata(metadata))?;
                }
                "data" if !has_data => {
                    let Some(sanitized) = sanitized else {
                        return Err(de::Error::custom(
                            "`metadata` must come before `data` (as keygate writes it)",
                        ));
                    };
                    map.next_value_seed(DataSeed {
                        reading: self.reading,
                        sanitized,
                    })?;
                    has_data = true;
                }
                "metadata" | "data" => {
                    return Err(de::Error::custom(format_args!("`{field}` appears twice")))
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if sanitized.is_none() {
            return Err(de::Error::custom("no `metadata` block"));
        }
        if !has_data {
            return Err(de::Error::custom("no `data` block"));
        }
        Ok(())
    }
}

/// The `data` block: an array of rows per type.
struct DataSeed<'a> {
    reading: Reading<'a>,
    sanitized: bool,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of row arrays: apikeys, logs")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(field) = map.next_key::<String>()? {
            let data_type = DataType::parse(&field).ok_or_else(|| {
                de::Error::custom(format_args!(
                    "unknown type `data.{field}`; valid types are: {VALID_TYPES}"
                ))
            })?;
            map.next_value_seed(RowsSeed {
                reading: self.reading,
                sanitized: self.sanitized,
                data_type,
            })?;
        }
        Ok(())
    }
}

/// One type's array: each row is read, checked field by field and sent on its own.
struct RowsSeed<'a> {
    reading: Reading<'a>,
    sanitized: bool,
    data_type: DataType,
}

impl<'de> DeserializeSeed<'de> for RowsSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an array of {} rows", self.data_type.name())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while let Some(object) = seq.next_element::<Map<String, Value>>()? {
            let mut fields = Fields::new(self.data_type, index, self.reading.line.get(), object);
            let item = match self.data_type {
                DataType::ApiKeys => fields.key(self.sanitized).map(|key| Item::Key(index, key)),
                DataType::Logs => fields.log().map(|log| Item::Log(index, log)),
            }
            .and_then(|item| fields.finish().map(|()| item))
            .map_err(|message| self.reading.bad_row(message))?;
            self.reading.send(item)?;
            index += 1;
        }
        Ok(())
    }
}

/// One row of the file, taken apart field by field so that an error names its row and field.
struct Fields {
    map: Map<String, Value>,
    at: String,
}

impl Fields {
    fn new(data_type: DataType, index: usize, line: u64, map: Map<String, Value>) -> Self {
        let name = data_type.name();
        let at = match map.get("id").and_then(Value::as_i64) {
            Some(id) => format!("data.{name}[{index}] (id {id}, line {line})"),
            None => format!("data.{name}[{index}] (line {line})"),
        };
        Fields { map, at }
    }

    fn error(&self, field: &str, why: impl fmt::Display) -> String {
        format!("{}: field `{field}`: {why}", self.at)
    }

    fn take<T: DeserializeOwned>(&mut self, field: &str) -> Result<T, String> {
        let value = self.map.remove(field);
        let missing = value.is_none();
        serde_json::from_value(value.unwrap_or(Value::Null)).map_err(|err| {
            if missing {
                self.error(field, "missing")
            } else {
                self.error(field, err)
            }
        })
    }

    fn time(&mut self, field: &str) -> Result<i64, String> {
        let text: String = self.take(field)?;
        parse_rfc3339(&text)
            .ok_or_else(|| self.error(field, format_args!("`{text}` is not an RFC 3339 date-time")))
    }

    fn opt_time(&mut self, field: &str) -> Result<Option<i64>, String> {
        let text: Option<String> = self.take(field)?;
        text.map(|text| {
            parse_rfc3339(&text).ok_or_else(|| {
                self.error(field, format_args!("`{text}` is not an RFC 3339 date-time"))
            })
        })
        .transpose()
    }

    fn one_of(&mut self, field: &str, allowed: &[&str]) -> Result<String, String> {
        let text: String = self.take(field)?;
        if allowed.contains(&text.as_str()) {
            Ok(text)
        } else {
            Err(self.error(
                field,
                format_args!("`{text}` is not one of: {}", allowed.join(", ")),
            ))
        }
    }

    fn key(&mut self, sanitized: bool) -> Result<ImportedKey, String> {
        let id = self.take("id")?;
        let key_hash: Option<String> = self.take("key_hash")?;
        let encrypted_key: Option<String> = self.take("encrypted_key")?;
        let secret = match key_hash.filter(|_| !sanitized) {
            Some(hash) => {
                if keys::decode_hash(&hash).map(hex::encode).as_deref() != Some(hash.as_str()) {
                    return Err(self.error("key_hash", "not a lowercase hex SHA-256 digest"));
                }
                Some((hash, encrypted_key))
            }
            None => None,
        };
        let has_secret = secret.is_some();
        // Without its secret a key gets a random hash that no presented key can match.
        let (key_hash, encrypted_key) =
            secret.unwrap_or_else(|| (keys::hash_hex(&keys::generate()), None));
        let activation_unit: Option<String> = self.take("activation_unit")?;
        if let Some(unit) = &activation_unit {
            if keys::ActivationUnit::parse(unit).is_none() {
                return Err(self.error(
                    "activation_unit",
                    format_args!("`{unit}` is not one of: hours, days"),
                ));
            }
        }
        let row = KeyRow {
            id,
            key_hash,
            encrypted_key,
            key_preview: self.take("key_preview")?,
            name: self.take("name")?,
            description: self.take("description")?,
            created_at: self.time("created_at")?,
            updated_at: self.time("updated_at")?,
            expires_at: self.opt_time("expires_at")?,
            expiration_mode: self.one_of("expiration_mode", &["fixed", "activation"])?,
            activation_period: self.take("activation_period")?,
            activation_unit,
            activated_at: self.opt_time("activated_at")?,
            is_active: self.take("is_active")?,
            revoked_at: self.opt_time("revoked_at")?,
            usage_count: self.take("usage_count")?,
            last_used_at: self.opt_time("last_used_at")?,
        };
        Ok(ImportedKey { row, has_secret })
    }

    fn log(&mut self) -> Result<LogRow, String> {
        Ok(LogRow {
            id: self.take("id")?,
            api_key_id: self.take("api_key_id")?,
            timestamp: self.time("timestamp")?,
            model: self.take("model")?,
            status: self.one_of("status", &["success", "error"])?,
            http_status: self.take("http_status")?,
            response_time: self.take("response_time")?,
            ip_address: self.take("ip_address")?,
            endpoint: self.take("endpoint")?,
            error_message: self.take("error_message")?,
            request_size: self.take("request_size")?,
            response_size: self.take("response_size")?,
            prompt_tokens: self.take("prompt_tokens")?,
            completion_tokens: self.take("completion_tokens")?,
            total_tokens: self.take("total_tokens")?,
            stream: self.take("stream")?,
        })
    }

    /// A field this version does not know would be lost on import: refuse it.
    fn finish(self) -> Result<(), String> {
        match self.map.keys().next() {
            Some(field) => Err(format!("{}: unknown field `{field}`", self.at)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_the_host_part_of_ips() {
        assert_eq!(mask_ip("203.0.113.77").as_deref(), Some("203.0.113.0"));
        assert_eq!(
            mask_ip("2001:db8:85a3:8d3:1319:8a2e:370:7348").as_deref(),
            Some("2001:db8:85a3::")
        );
        assert_eq!(mask_ip("not an ip"), None);
    }

    #[test]
    fn types_are_checked_deduplicated_and_ordered() {
        assert_eq!(
            parse_types("logs, apikeys,logs").unwrap(),
            [DataType::ApiKeys, DataType::Logs]
        );
        let err = parse_types("apikeys,users").unwrap_err().to_string();
        assert!(
            err.contains("`users`") && err.contains("apikeys, logs"),
            "{err}"
        );
        assert!(parse_types(" , ").is_err());
    }
}
