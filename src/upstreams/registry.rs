//! The live set of upstreams the relay routes over: loaded from the store at start and again
//! after every change (the next request sees it, no restart), with each one's health; and the
//! order in which a request tries them (SPEC §12).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rand::Rng;
use sqlx::SqlitePool;

use super::health::{CooldownPolicy, Health};
use super::spec::{AuthHeader, Kind, UpstreamSpec, DEFAULT_ID, DEFAULT_NAME};
use crate::clock::Clock;
use crate::config::Config;
use crate::relay::upstream::Upstream;
use crate::store;

/// One upstream the relay may use: what it is configured as, and its connections.
pub struct Route {
    pub spec: Arc<UpstreamSpec>,
    pub upstream: Arc<Upstream>,
}

/// The upstreams of one moment, shared by the requests that started under it: the configured
/// ones by priority (then id), the built-in `default` last.
pub struct Table {
    pub routes: Vec<Route>,
}

impl Table {
    /// The upstreams a request tries, in order, at most `attempts`: the enabled ones of its
    /// route `kind` that serve its `model` (and are in `bound`, the key's `upstream_ids`, when
    /// that is not empty), by priority, in weighted random order within a priority, those
    /// cooling down left out — unless all are, then the one whose cooldown ends first.
    pub fn plan(
        &self,
        kind: Kind,
        model: Option<&str>,
        bound: &[i64],
        now: i64,
        attempts: usize,
    ) -> Vec<&Route> {
        let eligible = |route: &&Route| {
            let spec = &route.spec;
            spec.enabled
                && spec.kind == kind
                && (bound.is_empty() || bound.contains(&spec.id))
                && spec.serves(model)
        };
        // The usual case, one upstream: no shuffling, one small allocation.
        if let [only] = &self.routes[..] {
            return std::iter::once(only).filter(eligible).collect();
        }
        let mut plan: Vec<&Route> = Vec::with_capacity(attempts.min(self.routes.len()));
        let mut soonest: Option<(i64, &Route)> = None;
        let mut group: Vec<&Route> = Vec::new();
        let mut routes = self.routes.iter().filter(eligible).peekable();
        while let Some(first) = routes.next() {
            group.clear();
            group.push(first);
            while let Some(next) = routes.next_if(|r| r.spec.priority == first.spec.priority) {
                group.push(next);
            }
            group.retain(|route| match route.upstream.health.cooling_until(now) {
                None => true,
                Some(until) => {
                    if soonest.is_none_or(|(s, _)| until < s) {
                        soonest = Some((until, route));
                    }
                    false
                }
            });
            shuffle_by_weight(&mut group);
            plan.extend(group.iter().copied());
            if plan.len() >= attempts {
                break;
            }
        }
        plan.truncate(attempts);
        if plan.is_empty() {
            plan.extend(soonest.map(|(_, route)| route));
        }
        plan
    }

    /// The configured upstreams (not the built-in one), in routing order.
    pub fn specs(&self) -> Vec<Arc<UpstreamSpec>> {
        self.routes
            .iter()
            .filter(|r| r.spec.id != DEFAULT_ID)
            .map(|r| r.spec.clone())
            .collect()
    }

    pub fn route(&self, id: i64) -> Option<&Route> {
        self.routes.iter().find(|route| route.spec.id == id)
    }
}

/// Orders `group` by weighted random draws without replacement (weight 0 last).
fn shuffle_by_weight(group: &mut [&Route]) {
    if group.len() < 2 {
        return;
    }
    let mut rng = rand::thread_rng();
    for start in 0..group.len() - 1 {
        let total: u64 = group[start..]
            .iter()
            .map(|r| u64::from(r.spec.weight))
            .sum();
        if total == 0 {
            return;
        }
        let mut draw = rng.gen_range(0..total);
        let mut pick = start;
        for (i, route) in group[start..].iter().enumerate() {
            let weight = u64::from(route.spec.weight);
            if draw < weight {
                pick = start + i;
                break;
            }
            draw -= weight;
        }
        group.swap(start, pick);
    }
}

/// Every upstream's routing data and health.
pub struct Registry {
    pool: SqlitePool,
    fernet: Arc<fernet::Fernet>,
    config: Arc<Config>,
    clock: Clock,
    builtin: Route,
    table: RwLock<Arc<Table>>,
    /// One reload at a time: each builds on the table the one before installed, so an
    /// upstream that did not change keeps its connections and health.
    reloading: tokio::sync::Mutex<()>,
    pub cooldown: CooldownPolicy,
    /// Most upstreams one request tries (`KEYGATE_UPSTREAM_ATTEMPTS`).
    pub attempts: usize,
}

impl Registry {
    /// Loads the stored upstreams; `builtin` is the environment's `default`.
    pub async fn open(
        pool: SqlitePool,
        fernet: Arc<fernet::Fernet>,
        config: Arc<Config>,
        clock: Clock,
        builtin: Arc<Upstream>,
    ) -> anyhow::Result<Self> {
        let spec = UpstreamSpec {
            id: DEFAULT_ID,
            name: DEFAULT_NAME.into(),
            kind: Kind::OpenAi,
            base_url: config.upstream_url.to_string().trim_end_matches('/').into(),
            api_key: None,
            auth_header: AuthHeader::Bearer,
            models: Vec::new(),
            model_map: Default::default(),
            priority: i64::MAX,
            weight: 1,
            enabled: true,
            timeout_seconds: None,
            stream_usage: config.stream_usage,
            extra_headers: Default::default(),
            created_at: 0,
            updated_at: 0,
        };
        let registry = Registry {
            pool,
            fernet,
            cooldown: CooldownPolicy {
                fails: config.cooldown_fails,
                base: config.cooldown,
            },
            attempts: config.upstream_attempts,
            config,
            clock,
            builtin: Route {
                spec: Arc::new(spec),
                upstream: builtin,
            },
            table: RwLock::new(Arc::new(Table { routes: Vec::new() })),
            reloading: tokio::sync::Mutex::new(()),
        };
        registry.reload().await?;
        Ok(registry)
    }

    /// Reads the stored upstreams again; requests that start afterwards use them. An upstream
    /// whose configuration did not change keeps its connections and health. One that cannot be
    /// used (a row edited by hand, a Fernet key that changed) is left out, with an error logged.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let _one_at_a_time = self.reloading.lock().await;
        let rows = store::upstreams::list(&self.pool).await?;
        let old = self.table();
        let mut kept: HashMap<i64, &Route> = old.routes.iter().map(|r| (r.spec.id, r)).collect();
        let mut routes = Vec::with_capacity(rows.len() + 1);
        for row in rows {
            let (id, name) = (row.id, row.name.clone());
            let route = UpstreamSpec::from_row(row, &self.fernet).and_then(|spec| {
                if let Some(same) = kept.remove(&id).filter(|r| *r.spec == spec) {
                    return Ok(Route {
                        spec: same.spec.clone(),
                        upstream: same.upstream.clone(),
                    });
                }
                let upstream = Upstream::configured(&spec, &self.config)?;
                Ok(Route {
                    spec: Arc::new(spec),
                    upstream: Arc::new(upstream),
                })
            });
            match route {
                Ok(route) => routes.push(route),
                Err(err) => tracing::error!(
                    upstream = %name,
                    error = format!("{err:#}"),
                    "an upstream cannot be used and is left out; fix it with `keygate upstreams edit`"
                ),
            }
        }
        routes.sort_by_key(|route| (route.spec.priority, route.spec.id));
        routes.push(Route {
            spec: self.builtin.spec.clone(),
            upstream: self.builtin.upstream.clone(),
        });
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Table { routes });
        Ok(())
    }

    /// The upstreams now.
    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The health of upstream `id` (a disabled one is `disabled`; an unknown one healthy).
    pub fn health(&self, id: i64) -> Health {
        let table = self.table();
        match table.route(id) {
            Some(route) if !route.spec.enabled => Health {
                state: "disabled",
                ..Health::default()
            },
            Some(route) => route.upstream.health.snapshot(self.clock.now_ms()),
            None => Health {
                state: "healthy",
                ..Health::default()
            },
        }
    }
}
