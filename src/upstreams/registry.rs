//! The live set of upstreams the relay routes over: loaded from the store at start and again
//! after every change (the next request sees it, no restart), with each one's health.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use sqlx::SqlitePool;

use super::spec::UpstreamSpec;
use crate::store;

/// The upstreams of one moment, shared by the requests that started under it.
#[derive(Default)]
pub struct Table {
    pub upstreams: Vec<Arc<UpstreamSpec>>,
}

/// An upstream's health as the admin API and console show it (kept in memory only).
#[derive(Clone, Debug, Default, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Health {
    /// `healthy`, `cooling` (skipped until `cooling_until`) or `disabled`.
    pub state: &'static str,
    /// UTC ms.
    pub cooling_until: Option<i64>,
    pub consecutive_failures: u32,
    /// The last failure, redacted of credentials.
    pub last_error: Option<String>,
}

/// Every upstream's routing data and health.
pub struct Registry {
    pool: SqlitePool,
    fernet: Arc<fernet::Fernet>,
    table: RwLock<Arc<Table>>,
    health: Mutex<HashMap<i64, Health>>,
}

impl Registry {
    /// Loads the stored upstreams.
    pub async fn open(pool: SqlitePool, fernet: Arc<fernet::Fernet>) -> anyhow::Result<Self> {
        let registry = Registry {
            pool,
            fernet,
            table: RwLock::default(),
            health: Mutex::default(),
        };
        registry.reload().await?;
        Ok(registry)
    }

    /// Reads the stored upstreams again; requests that start afterwards use them.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let rows = store::upstreams::list(&self.pool).await?;
        let upstreams = rows
            .into_iter()
            .map(|row| UpstreamSpec::from_row(row, &self.fernet).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let table = Arc::new(Table { upstreams });
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = table;
        Ok(())
    }

    /// The upstreams now.
    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The health of upstream `id` (a disabled one is `disabled`).
    pub fn health(&self, id: i64) -> Health {
        let table = self.table();
        let enabled = table.upstreams.iter().any(|u| u.id == id && u.enabled);
        if !enabled && id != super::spec::DEFAULT_ID {
            return Health {
                state: "disabled",
                ..Health::default()
            };
        }
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.get(&id).cloned().unwrap_or(Health {
            state: "healthy",
            ..Health::default()
        })
    }
}
