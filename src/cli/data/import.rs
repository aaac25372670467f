//! Applying an export: conflicts (flags or prompts), one all-or-nothing transaction, summary.

use crate::cli::output::say;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::Path;

use anyhow::{bail, Context};
use indicatif::ProgressBar;
use tokio::sync::mpsc;

use super::parse::{parse_export, ImportedKey, ImportedUpstream, Item};
use super::{progress_bar, DataType, ImportArgs};
use crate::cli::keys::printable;
use crate::key_ops::Keyring;
use crate::keys;
use crate::store::keys::KeyRow;
use crate::store::logs::LogRow;
use crate::store::transfer::{self, KeyClash, Stage};
use crate::upstreams::spec::DEFAULT_ID;

/// Conflicts named in the error that refuses an import.
const CONFLICTS_LISTED: usize = 5;

pub async fn import(keyring: &Keyring, args: &ImportArgs) -> anyhow::Result<()> {
    let file = args.input.display().to_string();
    let resolve = if args.skip_conflicts {
        Resolve::Skip
    } else if args.force {
        Resolve::Overwrite
    } else if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        // Ask before anything is staged, so no lock is held while a person thinks.
        let mut asking = Importer::new(keyring, Pass::Ask, Resolve::Ask(Choices::default()));
        let mut stage = Stage::open(&keyring.pool)
            .await
            .context("cannot prepare the import")?;
        read_into(&args.input, &mut stage, &mut asking)
            .await
            .with_context(|| format!("cannot import {file}; nothing was changed"))?;
        asking.resolve
    } else {
        Resolve::Refuse
    };
    let mut importer = Importer::new(keyring, Pass::Write, resolve);
    // Every row is checked and written to a staging file first, without holding the
    // database's write lock (the server keeps logging calls and admins keep writing);
    // `move_in` then copies it all in one short transaction, or nothing.
    let mut stage = Stage::open(&keyring.pool)
        .await
        .context("cannot prepare the import")?;
    read_into(&args.input, &mut stage, &mut importer)
        .await
        .with_context(|| format!("cannot import {file}; nothing was changed"))?;
    if importer.unresolved.count > 0 {
        bail!(
            "{} row(s) of {file} already exist in this database: {}. Nothing was imported. \
             Pass --skip-conflicts to keep the existing rows or --force to overwrite them \
             (in a terminal, keygate asks row by row).",
            importer.unresolved.count,
            importer.unresolved.listed()
        );
    }
    if args.dry_run {
        drop(stage);
        say!(
            "Dry run of {file}: would import {}. Nothing was changed.",
            importer.tally.describe(&importer.types)
        );
    } else {
        let moved = stage
            .move_in()
            .await
            .with_context(|| format!("cannot import {file}; nothing was changed"))?;
        keyring.cache.clear();
        importer.tally.audit(keyring, &file).await?;
        say!(
            "Imported {file}: {}.",
            importer.tally.describe(&importer.types)
        );
        if moved.keys + moved.logs > 0 {
            say!(
                "{} key(s) and {} call log(s) got new ids: keygate gave theirs to its own new \
                 rows while the file was read (the keys' call logs follow them).",
                moved.keys,
                moved.logs
            );
        }
    }
    if importer.tally.upstream_credentials_dropped > 0 {
        say!(
            "{} new upstream(s) come without their credential (a sanitized export): set it with \
             `keygate upstreams edit NAME --api-key-stdin` (or PATCH /api/upstreams/{{id}}).",
            importer.tally.upstream_credentials_dropped
        );
    }
    if importer.tally.keys_to_regenerate > 0 {
        say!(
            "{} new key(s) come without their secret (a sanitized export): they cannot authenticate \
             until regenerated (`keygate keys regenerate <id>`, POST /api/api-keys/{{id}}/regenerate, \
             or Regenerate in the console).",
            importer.tally.keys_to_regenerate
        );
    }
    if importer.tally.keys_merged > 0 {
        say!(
            "{} key(s) of the file have the same secret as an existing key under another id: that \
             key stands for them, and their call logs go to it.",
            importer.tally.keys_merged
        );
    }
    if importer.tally.undecryptable > 0 {
        say!(
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
    stage: &mut Stage,
    importer: &mut Importer<'_>,
) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // A few slices of rows in flight at most: memory stays flat whatever the file's size.
    let (sink, mut items) = mpsc::channel(4);
    let reader = tokio::task::spawn_blocking(move || {
        parse_export(BufReader::with_capacity(1 << 20, file), &sink)
    });
    let applied = async {
        while let Some(slice) = items.recv().await {
            for item in slice {
                importer.apply(stage, item).await?;
            }
        }
        importer.flush_logs(stage).await
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
    upstreams: HashMap<i64, bool>,
    keys: HashMap<i64, bool>,
    logs: HashMap<i64, bool>,
    /// "a(ll)" (true) or "s(kip all)" (false): the answer for every later conflict.
    rest: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Conflict {
    /// The existing upstream's id.
    Upstream(i64),
    Key(i64),
    Log(i64),
}

#[derive(Default)]
struct Counts {
    new: u64,
    overwritten: u64,
    skipped: u64,
}

impl Counts {
    fn any(&self) -> bool {
        self.new + self.overwritten + self.skipped > 0
    }
}

#[derive(Default)]
struct Tally {
    upstreams: Counts,
    /// New upstreams whose credential the (sanitized) file left out.
    upstream_credentials_dropped: u64,
    keys: Counts,
    logs: Counts,
    keys_to_regenerate: u64,
    keys_merged: u64,
    undecryptable: u64,
}

impl Tally {
    /// The import's audit entry: the file and its counts (after the import committed).
    async fn audit(&self, keyring: &Keyring, file: &str) -> anyhow::Result<()> {
        let counts = |c: &Counts| serde_json::json!({"new": c.new, "overwritten": c.overwritten, "skipped": c.skipped});
        let details = serde_json::json!({
            "file": file,
            "upstreams": counts(&self.upstreams),
            "keys": counts(&self.keys),
            "logs": counts(&self.logs),
        });
        let by = crate::audit::Actor::cli();
        let action = crate::audit::Action::Import;
        crate::audit::record(&keyring.pool, keyring.now(), &by, action, None, details)
            .await
            .context("imported, but cannot write the audit entry")
    }

    fn describe(&self, types: &[DataType]) -> String {
        types
            .iter()
            // A file of a setup without upstreams: said as before they existed.
            .filter(|t| **t != DataType::Upstreams || self.upstreams.any())
            .map(|t| {
                let (what, c) = match t {
                    DataType::Upstreams => ("upstreams", &self.upstreams),
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
    /// The file's upstream id → the id it has in this database (its own, a fresh one, or the
    /// existing upstream of the same name).
    upstream_ids: HashMap<i64, i64>,
    tally: Tally,
    unresolved: Unresolved,
    /// Call-log rows read but not yet checked against the database (and staged): up to
    /// `LOGS_PER_BATCH`, checked and staged by two statements.
    pending: Vec<(usize, LogRow)>,
}

/// Call-log rows checked and staged together. Row by row, each statement's round trip to
/// SQLite's worker thread cost more than the row's own work.
const LOGS_PER_BATCH: usize = 512;

impl<'a> Importer<'a> {
    fn new(keyring: &'a Keyring, pass: Pass, resolve: Resolve) -> Self {
        Importer {
            keyring,
            pass,
            resolve,
            types: vec![DataType::Upstreams, DataType::ApiKeys, DataType::Logs],
            progress: ProgressBar::hidden(),
            known_keys: HashSet::new(),
            merged: HashMap::new(),
            upstream_ids: HashMap::new(),
            tally: Tally::default(),
            unresolved: Unresolved::default(),
            pending: Vec::with_capacity(LOGS_PER_BATCH),
        }
    }

    async fn apply(&mut self, stage: &mut Stage, item: Item) -> anyhow::Result<()> {
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
            Item::Upstream(index, upstream) => {
                self.flush_logs(stage).await?;
                self.upstream(stage, index, *upstream).await?;
                self.progress.inc(1);
            }
            Item::Key(index, key) => {
                // Rows are applied in file order.
                self.flush_logs(stage).await?;
                self.key(stage, index, *key).await?;
                self.progress.inc(1);
            }
            Item::Log(index, log) => {
                self.log(stage, index, *log).await?;
                self.progress.inc(1);
            }
        }
        Ok(())
    }

    /// An upstream of the file, matched by name: new (under its own id when this database
    /// never gave it, else a fresh one), or a conflict with the one of its name.
    async fn upstream(
        &mut self,
        stage: &mut Stage,
        index: usize,
        upstream: ImportedUpstream,
    ) -> anyhow::Result<()> {
        let ImportedUpstream {
            mut row,
            credential_dropped,
        } = upstream;
        let file_id = row.id;
        let at = format!("data.upstreams[{index}] (id {file_id})");
        if let Some(token) = &row.encrypted_api_key {
            // Stored unreadable, it would stop the server from loading any upstream.
            if self.keyring.fernet.decrypt(token).is_err() {
                bail!(
                    "{at}: its credential cannot be decrypted with this server's Fernet key \
                     (exported with another KEYGATE_FERNET_KEY?); use the same key, or import \
                     a sanitized export and set the credential again"
                );
            }
        }
        let existing = transfer::upstream_named(stage, &row.name)
            .await
            .with_context(|| at.clone())?;
        let Some(existing) = existing else {
            let id = transfer::new_upstream_id(stage, file_id)
                .await
                .with_context(|| at.clone())?;
            self.tally.upstreams.new += 1;
            if credential_dropped {
                self.tally.upstream_credentials_dropped += 1;
            }
            self.upstream_ids.insert(file_id, id);
            if self.pass == Pass::Write {
                transfer::put_upstream(stage, id, &row)
                    .await
                    .with_context(|| at.clone())?;
            }
            return Ok(());
        };
        // Keys of the file bound to it are bound to the one of its name here.
        self.upstream_ids.insert(file_id, existing.id);
        let what = format!("upstream #{} '{}'", existing.id, printable(&existing.name));
        match self.decide(Conflict::Upstream(existing.id), &what)? {
            None => self.unresolved.add(what),
            Some(false) => self.tally.upstreams.skipped += 1,
            Some(true) => {
                if row.encrypted_api_key.is_none() && credential_dropped {
                    // A sanitized row carries no credential: the existing one is kept.
                    row.encrypted_api_key = existing.encrypted_api_key.clone();
                }
                self.tally.upstreams.overwritten += 1;
                if self.pass == Pass::Write {
                    transfer::put_upstream(stage, existing.id, &row)
                        .await
                        .with_context(|| at.clone())?;
                }
            }
        }
        Ok(())
    }

    /// A key's `upstream_ids` as this database numbers them (the file's upstreams mapped to
    /// theirs here); an id neither in the file nor in this database is an error.
    async fn map_upstream_ids(
        &mut self,
        stage: &mut Stage,
        at: &str,
        row: &mut KeyRow,
    ) -> anyhow::Result<()> {
        let mut mapped = Vec::with_capacity(row.binding.upstream_ids.0.len());
        for (i, id) in row.binding.upstream_ids.0.iter().enumerate() {
            let here = match self.upstream_ids.get(id) {
                Some(here) => *here,
                None if *id == DEFAULT_ID => DEFAULT_ID,
                None => {
                    if self.pass == Pass::Write && !transfer::upstream_exists(stage, *id).await? {
                        bail!(
                            "{at}: field `upstream_ids[{i}]`: upstream {id} is neither in the file \
                             nor in this database (export the upstreams with the keys: --types \
                             upstreams,apikeys)"
                        );
                    }
                    *id
                }
            };
            if !mapped.contains(&here) {
                mapped.push(here);
            }
        }
        row.binding.upstream_ids.0 = mapped;
        Ok(())
    }

    async fn key(
        &mut self,
        stage: &mut Stage,
        index: usize,
        key: ImportedKey,
    ) -> anyhow::Result<()> {
        let ImportedKey {
            mut row,
            has_secret,
        } = key;
        let at = format!("data.apikeys[{index}] (id {})", row.id);
        self.map_upstream_ids(stage, &at, &mut row).await?;
        let clash = transfer::key_clash(stage, row.id, &row.key_hash)
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
                transfer::put_key(stage, row.id, &row)
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
                        printable(&other.name)
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
                    transfer::put_key(stage, target.id, &row)
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

    /// Checks a call-log row's key; the row waits in `pending` to be checked and staged.
    async fn log(
        &mut self,
        stage: &mut Stage,
        index: usize,
        mut row: LogRow,
    ) -> anyhow::Result<()> {
        if let Some(key_id) = row.api_key_id {
            let stand_in = self.merged.get(&key_id).copied().unwrap_or(key_id);
            row.api_key_id = Some(stand_in);
            if self.pass == Pass::Write && !self.key_known(stage, stand_in).await? {
                bail!(
                    "data.logs[{index}] (id {}): api_key_id {key_id} matches no key in this database \
                     or earlier in the file (export the keys with the logs: --types apikeys,logs)",
                    row.id
                );
            }
        }
        self.pending.push((index, row));
        if self.pending.len() >= LOGS_PER_BATCH {
            self.flush_logs(stage).await?;
        }
        Ok(())
    }

    /// Checks the pending call-log rows against the database (writing, new rows are staged
    /// at once), then resolves the conflicts among them one by one, in file order.
    async fn flush_logs(&mut self, stage: &mut Stage) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rows = std::mem::replace(&mut self.pending, Vec::with_capacity(LOGS_PER_BATCH));
        let (first, last) = (rows[0].0, rows[rows.len() - 1].0);
        let logs: Vec<&LogRow> = rows.iter().map(|(_, row)| row).collect();
        let new = match self.pass {
            Pass::Write => transfer::put_new_logs(stage, &logs).await,
            Pass::Ask => transfer::existing_logs(stage, &logs)
                .await
                .map(|found| logs.iter().map(|row| !found.contains(&row.id)).collect()),
        }
        .with_context(|| format!("data.logs[{first}..={last}]"))?;
        drop(logs);
        for ((index, row), new) in rows.into_iter().zip(new) {
            self.log_checked(stage, index, row, new).await?;
        }
        Ok(())
    }

    /// Counts a checked row; one that exists is a conflict to resolve.
    async fn log_checked(
        &mut self,
        stage: &mut Stage,
        index: usize,
        row: LogRow,
        new: bool,
    ) -> anyhow::Result<()> {
        if new {
            self.tally.logs.new += 1;
            return Ok(());
        }
        let at = format!("data.logs[{index}] (id {})", row.id);
        let what = format!("call log #{}", row.id);
        match self.decide(Conflict::Log(row.id), &what)? {
            None => self.unresolved.add(what),
            Some(false) => self.tally.logs.skipped += 1,
            Some(true) => {
                self.tally.logs.overwritten += 1;
                if self.pass == Pass::Write {
                    transfer::put_log(stage, &row)
                        .await
                        .with_context(|| at.clone())?;
                }
            }
        }
        Ok(())
    }

    async fn key_known(&mut self, stage: &mut Stage, id: i64) -> anyhow::Result<bool> {
        if self.known_keys.contains(&id) {
            return Ok(true);
        }
        let exists = transfer::key_exists(stage, id).await?;
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
            Conflict::Upstream(id) => choices.upstreams.get(&id),
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
            Conflict::Upstream(id) => choices.upstreams.insert(id, overwrite),
            Conflict::Key(id) => choices.keys.insert(id, overwrite),
            Conflict::Log(id) => choices.logs.insert(id, overwrite),
        };
        Ok(Some(overwrite))
    }
}

fn describe_clash(row: &KeyRow, clash: &KeyClash) -> String {
    match (&clash.same_id, &clash.same_secret) {
        (Some(existing), _) => format!("key #{} '{}'", existing.id, printable(&existing.name)),
        (None, Some(other)) => format!(
            "key #{} '{}' (the same secret as key #{} '{}' here)",
            row.id,
            printable(&row.name),
            other.id,
            printable(&other.name)
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
