//! Reading an export file: a streaming parse that checks each row and hands it over at once.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

use anyhow::anyhow;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::{DataType, Metadata, FORMAT_VERSION, OLDEST_FORMAT_VERSION, VALID_TYPES};
use crate::clock::parse_rfc3339;
use crate::error::ApiError;
use crate::keys;
use crate::limits::{Limits, LimitsPatch};
use crate::policy::{self, IdList, KindList, ListKind, TextList};
use crate::store::keys::{Binding, KeyRow, Restrictions};
use crate::store::logs::LogRow;
use crate::store::upstreams::UpstreamRow;
use crate::upstreams::form;
use crate::upstreams::ops;
use crate::upstreams::spec::UpstreamSpec;

/// One thing read from the file, in file order. Rows are boxed: items travel in batches
/// through a channel, each as large as the enum's largest variant.
pub(super) enum Item {
    Metadata(Metadata),
    Upstream(usize, Box<ImportedUpstream>),
    Key(usize, Box<ImportedKey>),
    Log(usize, Box<LogRow>),
}

/// A key row of the file. `has_secret` is false for sanitized rows, whose `key_hash` is a
/// fresh random one that no key matches.
pub(super) struct ImportedKey {
    pub(super) row: KeyRow,
    pub(super) has_secret: bool,
}

/// An upstream row of the file, checked like the admin API checks one. Its credential is the
/// file's Fernet token (`encrypted_api_key`), or none.
pub(super) struct ImportedUpstream {
    pub(super) row: UpstreamRow,
    /// The row had a credential the file does not carry (a sanitized export).
    pub(super) credential_dropped: bool,
}

/// Rows handed over at a time: one wake-up of the importer per slice, not per row (per row,
/// the two threads' hand-offs cost more than parsing and staging the row).
pub(super) const ITEMS_PER_SEND: usize = 512;

/// Parses an export from `reader`, sending its rows to `sink` in file order, in slices of
/// `ITEMS_PER_SEND` (the metadata on its own, as soon as it is read).
pub(super) fn parse_export(
    reader: impl std::io::BufRead,
    sink: &mpsc::Sender<Vec<Item>>,
) -> anyhow::Result<()> {
    let row_error = RefCell::new(None);
    let slice = RefCell::new(Vec::with_capacity(ITEMS_PER_SEND));
    let reading = Reading {
        sink,
        slice: &slice,
        row_error: &row_error,
    };
    // Straight from the buffered reader: serde_json reads it byte by byte, which the standard
    // library makes cheap for a `BufReader` (a wrapper in between made it the parse's largest
    // cost). serde_json keeps the position, so a row's error gets its line from there.
    let mut de = serde_json::Deserializer::from_reader(reader);
    let parsed = ExportSeed { reading }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .and_then(|()| reading.flush());
    match (parsed, row_error.take()) {
        (Ok(()), _) => Ok(()),
        // A row's own message already names its row and field; the line it ends on is where
        // the parse stopped.
        (Err(err), Some(row_error)) => Err(anyhow!(row_error.replacen(
            LINE_MARK,
            &err.line().to_string(),
            1
        ))),
        (Err(err), None) => Err(err.into()),
    }
}

/// Stands for the line in a row's error message until the parse's position is known.
const LINE_MARK: &str = "\u{1}";

/// What every level of the parse shares: where rows go, and a bad row's
/// message (kept whole rather than wrapped in serde_json's position).
#[derive(Clone, Copy)]
struct Reading<'a> {
    sink: &'a mpsc::Sender<Vec<Item>>,
    /// Rows read but not yet sent.
    slice: &'a RefCell<Vec<Item>>,
    row_error: &'a RefCell<Option<String>>,
}

impl Reading<'_> {
    fn send<E: de::Error>(self, item: Item) -> Result<(), E> {
        let full = {
            let mut slice = self.slice.borrow_mut();
            slice.push(item);
            slice.len() >= ITEMS_PER_SEND
        };
        if full {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends the rows read so far.
    fn flush<E: de::Error>(self) -> Result<(), E> {
        let slice = std::mem::replace(
            &mut *self.slice.borrow_mut(),
            Vec::with_capacity(ITEMS_PER_SEND),
        );
        if slice.is_empty() {
            return Ok(());
        }
        self.sink
            .blocking_send(slice)
            .map_err(|_| E::custom("the import stopped"))
    }

    fn bad_row<E: de::Error>(self, message: String) -> E {
        *self.row_error.borrow_mut() = Some(message);
        E::custom("invalid row")
    }
}

/// What the metadata says about the rows that follow.
#[derive(Clone, Copy)]
struct Layout {
    sanitized: bool,
    /// Version 1 logs have no `cost` (read as 0) nor `cached_tokens`; before version 4 the
    /// logs' cache reads are `cached_tokens`.
    version: u32,
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
        let mut layout = None;
        let mut has_data = false;
        while let Some(field) = map.next_key::<String>()? {
            match field.as_str() {
                "metadata" if layout.is_none() => {
                    let metadata: Metadata = map.next_value()?;
                    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&metadata.format_version)
                    {
                        return Err(de::Error::custom(format_args!(
                            "metadata.format_version is {}, but this keygate ({}) reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}",
                            metadata.format_version,
                            env!("CARGO_PKG_VERSION")
                        )));
                    }
                    layout = Some(Layout {
                        sanitized: metadata.sanitized,
                        version: metadata.format_version,
                    });
                    // At once: the importer sizes its progress bar from it.
                    self.reading.send(Item::Metadata(metadata))?;
                    self.reading.flush()?;
                }
                "data" if !has_data => {
                    let Some(layout) = layout else {
                        return Err(de::Error::custom(
                            "`metadata` must come before `data` (as keygate writes it)",
                        ));
                    };
                    map.next_value_seed(DataSeed {
                        reading: self.reading,
                        layout,
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
        if layout.is_none() {
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
    layout: Layout,
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
        f.write_str("an object of row arrays: upstreams, apikeys, logs")
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
                layout: self.layout,
                data_type,
            })?;
        }
        Ok(())
    }
}

/// One type's array: each row is read, checked field by field and sent on its own.
struct RowsSeed<'a> {
    reading: Reading<'a>,
    layout: Layout,
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
        while let Some(item) = seq.next_element_seed(RowSeed { rows: &self, index })? {
            self.reading.send(item)?;
            index += 1;
        }
        // The keys reach the importer before the first call log is parsed: it checks them
        // against the database as soon as it can.
        self.reading.flush()
    }
}

/// One row: read as an object, then checked field by field before the parse moves past it
/// (so a bad row's error has the position of the row's end, the line it names).
struct RowSeed<'r, 'a> {
    rows: &'r RowsSeed<'a>,
    index: usize,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_, '_> {
    type Value = Item;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Item, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_, '_> {
    type Value = Item;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a {} row (an object)", self.rows.data_type.name())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Item, A::Error> {
        let mut object = Map::new();
        while let Some((field, value)) = map.next_entry::<String, Value>()? {
            object.insert(field, value);
        }
        let (rows, index) = (self.rows, self.index);
        let mut fields = Fields::new(rows.data_type, index, object);
        match rows.data_type {
            DataType::Upstreams => fields
                .upstream(rows.layout.sanitized)
                .map(|upstream| Item::Upstream(index, Box::new(upstream))),
            DataType::ApiKeys => fields
                .key(rows.layout.sanitized)
                .map(|key| Item::Key(index, Box::new(key))),
            DataType::Logs => fields
                .log(rows.layout.version)
                .map(|log| Item::Log(index, Box::new(log))),
        }
        .and_then(|item| fields.finish().map(|()| item))
        .map_err(|message| rows.reading.bad_row(message))
    }
}

/// One row of the file, taken apart field by field so that an error names its row and field.
struct Fields {
    map: Map<String, Value>,
    at: String,
}

impl Fields {
    fn new(data_type: DataType, index: usize, map: Map<String, Value>) -> Self {
        let name = data_type.name();
        let at = match map.get("id").and_then(Value::as_i64) {
            Some(id) => format!("data.{name}[{index}] (id {id}, line {LINE_MARK})"),
            None => format!("data.{name}[{index}] (line {LINE_MARK})"),
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

    /// A restriction list, checked like the admin API checks it; absent (files of format
    /// version 1) is empty.
    fn list(&mut self, kind: ListKind) -> Result<TextList, String> {
        let given: Option<Vec<String>> = self.take(kind.field())?;
        policy::validate(kind, &given.unwrap_or_default())
            .map(TextList)
            .map_err(|invalid| self.error(&invalid.field, invalid.message))
    }

    /// The key's upstream ids and permissions; absent (files before format version 4) is
    /// none. The ids are the file's: the importer maps them to the upstreams it imports and
    /// checks that each names one.
    fn binding(&mut self) -> Result<Binding, String> {
        let ids: Option<Vec<i64>> = self.take("upstream_ids")?;
        let mut upstream_ids = ids.unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        upstream_ids.retain(|id| seen.insert(*id));
        let kinds: Option<Vec<String>> = self.take("permissions")?;
        let permissions = policy::validate_permissions(&kinds.unwrap_or_default())
            .map_err(|invalid| self.error(&invalid.field, invalid.message))?;
        Ok(Binding {
            upstream_ids: IdList(upstream_ids),
            permissions: KindList(permissions),
        })
    }

    /// The key's limits, checked like the admin API checks them; absent (files of format
    /// versions 1 and 2) is none.
    fn limits(&mut self) -> Result<Limits, String> {
        let patch =
            LimitsPatch::take_from(&mut self.map).map_err(|err| format!("{}: {err}", self.at))?;
        let limits = Limits::default().patched(&patch);
        limits.validate().map_err(|err| match err {
            ApiError::Invalid { field, message } => self.error(&field, message),
            other => self.error("limits", other),
        })?;
        Ok(limits)
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
            // Optional (older files lack them); the import recomputes both from the rollup.
            total_tokens_used: self.take::<Option<i64>>("total_tokens_used")?.unwrap_or(0),
            total_cost: self.take::<Option<f64>>("total_cost")?.unwrap_or(0.0),
            restrictions: Restrictions {
                allowed_models: self.list(ListKind::Models)?,
                allowed_clients: self.list(ListKind::Clients)?,
                allowed_ips: self.list(ListKind::Ips)?,
                allowed_endpoints: self.list(ListKind::Endpoints)?,
                tags: self.list(ListKind::Tags)?,
            },
            binding: self.binding()?,
            limits: self.limits()?,
        };
        Ok(ImportedKey { row, has_secret })
    }

    /// A failed check of the admin API's, as this row's error.
    fn checked<T>(&self, checked: Result<T, ApiError>) -> Result<T, String> {
        checked.map_err(|err| match err {
            ApiError::Invalid { field, message } => self.error(&field, message),
            other => self.error("upstream", other),
        })
    }

    fn upstream(&mut self, sanitized: bool) -> Result<ImportedUpstream, String> {
        let id: i64 = self.take("id")?;
        if id <= 0 {
            return Err(self.error("id", "must be 1 or more (0 is the built-in upstream)"));
        }
        let name: String = self.take("name")?;
        let kind: String = self.take("kind")?;
        let base_url: String = self.take("base_url")?;
        let has_api_key: Option<bool> = self.take("has_api_key")?;
        let token: Option<String> = self.take("encrypted_api_key")?;
        let token = token.filter(|_| !sanitized);
        let auth_header: String = self.take("auth_header")?;
        let models: Option<Vec<String>> = self.take("models")?;
        let model_map: Option<BTreeMap<String, String>> = self.take("model_map")?;
        let priority: i64 = self.take("priority")?;
        let weight: i64 = self.take("weight")?;
        let timeout_seconds: Option<i64> = self.take("timeout_seconds")?;
        let stream_usage: String = self.take("stream_usage")?;
        let extra_headers: Option<BTreeMap<String, String>> = self.take("extra_headers")?;
        let spec = UpstreamSpec {
            id,
            name: self.checked(form::name(&name))?,
            kind: self.checked(form::kind(&kind))?,
            base_url: self.checked(form::base_url(&base_url))?,
            api_key: None,
            auth_header: self.checked(form::auth_header(&auth_header))?,
            models: self.checked(form::models(&models.unwrap_or_default()))?,
            model_map: self.checked(form::model_map(&model_map.unwrap_or_default()))?,
            priority: self.checked(form::priority(priority))?,
            weight: self.checked(form::weight(weight))?,
            enabled: self.take("enabled")?,
            timeout_seconds: self
                .checked(timeout_seconds.map(form::timeout_seconds).transpose())?,
            stream_usage: self.checked(form::stream_usage(&stream_usage))?,
            extra_headers: self.checked(form::extra_headers(&extra_headers.unwrap_or_default()))?,
            created_at: self.time("created_at")?,
            updated_at: self.time("updated_at")?,
        };
        Ok(ImportedUpstream {
            credential_dropped: token.is_none() && has_api_key == Some(true),
            row: ops::stored(&spec, token),
        })
    }

    /// A log row; `version` 1 rows have no cost (0) nor cached tokens; versions 2 and 3 name
    /// the cache reads `cached_tokens` and have no cache writes, upstream or attempts.
    fn log(&mut self, version: u32) -> Result<LogRow, String> {
        let (cost, cache_read_tokens): (f64, _) = match version {
            1 => (0.0, None),
            2 | 3 => (self.take("cost")?, self.take("cached_tokens")?),
            _ => (self.take("cost")?, self.take("cache_read_tokens")?),
        };
        if cost < 0.0 {
            return Err(self.error("cost", "must be 0 or more (USD)"));
        }
        let (cache_write_tokens, upstream_id, attempts) = if version >= 4 {
            (
                self.take("cache_write_tokens")?,
                self.take::<Option<i64>>("upstream_id")?,
                self.take::<Option<i64>>("attempts")?,
            )
        } else {
            (None, None, None)
        };
        if upstream_id.is_some_and(|id| id < 0) {
            return Err(self.error(
                "upstream_id",
                "must be an upstream id (0 for the built-in `default`) or null",
            ));
        }
        if attempts.is_some_and(|n| n < 0) {
            return Err(self.error("attempts", "must be 0 or more, or null"));
        }
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
            cost,
            cache_read_tokens,
            cache_write_tokens,
            upstream_id,
            attempts,
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
