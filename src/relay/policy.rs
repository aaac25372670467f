//! What an authenticated key may do now: its status at this instant, and the start of an
//! activation-mode key's clock at its first use.

use sqlx::SqlitePool;

use super::auth::{AuthFailure, AuthedKey, KeyCache};
use crate::keys::Status;
use crate::store;

/// Admits the key, or says why not (revoked, expired, disabled) for the 401 and its log row.
pub async fn admit(
    pool: &SqlitePool,
    cache: &KeyCache,
    key: &AuthedKey,
    now: i64,
) -> Result<(), AuthFailure> {
    let refuse = |reason| {
        Err(AuthFailure {
            key_id: Some(key.id),
            reason,
            internal: false,
        })
    };
    match key.lifecycle.status(now) {
        Status::Active => Ok(()),
        Status::Revoked => refuse("revoked API key"),
        Status::Expired => refuse("expired API key"),
        Status::Disabled => refuse("disabled API key"),
        Status::Pending => {
            let lifetime = key.activation_ms.unwrap_or(0);
            let activated = store::keys::activate(pool, key.id, now, lifetime).await;
            cache.clear();
            match activated {
                Ok(Some(row)) if row.lifecycle().status(now) == Status::Active => {
                    tracing::info!(
                        key_id = key.id,
                        "activation-mode key used for the first time"
                    );
                    Ok(())
                }
                Ok(_) => refuse("inactive API key"),
                Err(err) => {
                    tracing::error!(error = %err, key_id = key.id, "activating a key failed");
                    Err(AuthFailure::internal(Some(key.id), "key activation failed"))
                }
            }
        }
    }
}
