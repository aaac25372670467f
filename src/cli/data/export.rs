//! Writing an export: one database snapshot streamed row by row into a new private file.

use crate::cli::output::say;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use futures_util::TryStreamExt;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::{parse_types, progress_bar, DataType, ExportArgs, Metadata, FORMAT_VERSION};
use crate::clock::rfc3339;
use crate::key_ops::Keyring;
use crate::relay::redact::redact;
use crate::store::keys::KeyRow;
use crate::store::upstreams::UpstreamRow;
use crate::store::{self, transfer};

/// Rows an export reads per statement.
const ROWS_PER_READ: i64 = 10_000;

/// Writes the export; sanitized, it also redacts `upstream_secret` (and anything shaped like a
/// credential) from the logs' error messages, rows stored before keygate redacted them too.
pub async fn export(
    keyring: &Keyring,
    args: &ExportArgs,
    upstream_secret: Option<&str>,
) -> anyhow::Result<()> {
    let types = parse_types(&args.types)?;
    let now = keyring.now();
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("keygate-export-{}.json", &rfc3339(now)[..10])));
    let file = create_private(&path)?;
    let sanitize = args.sanitize.then_some(Sanitize { upstream_secret });
    let counts = match write_export(keyring, &types, sanitize, now, file).await {
        Ok(counts) => counts,
        Err(err) => {
            // A partial export is worse than none: it would import as a smaller backup.
            let _ = std::fs::remove_file(&path);
            return Err(err.context(format!("the export failed; {} was removed", path.display())));
        }
    };
    let counted = counts
        .iter()
        // A setup without upstreams: said as before they existed.
        .filter(|(data_type, n)| *data_type != DataType::Upstreams || *n > 0)
        .map(|(data_type, n)| match data_type {
            DataType::Upstreams => format!("{n} upstream(s)"),
            DataType::ApiKeys => format!("{n} API key(s)"),
            DataType::Logs => format!("{n} call log(s)"),
        })
        .collect::<Vec<_>>()
        .join(" and ");
    let note = if args.sanitize {
        "sanitized: no key hashes, encrypted keys or upstream credentials, IP addresses \
         masked, credentials redacted from error messages; keys imported from it cannot \
         authenticate until they are regenerated, upstreams have no credential until one is set"
    } else {
        "not sanitized: it holds key hashes, encrypted keys and encrypted upstream credentials, \
         keep it private"
    };
    say!("Exported {counted} to {} ({note}).", path.display());
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

/// What a sanitized export needs to know.
#[derive(Clone, Copy)]
struct Sanitize<'a> {
    upstream_secret: Option<&'a str>,
}

/// Writes the export, one row per line, from one snapshot of the database.
async fn write_export(
    keyring: &Keyring,
    types: &[DataType],
    sanitize: Option<Sanitize<'_>>,
    now: i64,
    file: File,
) -> anyhow::Result<Vec<(DataType, u64)>> {
    let mut tx = transfer::begin_read(&keyring.pool).await?;
    let mut counts = Vec::new();
    for &data_type in types {
        let n = match data_type {
            DataType::Upstreams => transfer::count_upstreams(&mut tx).await?,
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
        sanitized: sanitize.is_some(),
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
                // A handful of rows: read at once.
                DataType::Upstreams => {
                    for row in store::upstreams::list(&mut *tx).await? {
                        let exported = ExportedUpstream {
                            row: &row,
                            sanitize: sanitize.is_some(),
                        };
                        write_row(&mut out, written, &exported)?;
                        written += 1;
                    }
                }
                DataType::ApiKeys => {
                    let mut rows = transfer::keys_after(&mut tx, after, ROWS_PER_READ);
                    while let Some(row) = rows.try_next().await? {
                        after = row.id;
                        write_row(
                            &mut out,
                            written,
                            &ExportedKey {
                                row: &row,
                                sanitize: sanitize.is_some(),
                            },
                        )?;
                        written += 1;
                    }
                }
                DataType::Logs => {
                    let mut rows = transfer::logs_after(&mut tx, after, ROWS_PER_READ);
                    while let Some(mut row) = rows.try_next().await? {
                        after = row.id;
                        if let Some(Sanitize { upstream_secret }) = sanitize {
                            row.ip_address = row.ip_address.as_deref().and_then(mask_ip);
                            row.error_message =
                                row.error_message.map(|text| redact(&text, upstream_secret));
                        }
                        write_row(&mut out, written, &row)?;
                        written += 1;
                    }
                }
            }
            progress.inc(written - before);
            if data_type == DataType::Upstreams || written - before < ROWS_PER_READ as u64 {
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
        map.serialize_entry("total_tokens_used", &r.total_tokens_used)?;
        map.serialize_entry("total_cost", &r.total_cost)?;
        for (field, list) in r.restrictions.entries() {
            map.serialize_entry(field, list)?;
        }
        map.serialize_entry("upstream_ids", &r.binding.upstream_ids)?;
        map.serialize_entry("permissions", &r.binding.permissions)?;
        if let Ok(serde_json::Value::Object(limits)) = serde_json::to_value(r.limits) {
            for (field, value) in &limits {
                map.serialize_entry(field, value)?;
            }
        }
        map.end()
    }
}

/// An upstream as the file holds it: its columns by name (lists and maps as JSON, times in
/// RFC 3339), the credential as its Fernet token (`encrypted_api_key`, readable only with this
/// server's Fernet key); sanitized, without it (`has_api_key` says whether there was one).
struct ExportedUpstream<'a> {
    row: &'a UpstreamRow,
    sanitize: bool,
}

impl Serialize for ExportedUpstream<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.row;
        let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).ok();
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("id", &r.id)?;
        map.serialize_entry("name", &r.name)?;
        map.serialize_entry("kind", &r.kind)?;
        map.serialize_entry("base_url", &r.base_url)?;
        map.serialize_entry("has_api_key", &r.encrypted_api_key.is_some())?;
        if !self.sanitize {
            map.serialize_entry("encrypted_api_key", &r.encrypted_api_key)?;
        }
        map.serialize_entry("auth_header", &r.auth_header)?;
        map.serialize_entry("models", &json(&r.models))?;
        map.serialize_entry("model_map", &json(&r.model_map))?;
        map.serialize_entry("priority", &r.priority)?;
        map.serialize_entry("weight", &r.weight)?;
        map.serialize_entry("enabled", &r.enabled)?;
        map.serialize_entry("timeout_seconds", &r.timeout_seconds)?;
        map.serialize_entry("stream_usage", &r.stream_usage)?;
        map.serialize_entry("extra_headers", &json(&r.extra_headers))?;
        map.serialize_entry("created_at", &rfc3339(r.created_at))?;
        map.serialize_entry("updated_at", &rfc3339(r.updated_at))?;
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
}
