//! Upstream changes shared by the admin API and the CLI: validate, store (credential
//! Fernet-encrypted), audit in the change's transaction, and count the change so servers reload.

use serde_json::{json, Map, Value};

use super::form::{self, NewUpstream, UpstreamPatch};
use super::spec::{UpstreamSpec, DEFAULT_ID};
use crate::audit::{self, Action, Actor};
use crate::error::ApiError;
use crate::key_ops::Keyring;
use crate::store::{self, upstreams::UpstreamRow};

/// The answer to a change of the built-in upstream.
pub const BUILTIN: &str = "the built-in upstream `default` (id 0) is configured by KEYGATE_UPSTREAM_URL and KEYGATE_UPSTREAM_API_KEY, not here";

/// What a delete did.
#[derive(Debug)]
pub struct Deleted {
    pub id: i64,
    pub name: String,
    /// Keys it was taken out of (`force`).
    pub unbound_key_ids: Vec<i64>,
}

/// The stored row of `spec`, its credential encrypted (or `encrypted` kept when given: the
/// credential did not change).
fn row_of(keyring: &Keyring, spec: &UpstreamSpec, encrypted: Option<String>) -> UpstreamRow {
    stored(
        spec,
        encrypted.or_else(|| {
            spec.api_key
                .as_ref()
                .map(|key| keyring.fernet.encrypt(key.as_bytes()))
        }),
    )
}

/// The stored row of `spec` with the credential column `encrypted_api_key` (`spec.api_key`
/// is not read).
pub fn stored(spec: &UpstreamSpec, encrypted_api_key: Option<String>) -> UpstreamRow {
    let json =
        |value: serde_json::Result<String>, empty: &str| value.unwrap_or_else(|_| empty.into());
    UpstreamRow {
        id: spec.id,
        name: spec.name.clone(),
        kind: spec.kind.as_str().into(),
        base_url: spec.base_url.clone(),
        encrypted_api_key,
        auth_header: spec.auth_header.as_str().into(),
        models: json(serde_json::to_string(&spec.models), "[]"),
        model_map: json(serde_json::to_string(&spec.model_map), "{}"),
        priority: spec.priority,
        weight: i64::from(spec.weight),
        enabled: spec.enabled,
        timeout_seconds: spec.timeout_seconds.map(i64::from),
        stream_usage: match spec.stream_usage {
            crate::config::StreamUsage::Inject => "inject".into(),
            crate::config::StreamUsage::Off => "off".into(),
        },
        extra_headers: json(serde_json::to_string(&spec.extra_headers), "{}"),
        created_at: spec.created_at,
        updated_at: spec.updated_at,
    }
}

/// The spec of a stored row; one this server cannot read (a credential encrypted with another
/// Fernet key, a row edited by hand) is a 500 saying which and what to do.
fn spec_of(keyring: &Keyring, row: UpstreamRow) -> Result<UpstreamSpec, ApiError> {
    let (id, name) = (row.id, row.name.clone());
    UpstreamSpec::from_row(row, &keyring.fernet).map_err(|err| {
        ApiError::Failed(format!(
            "{err:#}; give upstream `{name}` its credential again (PATCH /api/upstreams/{id} \
             with api_key, or `keygate upstreams edit {id} --api-key-stdin`) or delete it"
        ))
    })
}

fn name_taken(name: &str) -> ApiError {
    ApiError::Conflict(format!(
        "An upstream named `{name}` exists already; choose another name or change that one"
    ))
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|db| db.is_unique_violation())
}

/// The non-secret fields of an upstream as the audit trail shows them; the credential only
/// as whether there is one.
pub fn snapshot(spec: &UpstreamSpec) -> Map<String, Value> {
    let Value::Object(fields) = json!({
        "name": spec.name,
        "kind": spec.kind,
        "base_url": spec.base_url,
        "has_api_key": spec.api_key.is_some(),
        "auth_header": spec.auth_header,
        "models": spec.models,
        "model_map": spec.model_map,
        "priority": spec.priority,
        "weight": spec.weight,
        "enabled": spec.enabled,
        "timeout_seconds": spec.timeout_seconds,
        "stream_usage": spec.stream_usage,
        "extra_headers": spec.extra_headers,
    }) else {
        return Map::new();
    };
    fields
}

/// The audit entry's details: which upstream, and what changed (`api_key` only as "changed").
fn details(before: Option<&UpstreamSpec>, after: Option<&UpstreamSpec>) -> Value {
    let Some(upstream) = after.or(before) else {
        return json!({});
    };
    let mut changes = audit::diff(
        before.map(snapshot).unwrap_or_default(),
        after.map(snapshot).unwrap_or_default(),
    );
    let old_key = before.and_then(|b| b.api_key.as_ref());
    let new_key = after.and_then(|a| a.api_key.as_ref());
    if before.is_some() && after.is_some() && old_key != new_key {
        changes.insert("api_key".into(), json!("changed"));
    }
    json!({ "upstream_id": upstream.id, "upstream_name": upstream.name, "changes": changes })
}

/// Every configured upstream, by id.
pub async fn list(keyring: &Keyring) -> Result<Vec<UpstreamSpec>, ApiError> {
    store::upstreams::list(&keyring.pool)
        .await?
        .into_iter()
        .map(|row| spec_of(keyring, row))
        .collect()
}

pub async fn get(keyring: &Keyring, id: i64) -> Result<UpstreamSpec, ApiError> {
    let row = store::upstreams::get(&keyring.pool, id)
        .await?
        .ok_or(ApiError::NotFound("upstream"))?;
    spec_of(keyring, row)
}

/// Adds an upstream.
pub async fn create(
    keyring: &Keyring,
    input: &NewUpstream,
    by: &Actor,
) -> Result<UpstreamSpec, ApiError> {
    let now = keyring.now();
    let mut spec = form::new_spec(input)?;
    spec.created_at = now;
    spec.updated_at = now;
    let mut tx = store::begin_write(&keyring.pool).await?;
    if store::upstreams::find_by_name(&mut *tx, &spec.name)
        .await?
        .is_some()
    {
        return Err(name_taken(&spec.name));
    }
    let row = store::upstreams::insert(&mut *tx, &row_of(keyring, &spec, None))
        .await
        .map_err(|err| match is_unique_violation(&err) {
            true => name_taken(&spec.name),
            false => err.into(),
        })?;
    spec.id = row.id;
    store::upstreams::bump_generation(&mut *tx).await?;
    audit::record(
        &mut *tx,
        now,
        by,
        Action::UpstreamCreate,
        None,
        details(None, Some(&spec)),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(upstream_id = spec.id, name = %spec.name, "upstream created");
    Ok(spec)
}

/// Applies a PATCH; an unchanged credential keeps its stored encryption.
pub async fn update(
    keyring: &Keyring,
    id: i64,
    patch: &UpstreamPatch,
    by: &Actor,
) -> Result<UpstreamSpec, ApiError> {
    if id == DEFAULT_ID {
        return Err(ApiError::Conflict(BUILTIN.into()));
    }
    let now = keyring.now();
    let mut tx = store::begin_write(&keyring.pool).await?;
    let stored = store::upstreams::get(&mut *tx, id)
        .await?
        .ok_or(ApiError::NotFound("upstream"))?;
    let before = match spec_of(keyring, stored.clone()) {
        Ok(spec) => spec,
        // A credential this server cannot decrypt can still be replaced or removed.
        Err(_) if patch.api_key.is_some() => spec_of(
            keyring,
            UpstreamRow {
                encrypted_api_key: None,
                ..stored.clone()
            },
        )?,
        Err(err) => return Err(err),
    };
    let mut spec = before.clone();
    form::apply(&mut spec, patch)?;
    if spec.name != before.name
        && store::upstreams::find_by_name(&mut *tx, &spec.name)
            .await?
            .is_some()
    {
        return Err(name_taken(&spec.name));
    }
    spec.updated_at = now;
    // An unchanged credential keeps its stored token.
    let kept = patch
        .api_key
        .is_none()
        .then(|| stored.encrypted_api_key.clone())
        .flatten();
    let row = row_of(keyring, &spec, kept);
    store::upstreams::update(&mut *tx, &row)
        .await
        .map_err(|err| match is_unique_violation(&err) {
            true => name_taken(&spec.name),
            false => err.into(),
        })?;
    store::upstreams::bump_generation(&mut *tx).await?;
    audit::record(
        &mut *tx,
        now,
        by,
        Action::UpstreamUpdate,
        None,
        details(Some(&before), Some(&spec)),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(upstream_id = id, "upstream changed");
    Ok(spec)
}

/// Removes an upstream. Keys bound to it make this a 409 naming them, unless `force`: then
/// it is taken out of their `upstream_ids` in the same transaction.
pub async fn delete(
    keyring: &Keyring,
    id: i64,
    force: bool,
    by: &Actor,
) -> Result<Deleted, ApiError> {
    if id == DEFAULT_ID {
        return Err(ApiError::Conflict(BUILTIN.into()));
    }
    let now = keyring.now();
    let mut tx = store::begin_write(&keyring.pool).await?;
    let stored = store::upstreams::get(&mut *tx, id)
        .await?
        .ok_or(ApiError::NotFound("upstream"))?;
    let name = stored.name.clone();
    // Read for the audit entry; a row this server cannot decrypt can still be deleted.
    let upstream = spec_of(keyring, stored).ok();
    let bound = store::upstreams::bound_keys(&mut *tx, id).await?;
    if !bound.is_empty() && !force {
        return Err(ApiError::Conflict(format!(
            "{} key(s) are bound to upstream `{name}` (ids {}); unbind them first (PATCH their \
             upstream_ids), or delete with ?force=true to take it out of their upstream_ids (a \
             key bound to it alone is then bound to none: it may use every upstream)",
            bound.len(),
            shown_ids(&bound)
        )));
    }
    if !bound.is_empty() {
        store::upstreams::unbind(&mut *tx, id, now).await?;
    }
    store::upstreams::delete(&mut *tx, id).await?;
    store::upstreams::bump_generation(&mut *tx).await?;
    let mut entry = match &upstream {
        Some(upstream) => details(Some(upstream), None),
        None => json!({ "upstream_id": id, "upstream_name": name, "changes": {} }),
    };
    entry["unbound_key_ids"] = json!(bound);
    audit::record(&mut *tx, now, by, Action::UpstreamDelete, None, entry).await?;
    tx.commit().await?;
    if !bound.is_empty() {
        keyring.cache.clear();
    }
    tracing::info!(
        upstream_id = id,
        unbound_keys = bound.len(),
        "upstream deleted"
    );
    Ok(Deleted {
        id,
        name,
        unbound_key_ids: bound,
    })
}

/// The first few ids of a list, and how many more.
fn shown_ids(ids: &[i64]) -> String {
    const SHOWN: usize = 10;
    let mut text = ids
        .iter()
        .take(SHOWN)
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN {
        text.push_str(&format!(" and {} more", ids.len() - SHOWN));
    }
    text
}
