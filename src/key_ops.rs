//! Key operations shared by the admin API and the CLI: validate, create, change, renew,
//! revoke, regenerate, delete, each recorded in the audit log in the transaction of the change (a
//! revocation also queues its webhook there); and the view of a key that both show.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};
use sqlx::SqlitePool;

use crate::audit::{self, Action, Actor};
use crate::clock::{parse_rfc3339, ser_ms, ser_opt_ms, Clock, MS_PER_DAY};
use crate::error::ApiError;
use crate::keys::{self, ActivationUnit, ExpirationMode, Status};
use crate::limits::meters::Meters;
use crate::limits::{Limits, LimitsPatch, TakesLimits};
use crate::policy::{self, IdList, KindList, ListKind, TextList};
use crate::relay::auth::KeyCache;
use crate::store::keys::{Binding, KeyFilter, KeyRow, NewKey, Restrictions};
use crate::store::{self, Page};
use crate::webhooks::{Event, EventType, Webhooks};

/// A key as the admin API and the CLI show it: no hash, no encrypted copy.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub id: i64,
    pub name: String,
    pub description: Option<String>,
    pub key_preview: String,
    pub status: Status,
    pub is_active: bool,
    pub expiring_soon: bool,
    pub expires_in_seconds: Option<i64>,
    #[serde(serialize_with = "ser_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(serialize_with = "ser_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
    #[serde(serialize_with = "ser_opt_ms")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<i64>,
    pub expiration_mode: ExpirationMode,
    pub activation_period: Option<i64>,
    pub activation_unit: Option<String>,
    #[serde(serialize_with = "ser_opt_ms")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub activated_at: Option<i64>,
    #[serde(serialize_with = "ser_opt_ms")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<i64>,
    pub usage_count: i64,
    #[serde(serialize_with = "ser_opt_ms")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<i64>,
    /// The sum of `total_tokens` over the key's calls.
    pub total_tokens_used: i64,
    /// USD, the sum of the cost of the key's calls.
    pub total_cost: f64,
    /// `allowed_models`, `allowed_clients`, `allowed_ips`, `allowed_endpoints`, `tags`.
    #[serde(flatten)]
    pub restrictions: Restrictions,
    /// `upstream_ids`, `permissions`.
    #[serde(flatten)]
    pub binding: Binding,
    /// `rate_limit_window`, `rate_limit_requests`, … (SPEC §10; 0 = no limit).
    #[serde(flatten)]
    pub limits: Limits,
    /// USD spent today (UTC) and this week (from Monday 00:00 UTC); see `with_spend`.
    pub daily_cost: f64,
    pub weekly_cost: f64,
    /// The full key: only in the create and regenerate answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// In a regenerate answer with a grace period: until when the replaced secret works.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_ms")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub previous_key_valid_until: Option<i64>,
}

impl KeyView {
    pub fn new(row: &KeyRow, now: i64) -> Self {
        let lifecycle = row.lifecycle();
        KeyView {
            id: row.id,
            name: row.name.clone(),
            description: row.description.clone(),
            key_preview: row.key_preview.clone(),
            status: lifecycle.status(now),
            is_active: row.is_active,
            expiring_soon: lifecycle.expiring_soon(now),
            expires_in_seconds: row.expires_at.map(|at| (at - now).div_euclid(1000)),
            created_at: row.created_at,
            updated_at: row.updated_at,
            expires_at: row.expires_at,
            expiration_mode: row.mode(),
            activation_period: row.activation_period,
            activation_unit: row.activation_unit.clone(),
            activated_at: row.activated_at,
            revoked_at: row.revoked_at,
            usage_count: row.usage_count,
            last_used_at: row.last_used_at,
            total_tokens_used: row.total_tokens_used,
            total_cost: row.total_cost,
            restrictions: row.restrictions.clone(),
            binding: row.binding.clone(),
            limits: row.limits,
            daily_cost: 0.0,
            weekly_cost: 0.0,
            key: None,
            previous_key_valid_until: None,
        }
    }

    /// With today's and this week's cost.
    pub fn with_spend(mut self, (daily_cost, weekly_cost): (f64, f64)) -> Self {
        self.daily_cost = daily_cost;
        self.weekly_cost = weekly_cost;
        self
    }

    pub fn with_key(mut self, key: String) -> Self {
        self.key = Some(key);
        self
    }
}

/// `POST /api/api-keys`: a name, and at most one way of expiring.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    #[schema(max_length = 1000)]
    pub description: Option<String>,
    #[schema(minimum = 1, maximum = 36500)]
    pub expires_days: Option<i64>,
    /// For short-lived keys (the seeds' "1 hour" choice).
    #[schema(minimum = 1, maximum = 876000)]
    pub expires_hours: Option<i64>,
    pub expires_at: Option<String>,
    pub never: Option<bool>,
    pub expiration_mode: Option<ExpirationMode>,
    #[schema(minimum = 1, maximum = 36500)]
    pub activation_period: Option<i64>,
    pub activation_unit: Option<ActivationUnit>,
    /// Model names or `prefix*` patterns; empty: any model.
    pub allowed_models: Option<Vec<String>>,
    /// User-Agent patterns (exact or `prefix*`, case-insensitive); empty: any client.
    pub allowed_clients: Option<Vec<String>>,
    /// IP addresses or CIDRs; empty: any address.
    pub allowed_ips: Option<Vec<String>>,
    /// Paths under /v1/ (exact or `prefix*`); empty: any endpoint.
    pub allowed_endpoints: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    /// Upstream ids the key may be relayed to (0: the built-in `default`); empty: any.
    pub upstream_ids: Option<Vec<i64>>,
    /// Route kinds the key may use: `openai`, `anthropic`; empty: both.
    #[schema(value_type = Option<Vec<crate::upstreams::spec::Kind>>)]
    pub permissions: Option<Vec<String>>,
    /// The limit fields (read beside these by `limits::WithLimits`).
    #[serde(skip)]
    pub limits: LimitsPatch,
}

/// `PATCH /api/api-keys/{id}`: absent fields are unchanged; `expires_at: null` means never;
/// a given list replaces the key's (`[]` lifts that restriction).
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub expires_at: Option<Option<String>>,
    pub is_active: Option<bool>,
    /// Model names or `prefix*` patterns; empty: any model.
    pub allowed_models: Option<Vec<String>>,
    /// User-Agent patterns (exact or `prefix*`, case-insensitive); empty: any client.
    pub allowed_clients: Option<Vec<String>>,
    /// IP addresses or CIDRs; empty: any address.
    pub allowed_ips: Option<Vec<String>>,
    /// Paths under /v1/ (exact or `prefix*`); empty: any endpoint.
    pub allowed_endpoints: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    /// Upstream ids the key may be relayed to (0: the built-in `default`); empty: any.
    pub upstream_ids: Option<Vec<i64>>,
    /// Route kinds the key may use: `openai`, `anthropic`; empty: both.
    #[schema(value_type = Option<Vec<crate::upstreams::spec::Kind>>)]
    pub permissions: Option<Vec<String>>,
    /// The limit fields to change (0 lifts a limit).
    #[serde(skip)]
    pub limits: LimitsPatch,
}

impl TakesLimits for CreateKey {
    fn limits_mut(&mut self) -> &mut LimitsPatch {
        &mut self.limits
    }
}

impl TakesLimits for KeyPatch {
    fn limits_mut(&mut self) -> &mut LimitsPatch {
        &mut self.limits
    }
}

/// `POST /api/api-keys/{id}/renew`: exactly one of `days` (from now), `expires_at`, `never`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Renewal {
    #[schema(minimum = 1, maximum = 36500)]
    pub days: Option<i64>,
    pub expires_at: Option<String>,
    pub never: Option<bool>,
}

/// `POST /api/api-keys/renew-expiring`: keys expiring within `within_days` (default 7) get
/// `extend_days` (default 30) more; `ids` narrows the batch to a chosen subset.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewExpiring {
    #[schema(minimum = 1, maximum = 36500)]
    pub within_days: Option<i64>,
    #[schema(minimum = 1, maximum = 36500)]
    pub extend_days: Option<i64>,
    pub ids: Option<Vec<i64>>,
}

/// What a batch renewal changed.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct RenewedBatch {
    pub within_days: i64,
    pub extend_days: i64,
    pub renewed: Vec<KeyView>,
    /// Requested ids that are not expiring within the window (or do not exist): untouched.
    pub skipped_ids: Vec<i64>,
}

/// Tells `"field": null` (Some(None)) from an absent field (None).
pub(crate) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Creates the data directory (and missing parents) 0700; an existing one is left as it is.
fn create_data_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Longest expiry accepted, in days.
const MAX_DAYS: i64 = 36_500;
/// Longest rotation grace period, in hours (30 days).
const MAX_GRACE_HOURS: i64 = 720;

/// A regenerated key: its row, the new secret (shown once), and until when the replaced
/// secret still works.
pub struct Regenerated {
    pub row: KeyRow,
    pub secret: String,
    pub grace_until: Option<i64>,
}

/// `POST /api/api-keys/{id}/regenerate` (the body is optional).
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Regenerate {
    /// Hours the replaced secret keeps working (0 or absent: none).
    #[schema(minimum = 0, maximum = 720)]
    pub grace_hours: Option<i64>,
}

/// The keys of the store, with the clock, the encryption key, and the relay's cache, which
/// every change clears so it is in force on the next request.
#[derive(Clone)]
pub struct Keyring {
    pub pool: SqlitePool,
    pub clock: Clock,
    pub fernet: Arc<fernet::Fernet>,
    pub cache: Arc<KeyCache>,
    /// The relay's meters of keys with limits (a deleted key's goes with it).
    pub meters: Arc<Meters>,
    /// Where key events (revoked, …) are queued; a no-op without KEYGATE_WEBHOOK_URL.
    pub webhooks: Webhooks,
}

impl Keyring {
    /// Opens the store and the encryption key named by `config` (the server and the CLI alike).
    pub async fn open(config: &crate::config::Config, clock: Clock) -> anyhow::Result<Keyring> {
        create_data_dir(&config.data_dir).map_err(|err| {
            anyhow::anyhow!(
                "cannot create the data directory {}: {err}",
                config.data_dir.display()
            )
        })?;
        Ok(Keyring {
            pool: store::open(&config.database_url, config.db_busy_timeout).await?,
            clock,
            fernet: Arc::new(crate::secrets::fernet(config)?),
            cache: Arc::new(KeyCache::default()),
            meters: Arc::new(Meters::default()),
            webhooks: Webhooks::new(config)?,
        })
    }

    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn view(&self, row: &KeyRow) -> KeyView {
        KeyView::new(row, self.now())
    }

    /// The views of `rows` with what each spent today and this week.
    pub async fn views(&self, rows: &[KeyRow]) -> Result<Vec<KeyView>, ApiError> {
        let now = self.now();
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        let spend =
            store::usage::day_and_week_costs(&self.pool, &ids, crate::limits::meter::day_of(now))
                .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let view = KeyView::new(row, now);
                match spend.get(&row.id) {
                    Some(spent) => view.with_spend(*spent),
                    None => view,
                }
            })
            .collect())
    }

    /// One key's view with what it spent today and this week.
    pub async fn full_view(&self, row: &KeyRow) -> Result<KeyView, ApiError> {
        let mut views = self.views(std::slice::from_ref(row)).await?;
        Ok(views.pop().unwrap_or_else(|| self.view(row)))
    }

    pub async fn get(&self, id: i64) -> Result<KeyRow, ApiError> {
        store::keys::get(&self.pool, id)
            .await?
            .ok_or(ApiError::NotFound("API key"))
    }

    pub async fn list(
        &self,
        filter: &KeyFilter,
        page: Page,
    ) -> Result<(Vec<KeyRow>, i64), ApiError> {
        Ok(store::keys::list(&self.pool, filter, self.now(), page).await?)
    }

    /// Creates a key; returns the row and the full key, which is never available again.
    pub async fn create(
        &self,
        request: &CreateKey,
        by: &Actor,
    ) -> Result<(KeyRow, String), ApiError> {
        let now = self.now();
        let name = valid_name(&request.name)?;
        let description = valid_description(request.description.as_deref())?;
        let activation = request.expiration_mode == Some(ExpirationMode::Activation);
        let choices = [
            request.expires_days.is_some(),
            request.expires_hours.is_some(),
            request.expires_at.is_some(),
            request.never == Some(true),
            activation,
        ];
        if choices.iter().filter(|c| **c).count() > 1 {
            return Err(ApiError::invalid(
                "expires_at",
                "give only one of expires_days, expires_hours, expires_at, never or expiration_mode \"activation\"",
            ));
        }
        let (expires_at, activation_period, activation_unit) = if activation {
            let unit = request.activation_unit.ok_or_else(|| {
                ApiError::invalid(
                    "activation_unit",
                    "required with expiration_mode \"activation\": \"hours\" or \"days\"",
                )
            })?;
            let period = request.activation_period.ok_or_else(|| {
                ApiError::invalid(
                    "activation_period",
                    "required with expiration_mode \"activation\": a positive number",
                )
            })?;
            if !(1..=MAX_DAYS).contains(&period) {
                return Err(ApiError::invalid(
                    "activation_period",
                    format!("must be between 1 and {MAX_DAYS}"),
                ));
            }
            (None, Some(period), Some(unit))
        } else if request.activation_period.is_some() || request.activation_unit.is_some() {
            return Err(ApiError::invalid(
                "expiration_mode",
                "activation_period and activation_unit need expiration_mode \"activation\"",
            ));
        } else if let Some(days) = request.expires_days {
            (Some(expiry_in_days("expires_days", days, now)?), None, None)
        } else if let Some(hours) = request.expires_hours {
            if !(1..=MAX_DAYS * 24).contains(&hours) {
                return Err(ApiError::invalid(
                    "expires_hours",
                    "must be a positive whole number of hours",
                ));
            }
            (Some(now + hours * crate::clock::MS_PER_HOUR), None, None)
        } else if let Some(at) = &request.expires_at {
            (Some(future_time("expires_at", at, now)?), None, None)
        } else {
            (None, None, None)
        };
        let secret = keys::generate();
        let new = NewKey {
            key_hash: keys::hash_hex(&secret),
            encrypted_key: Some(self.fernet.encrypt(secret.as_bytes())),
            key_preview: keys::preview(&secret),
            name,
            description,
            expires_at,
            expiration_mode: if activation {
                ExpirationMode::Activation
            } else {
                ExpirationMode::Fixed
            },
            activation_period,
            activation_unit,
        };
        let restrictions = restrictions(&Restrictions::default(), &request.restriction_lists())?;
        let limits = Limits::default().patched(&request.limits);
        limits.validate()?;
        let mut tx = store::begin_write(&self.pool).await?;
        let binding = binding(
            &mut tx,
            &Binding::default(),
            request.upstream_ids.as_deref(),
            request.permissions.as_deref(),
        )
        .await?;
        let row =
            store::keys::insert_restricted(&mut *tx, &new, (&restrictions, &binding, &limits), now)
                .await?;
        audit::record_key(&mut *tx, now, by, Action::Create, None, Some(&row)).await?;
        tx.commit().await?;
        self.cache.clear();
        tracing::info!(key_id = row.id, "API key created");
        Ok((row, secret))
    }

    /// Applies a PATCH; in force on the next request.
    pub async fn update(&self, id: i64, patch: &KeyPatch, by: &Actor) -> Result<KeyRow, ApiError> {
        let now = self.now();
        let mut tx = store::begin_write(&self.pool).await?;
        let before = store::keys::get(&mut *tx, id)
            .await?
            .ok_or(ApiError::NotFound("API key"))?;
        let mut row = before.clone();
        if row.revoked_at.is_some() && (patch.expires_at.is_some() || patch.is_active == Some(true))
        {
            return Err(ApiError::Conflict(
                "This key is revoked and can never be used again; create a new key instead".into(),
            ));
        }
        if let Some(name) = &patch.name {
            row.name = valid_name(name)?;
        }
        if let Some(description) = &patch.description {
            row.description = valid_description(description.as_deref())?;
        }
        if let Some(expires_at) = &patch.expires_at {
            row.expires_at = match expires_at {
                None => None,
                Some(at) => Some(parse_time("expires_at", at)?),
            };
            if row.mode() == ExpirationMode::Activation && row.activated_at.is_none() {
                // An explicit expiry replaces the activation clock.
                row.expiration_mode = ExpirationMode::Fixed.as_str().into();
                row.activated_at = Some(now);
            }
        }
        if let Some(is_active) = patch.is_active {
            row.is_active = is_active;
        }
        row.restrictions = restrictions(&row.restrictions, &patch.restriction_lists())?;
        row.binding = binding(
            &mut tx,
            &row.binding,
            patch.upstream_ids.as_deref(),
            patch.permissions.as_deref(),
        )
        .await?;
        row.limits = row.limits.patched(&patch.limits);
        row.limits.validate()?;
        row.updated_at = now;
        let row = store::keys::save(&mut *tx, &row).await?;
        audit::record_key(&mut *tx, now, by, Action::Edit, Some(&before), Some(&row)).await?;
        tx.commit().await?;
        self.cache.clear();
        Ok(row)
    }

    /// Revokes a key at once and for good; its row and logs stay.
    pub async fn revoke(&self, id: i64, by: &Actor) -> Result<KeyRow, ApiError> {
        let now = self.now();
        let mut tx = store::begin_write(&self.pool).await?;
        let mut row = store::keys::get(&mut *tx, id)
            .await?
            .ok_or(ApiError::NotFound("API key"))?;
        if row.revoked_at.is_none() {
            let before = row.clone();
            row.revoked_at = Some(now);
            row.is_active = false;
            row.updated_at = now;
            row = store::keys::save(&mut *tx, &row).await?;
            audit::record_key(&mut *tx, now, by, Action::Revoke, Some(&before), Some(&row)).await?;
            let event = Event::new(EventType::Revoked, &row, now);
            self.webhooks.queue(&mut tx, &event).await?;
        }
        tx.commit().await?;
        self.cache.clear();
        self.webhooks.wake();
        tracing::info!(key_id = id, "API key revoked");
        Ok(row)
    }

    /// Renews one key (also an expired or disabled one, which becomes active again).
    pub async fn renew(&self, id: i64, renewal: &Renewal, by: &Actor) -> Result<KeyRow, ApiError> {
        let now = self.now();
        let chosen = [
            renewal.days.is_some(),
            renewal.expires_at.is_some(),
            renewal.never == Some(true),
        ];
        if chosen.iter().filter(|c| **c).count() != 1 {
            return Err(ApiError::invalid(
                "days",
                "give exactly one of days, expires_at or never: true",
            ));
        }
        let expires_at = match (&renewal.days, &renewal.expires_at) {
            (Some(days), _) => Some(expiry_in_days("days", *days, now)?),
            (_, Some(at)) => Some(future_time("expires_at", at, now)?),
            _ => None,
        };
        let mut tx = store::begin_write(&self.pool).await?;
        let mut row = store::keys::get(&mut *tx, id)
            .await?
            .ok_or(ApiError::NotFound("API key"))?;
        if row.revoked_at.is_some() {
            return Err(ApiError::Conflict(
                "This key is revoked and cannot be renewed; create a new key instead".into(),
            ));
        }
        let before = row.clone();
        row.expires_at = expires_at;
        row.is_active = true;
        row.expiration_mode = ExpirationMode::Fixed.as_str().into();
        row.activated_at = row.activated_at.or(Some(now));
        row.updated_at = now;
        let row = store::keys::save(&mut *tx, &row).await?;
        audit::record_key(&mut *tx, now, by, Action::Renew, Some(&before), Some(&row)).await?;
        tx.commit().await?;
        self.cache.clear();
        tracing::info!(key_id = id, "API key renewed");
        Ok(row)
    }

    /// Extends every key expiring within the window (or the chosen ones among them), in one transaction.
    pub async fn renew_expiring(
        &self,
        request: &RenewExpiring,
        by: &Actor,
    ) -> Result<RenewedBatch, ApiError> {
        let now = self.now();
        let within_days = request.within_days.unwrap_or(7);
        let extend_days = request.extend_days.unwrap_or(30);
        if !(1..=MAX_DAYS).contains(&within_days) {
            return Err(ApiError::invalid(
                "within_days",
                format!("must be between 1 and {MAX_DAYS}"),
            ));
        }
        if !(1..=MAX_DAYS).contains(&extend_days) {
            return Err(ApiError::invalid(
                "extend_days",
                format!("must be between 1 and {MAX_DAYS} (e.g. 30 or 90)"),
            ));
        }
        let mut tx = store::begin_write(&self.pool).await?;
        let candidates =
            store::keys::expiring_between(&mut *tx, now, now + within_days * MS_PER_DAY).await?;
        let chosen: Vec<KeyRow> = match &request.ids {
            Some(ids) => candidates
                .into_iter()
                .filter(|row| ids.contains(&row.id))
                .collect(),
            None => candidates,
        };
        let mut renewed = Vec::with_capacity(chosen.len());
        let mut keys = Vec::with_capacity(chosen.len());
        for mut row in chosen {
            let before = row.clone();
            row.expires_at = row.expires_at.map(|at| at + extend_days * MS_PER_DAY);
            row.is_active = true;
            row.updated_at = now;
            let row = store::keys::save(&mut *tx, &row).await?;
            keys.push(serde_json::json!({
                "id": row.id,
                "name": row.name,
                "changes": audit::changes(Some(&before), Some(&row)),
            }));
            renewed.push(row);
        }
        if !renewed.is_empty() {
            let details = serde_json::json!({
                "within_days": within_days,
                "extend_days": extend_days,
                "keys": keys,
            });
            audit::record(&mut *tx, now, by, Action::BatchRenew, None, details).await?;
        }
        tx.commit().await?;
        self.cache.clear();
        let skipped_ids = request
            .ids
            .iter()
            .flatten()
            .filter(|id| !renewed.iter().any(|row| row.id == **id))
            .copied()
            .collect();
        tracing::info!(
            keys = renewed.len(),
            extend_days,
            "expiring API keys renewed"
        );
        Ok(RenewedBatch {
            within_days,
            extend_days,
            renewed: renewed.iter().map(|row| KeyView::new(row, now)).collect(),
            skipped_ids,
        })
    }

    /// A new secret for the same record and history. The old secret is dead at once, or,
    /// with `grace_hours`, keeps working that long (any older replaced secret dies).
    pub async fn regenerate(
        &self,
        id: i64,
        grace_hours: Option<i64>,
        by: &Actor,
    ) -> Result<Regenerated, ApiError> {
        let now = self.now();
        let grace_until = match grace_hours.filter(|hours| *hours != 0) {
            None => None,
            Some(hours) if (1..=MAX_GRACE_HOURS).contains(&hours) => {
                Some(now + hours * crate::clock::MS_PER_HOUR)
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "grace_hours",
                    format!("must be a whole number of hours from 0 (none) to {MAX_GRACE_HOURS}"),
                ))
            }
        };
        let mut tx = store::begin_write(&self.pool).await?;
        let mut row = store::keys::get(&mut *tx, id)
            .await?
            .ok_or(ApiError::NotFound("API key"))?;
        if row.revoked_at.is_some() {
            return Err(ApiError::Conflict(
                "This key is revoked and cannot be regenerated; create a new key instead".into(),
            ));
        }
        let before = row.clone();
        let secret = keys::generate();
        let replaced = std::mem::replace(&mut row.key_hash, keys::hash_hex(&secret));
        row.encrypted_key = Some(self.fernet.encrypt(secret.as_bytes()));
        row.key_preview = keys::preview(&secret);
        row.updated_at = now;
        let row = store::keys::save(&mut *tx, &row).await?;
        let previous = grace_until.map(|until| (replaced.as_str(), until));
        store::keys::set_previous_secret(&mut *tx, id, previous).await?;
        audit::record_key(
            &mut *tx,
            now,
            by,
            Action::Regenerate,
            Some(&before),
            Some(&row),
        )
        .await?;
        tx.commit().await?;
        self.cache.clear();
        match grace_until {
            Some(until) => tracing::info!(
                key_id = id,
                grace_until = %crate::clock::rfc3339(until),
                "API key regenerated; the replaced secret works until the grace ends"
            ),
            None => tracing::info!(key_id = id, "API key regenerated"),
        }
        Ok(Regenerated {
            row,
            secret,
            grace_until,
        })
    }

    /// Gives every fixed-mode key without an expiry one `days` from now (the upgrade
    /// migration of the seeds). Keys with an expiry are untouched, so a second run changes
    /// nothing. With `dry_run`, reports what would change and writes nothing.
    pub async fn add_default_expiry(
        &self,
        days: i64,
        dry_run: bool,
        by: &Actor,
    ) -> Result<Vec<KeyRow>, ApiError> {
        let now = self.now();
        let expires_at = expiry_in_days("days", days, now)?;
        let mut tx = store::begin_write(&self.pool).await?;
        let mut changed = Vec::new();
        for mut row in store::keys::without_expiry(&mut *tx).await? {
            row.expires_at = Some(expires_at);
            row.updated_at = now;
            changed.push(if dry_run {
                row
            } else {
                store::keys::save(&mut *tx, &row).await?
            });
        }
        if dry_run {
            tx.rollback().await?;
        } else {
            if !changed.is_empty() {
                let details = serde_json::json!({
                    "expires_at": crate::clock::rfc3339(expires_at),
                    "key_ids": changed.iter().map(|row| row.id).collect::<Vec<_>>(),
                });
                audit::record(&mut *tx, now, by, Action::DefaultExpiry, None, details).await?;
            }
            tx.commit().await?;
            self.cache.clear();
        }
        Ok(changed)
    }

    /// Deletes a key and all its call logs.
    pub async fn delete(&self, id: i64, by: &Actor) -> Result<(), ApiError> {
        let now = self.now();
        let mut tx = store::begin_write(&self.pool).await?;
        let row = store::keys::get(&mut *tx, id)
            .await?
            .ok_or(ApiError::NotFound("API key"))?;
        store::keys::delete(&mut *tx, id).await?;
        audit::record_key(&mut *tx, now, by, Action::Delete, Some(&row), None).await?;
        tx.commit().await?;
        self.cache.clear();
        self.meters.forget(id);
        tracing::info!(key_id = id, "API key deleted with its call logs");
        Ok(())
    }
}

/// The lists a create or patch request gives (None: not given).
type GivenLists<'a> = [(ListKind, Option<&'a Vec<String>>); 5];

macro_rules! restriction_lists {
    ($request:ty) => {
        impl $request {
            fn restriction_lists(&self) -> GivenLists<'_> {
                [
                    (ListKind::Models, self.allowed_models.as_ref()),
                    (ListKind::Clients, self.allowed_clients.as_ref()),
                    (ListKind::Ips, self.allowed_ips.as_ref()),
                    (ListKind::Endpoints, self.allowed_endpoints.as_ref()),
                    (ListKind::Tags, self.tags.as_ref()),
                ]
            }
        }
    };
}
restriction_lists!(CreateKey);
restriction_lists!(KeyPatch);

/// `current` with each given list validated and put in its place.
fn restrictions(current: &Restrictions, given: &GivenLists<'_>) -> Result<Restrictions, ApiError> {
    let mut next = current.clone();
    for (kind, list) in given {
        let Some(list) = list else { continue };
        let valid = policy::validate(*kind, list)
            .map_err(|invalid| ApiError::invalid(invalid.field, invalid.message))?;
        let slot = match kind {
            ListKind::Models => &mut next.allowed_models,
            ListKind::Clients => &mut next.allowed_clients,
            ListKind::Ips => &mut next.allowed_ips,
            ListKind::Endpoints => &mut next.allowed_endpoints,
            ListKind::Tags => &mut next.tags,
        };
        *slot = TextList(valid);
    }
    Ok(next)
}

/// `current` with the given upstream ids (each naming an upstream, read in `tx`) and
/// permissions checked and put in their place.
async fn binding(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    current: &Binding,
    upstream_ids: Option<&[i64]>,
    permissions: Option<&[String]>,
) -> Result<Binding, ApiError> {
    let invalid = |invalid: policy::Invalid| ApiError::invalid(invalid.field, invalid.message);
    let mut next = current.clone();
    if let Some(ids) = upstream_ids {
        let known = if ids.is_empty() {
            Vec::new()
        } else {
            store::upstreams::ids(&mut **tx).await?
        };
        next.upstream_ids = IdList(policy::validate_upstream_ids(ids, &known).map_err(invalid)?);
    }
    if let Some(kinds) = permissions {
        next.permissions = KindList(policy::validate_permissions(kinds).map_err(invalid)?);
    }
    Ok(next)
}

fn valid_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    let len = name.chars().count();
    if !(1..=100).contains(&len) {
        return Err(ApiError::invalid("name", "must be 1 to 100 characters"));
    }
    Ok(name.to_string())
}

fn valid_description(description: Option<&str>) -> Result<Option<String>, ApiError> {
    let description = description.map(str::trim).filter(|d| !d.is_empty());
    if description.is_some_and(|d| d.chars().count() > 1000) {
        return Err(ApiError::invalid(
            "description",
            "must be at most 1000 characters",
        ));
    }
    Ok(description.map(str::to_string))
}

/// `now + days`, for a positive number of days.
pub fn expiry_in_days(field: &str, days: i64, now: i64) -> Result<i64, ApiError> {
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(ApiError::invalid(
            field,
            format!("must be a whole number of days from 1 to {MAX_DAYS}"),
        ));
    }
    Ok(now + days * MS_PER_DAY)
}

fn parse_time(field: &str, text: &str) -> Result<i64, ApiError> {
    parse_rfc3339(text).ok_or_else(|| {
        ApiError::invalid(
            field,
            "must be an RFC 3339 date-time, e.g. 2027-01-31T00:00:00Z",
        )
    })
}

/// An RFC 3339 time that must lie in the future.
pub fn future_time(field: &str, text: &str, now: i64) -> Result<i64, ApiError> {
    let at = parse_time(field, text)?;
    if at <= now {
        return Err(ApiError::invalid(field, "must be in the future"));
    }
    Ok(at)
}
