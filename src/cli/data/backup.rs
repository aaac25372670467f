//! `keygate data backup`: a consistent snapshot of the live database into a new private file.

use crate::cli::output::say;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};

use super::BackupArgs;
use crate::key_ops::Keyring;
use crate::store::retention::{snapshot_into, snapshot_summary};

/// Writes the snapshot into a private (0600) partial file beside `--output`, syncs it, then
/// moves it into place: the output never exists half-written, and an existing file is only
/// replaced with `--force`.
pub async fn backup(keyring: &Keyring, args: &BackupArgs) -> anyhow::Result<()> {
    let target = &args.output;
    if !args.force && target.exists() {
        bail!(
            "{} already exists; pass --force to replace it, or another --output",
            target.display()
        );
    }
    let name = target
        .file_name()
        .ok_or_else(|| anyhow!("--output: `{}` is not a file name", target.display()))?;
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut partial_name = std::ffi::OsString::from(".");
    partial_name.push(name);
    partial_name.push(format!(".partial-{}", std::process::id()));
    let partial = dir.join(partial_name);
    let _ = std::fs::remove_file(&partial);
    create_private(&partial)?;
    let written = write_snapshot(keyring, &partial, target, args.force).await;
    let _ = std::fs::remove_file(&partial);
    let (keys, logs, bytes) = written?;
    say!(
        "Backed up the database to {} ({keys} API key(s), {logs} call log(s), {:.1} MB): a \
         consistent snapshot as of its start. Keep it private, and keep the data directory's \
         fernet.key (or KEYGATE_FERNET_KEY) with it. To restore: stop keygate, replace the \
         database file with it (removing the old file's -wal and -shm), start keygate.",
        target.display(),
        bytes as f64 / 1e6
    );
    Ok(())
}

async fn write_snapshot(
    keyring: &Keyring,
    partial: &Path,
    target: &Path,
    force: bool,
) -> anyhow::Result<(i64, i64, u64)> {
    snapshot_into(&keyring.pool, partial)
        .await
        .context("cannot write the snapshot")?;
    File::open(partial)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("cannot sync {}", partial.display()))?;
    let (check, keys, logs) = snapshot_summary(partial)
        .await
        .context("cannot read the snapshot back")?;
    if check != "ok" {
        bail!("the snapshot failed its check: {check}");
    }
    let bytes = std::fs::metadata(partial)?.len();
    if force {
        std::fs::rename(partial, target)
            .with_context(|| format!("cannot move the snapshot to {}", target.display()))?;
    } else {
        // A link fails if the name was taken meanwhile: never overwrites.
        std::fs::hard_link(partial, target).map_err(|err| {
            if err.kind() == std::io::ErrorKind::AlreadyExists {
                anyhow!(
                    "{} already exists; pass --force to replace it, or another --output",
                    target.display()
                )
            } else {
                anyhow!(err).context(format!("cannot create {}", target.display()))
            }
        })?;
    }
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok((keys, logs, bytes))
}

/// Creates an empty file with mode 0600 (SQLite writes the snapshot into it, keeping its mode).
fn create_private(path: &Path) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    Ok(())
}
