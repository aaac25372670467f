//! Server secrets at rest: the Fernet key (env or a 0600 file in the data directory) and the
//! admin token (env, or generated once and kept only as a hash).

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use sqlx::SqlitePool;

use crate::config::Config;
use crate::keys::{self, KeyHash};
use crate::store;

const FERNET_FILE: &str = "fernet.key";
const ADMIN_TOKEN_SETTING: &str = "admin_token_sha256";

/// The Fernet key from KEYGATE_FERNET_KEY, else from the data directory, else a new one
/// written there with mode 0600.
pub fn fernet(config: &Config) -> anyhow::Result<fernet::Fernet> {
    if let Some(key) = &config.fernet_key {
        return fernet::Fernet::new(key.trim())
            .context("KEYGATE_FERNET_KEY: not a Fernet key (32 bytes, URL-safe base64); generate one or unset it");
    }
    let path = config.data_dir.join(FERNET_FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return fernet::Fernet::new(text.trim()).with_context(|| {
            format!(
                "{}: not a Fernet key; restore it or set KEYGATE_FERNET_KEY",
                path.display()
            )
        });
    }
    let key = fernet::Fernet::generate_key();
    write_private(&path, &key)?;
    tracing::warn!(
        path = %path.display(),
        "KEYGATE_FERNET_KEY is unset: generated a Fernet key into the data directory; back it up with the database"
    );
    fernet::Fernet::new(&key).context("generated Fernet key is invalid")
}

/// Creates `path` with mode 0600 and writes `text`; fails if it exists.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The hash of the admin token: KEYGATE_ADMIN_TOKEN's, else the stored one, else a new token
/// is generated, printed once to the terminal, and only its hash stored.
pub async fn admin_token_hash(pool: &SqlitePool, config: &Config) -> anyhow::Result<KeyHash> {
    if let Some(token) = &config.admin_token {
        if token.len() < 16 {
            bail!("KEYGATE_ADMIN_TOKEN: use at least 16 characters");
        }
        return Ok(keys::hash(token));
    }
    if let Some(stored) = store::setting(pool, ADMIN_TOKEN_SETTING).await? {
        return keys::decode_hash(&stored)
            .context("stored admin token hash is corrupt; set KEYGATE_ADMIN_TOKEN");
    }
    let token = format!("kgadm-{}", hex::encode(rand::random::<[u8; 24]>()));
    let shown = crate::log_output::tell(&format!(
        "\n  keygate generated an admin token. It is shown this once; only its hash is kept:\n\n    {token}\n\n  \
         Use it as `Authorization: Bearer <token>` or to log in to the console.\n  \
         To choose your own, set KEYGATE_ADMIN_TOKEN.\n\n"
    ));
    if !shown {
        // Keeping a token nobody saw would lock the admin out for good.
        bail!("cannot show the generated admin token (stderr is not writable); set KEYGATE_ADMIN_TOKEN");
    }
    store::set_setting(pool, ADMIN_TOKEN_SETTING, &keys::hash_hex(&token)).await?;
    Ok(keys::hash(&token))
}
