//! The per-request series, aggregated from call records by the call-log writer thread (off
//! the request path): requests, durations, tokens, cost and refusals, by bounded labels.

use std::collections::BTreeMap;

use super::labels;
use super::text::{Exposition, Histogram};
use crate::relay::record::CallRecord;

/// Bounds of keygate's own time per request (seconds): it is meant to stay under a millisecond.
const OVERHEAD_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Bounds of the upstream's time and of whole requests (seconds): up to the 300 s default
/// upstream timeout.
const UPSTREAM_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The model label of a request that named no model.
const NO_MODEL: &str = "none";
/// The model label past the bound.
const OTHER: &str = "other";

/// How the per-request series are labelled (`KEYGATE_METRICS_MODELS`, `KEYGATE_METRICS_PER_KEY`).
#[derive(Clone, Copy, Debug)]
pub struct Labelling {
    /// Models given a label of their own; the rest are `other`.
    pub max_models: usize,
    /// Series per key id as well.
    pub per_key: bool,
}

/// Index of a model label: 0 `none`, 1 `other`, then the models in the order they got one.
type ModelIx = usize;

#[derive(Default, Clone, Copy)]
struct Spend {
    prompt_tokens: u64,
    completion_tokens: u64,
    cost: f64,
}

impl Spend {
    fn add(&mut self, record: &CallRecord) {
        if let Some(usage) = &record.usage {
            self.prompt_tokens += usage.prompt_tokens.unwrap_or(0).max(0) as u64;
            self.completion_tokens += usage.completion_tokens.unwrap_or(0).max(0) as u64;
        }
        if record.cost.is_finite() && record.cost > 0.0 {
            self.cost += record.cost;
        }
    }
}

#[derive(Default)]
struct KeySeries {
    /// Requests by status class, in `CLASSES` order.
    requests: [u64; CLASSES.len()],
    spend: Spend,
}

const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

fn class_ix(class: &str) -> usize {
    CLASSES.iter().position(|c| *c == class).unwrap_or(5)
}

/// Everything counted from call records since start.
pub struct CallStats {
    labelling: Labelling,
    /// foldhash, not SipHash: looked up for every call record.
    model_ix: foldhash::HashMap<String, ModelIx>,
    model_names: Vec<String>,
    requests: BTreeMap<(&'static str, &'static str, ModelIx), u64>,
    spend: BTreeMap<ModelIx, Spend>,
    refusals: BTreeMap<(&'static str, &'static str), u64>,
    overhead: Histogram,
    upstream: Histogram,
    duration: Histogram,
    keys: BTreeMap<i64, KeySeries>,
}

impl CallStats {
    pub fn new(labelling: Labelling) -> Self {
        CallStats {
            labelling,
            model_ix: foldhash::HashMap::default(),
            model_names: vec![NO_MODEL.into(), OTHER.into()],
            requests: BTreeMap::new(),
            spend: BTreeMap::new(),
            refusals: BTreeMap::new(),
            overhead: Histogram::new(OVERHEAD_BOUNDS),
            upstream: Histogram::new(UPSTREAM_BOUNDS),
            duration: Histogram::new(UPSTREAM_BOUNDS),
            keys: BTreeMap::new(),
        }
    }

    /// The model's label. A model gets one of its own once a call naming it succeeded (so
    /// names the upstream does not serve, whatever a client sends, never take a place), while
    /// fewer than `max_models` have one.
    fn model(&mut self, record: &CallRecord) -> ModelIx {
        let Some(model) = record.model.as_deref() else {
            return 0;
        };
        if let Some(ix) = self.model_ix.get(model) {
            return *ix;
        }
        if !record.success || self.model_ix.len() >= self.labelling.max_models {
            return 1;
        }
        let ix = self.model_names.len();
        self.model_names.push(model.to_string());
        self.model_ix.insert(model.to_string(), ix);
        ix
    }

    /// Counts one call.
    pub fn observe(&mut self, record: &CallRecord) {
        let route = labels::route(&record.endpoint);
        let class = labels::status_class(record.http_status);
        let model = self.model(record);
        *self.requests.entry((route, class, model)).or_default() += 1;
        if record.usage.is_some() || record.cost > 0.0 {
            self.spend.entry(model).or_default().add(record);
        }
        if let Some((reason, limit)) = labels::refusal(record) {
            *self
                .refusals
                .entry((reason, limit.unwrap_or("")))
                .or_default() += 1;
        }
        if let Some(us) = record.overhead_us {
            self.overhead.observe(f64::from(us) / 1e6);
        }
        if let Some(us) = record.upstream_us {
            self.upstream.observe(f64::from(us) / 1e6);
        }
        self.duration
            .observe(record.response_time.max(0) as f64 / 1e3);
        if let (true, Some(key)) = (self.labelling.per_key, record.api_key_id) {
            let series = self.keys.entry(key).or_default();
            series.requests[class_ix(class)] += 1;
            series.spend.add(record);
        }
    }

    /// Writes every family of per-request series; `unlogged`: requests refused because the
    /// call log could not take their row (they have none, so they are counted apart).
    pub fn expose(&self, text: &mut Exposition, unlogged: u64) {
        text.family(
            "keygate_requests_total",
            "counter",
            "Requests to /v1 by route (known routes, else other), status class and model (the first KEYGATE_METRICS_MODELS models that answered successfully; else other; none when the request named no model).",
        );
        for ((route, class, model), count) in &self.requests {
            let labels = [
                ("route", *route),
                ("status_class", *class),
                ("model", self.model_names[*model].as_str()),
            ];
            text.sample("keygate_requests_total", &labels, *count as f64);
        }
        text.family(
            "keygate_tokens_total",
            "counter",
            "Tokens reported by the upstream, by model and kind (prompt or completion).",
        );
        for (model, spend) in &self.spend {
            let model = self.model_names[*model].as_str();
            for (kind, tokens) in [
                ("prompt", spend.prompt_tokens),
                ("completion", spend.completion_tokens),
            ] {
                let labels = [("model", model), ("kind", kind)];
                text.sample("keygate_tokens_total", &labels, tokens as f64);
            }
        }
        text.family(
            "keygate_cost_usd_total",
            "counter",
            "Cost of the calls in USD (from the price table), by model.",
        );
        for (model, spend) in &self.spend {
            let labels = [("model", self.model_names[*model].as_str())];
            text.sample("keygate_cost_usd_total", &labels, spend.cost);
        }
        text.family(
            "keygate_refusals_total",
            "counter",
            "Requests keygate answered itself instead of relaying the upstream's answer, by reason (invalid_key, restriction, limit with the limit's name, body_too_large, method_not_allowed, bad_path, bad_request, client_left, upstream_unreachable, upstream_failed, upstream_timeout, upstream_max_duration, upstream_busy, limits_unavailable, call_log_unavailable, internal).",
        );
        for ((reason, limit), count) in &self.refusals {
            let mut labels = vec![("reason", *reason)];
            if !limit.is_empty() {
                labels.push(("limit", *limit));
            }
            text.sample("keygate_refusals_total", &labels, *count as f64);
        }
        if unlogged > 0 {
            let labels = [("reason", "call_log_unavailable")];
            text.sample("keygate_refusals_total", &labels, unlogged as f64);
        }
        text.family(
            "keygate_overhead_seconds",
            "histogram",
            "keygate's own time per request until the answer's head: everything but the wait for the upstream's head (authentication, limits, reading the body, waiting for call-log room).",
        );
        text.histogram("keygate_overhead_seconds", &[], &self.overhead);
        text.family(
            "keygate_upstream_headers_seconds",
            "histogram",
            "Time from sending a request upstream (connection included) to the upstream's response head, or to its failure.",
        );
        text.histogram("keygate_upstream_headers_seconds", &[], &self.upstream);
        text.family(
            "keygate_request_duration_seconds",
            "histogram",
            "Whole requests as the call log times them, until the last byte of the answer (streams included).",
        );
        text.histogram("keygate_request_duration_seconds", &[], &self.duration);
        if self.labelling.per_key {
            self.expose_keys(text);
        }
    }

    fn expose_keys(&self, text: &mut Exposition) {
        text.family(
            "keygate_key_requests_total",
            "counter",
            "Requests per key id and status class (KEYGATE_METRICS_PER_KEY).",
        );
        for (key, series) in &self.keys {
            let key = key.to_string();
            for (class, count) in CLASSES.iter().zip(series.requests) {
                if count > 0 {
                    let labels = [("key_id", key.as_str()), ("status_class", *class)];
                    text.sample("keygate_key_requests_total", &labels, count as f64);
                }
            }
        }
        text.family(
            "keygate_key_tokens_total",
            "counter",
            "Tokens per key id and kind (KEYGATE_METRICS_PER_KEY).",
        );
        for (key, series) in &self.keys {
            let key = key.to_string();
            for (kind, tokens) in [
                ("prompt", series.spend.prompt_tokens),
                ("completion", series.spend.completion_tokens),
            ] {
                let labels = [("key_id", key.as_str()), ("kind", kind)];
                text.sample("keygate_key_tokens_total", &labels, tokens as f64);
            }
        }
        text.family(
            "keygate_key_cost_usd_total",
            "counter",
            "Cost in USD per key id (KEYGATE_METRICS_PER_KEY).",
        );
        for (key, series) in &self.keys {
            let key = key.to_string();
            let labels = [("key_id", key.as_str())];
            text.sample("keygate_key_cost_usd_total", &labels, series.spend.cost);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(model: &str, success: bool) -> CallRecord {
        CallRecord {
            endpoint: "/v1/chat/completions".into(),
            model: Some(model.into()),
            success,
            http_status: if success { 200 } else { 404 },
            ..CallRecord::default()
        }
    }

    #[test]
    fn models_get_labels_only_after_a_success_and_within_the_bound() {
        let mut stats = CallStats::new(Labelling {
            max_models: 1,
            per_key: false,
        });
        stats.observe(&call("made-up", false));
        stats.observe(&call("gpt-a", true));
        stats.observe(&call("gpt-b", true));
        stats.observe(&call("gpt-a", false));
        let mut text = Exposition::new();
        stats.expose(&mut text, 0);
        let text = text.finish();
        let line = |labels: &str| format!("keygate_requests_total{{{labels}}}");
        assert!(
            text.contains(
                &(line("route=\"/v1/chat/completions\",status_class=\"4xx\",model=\"other\"")
                    + " 1\n")
            ),
            "{text}"
        );
        assert!(
            text.contains(
                &(line("route=\"/v1/chat/completions\",status_class=\"2xx\",model=\"gpt-a\"")
                    + " 1\n")
            ),
            "{text}"
        );
        assert!(
            text.contains(
                &(line("route=\"/v1/chat/completions\",status_class=\"4xx\",model=\"gpt-a\"")
                    + " 1\n")
            ),
            "{text}"
        );
        assert!(
            text.contains(
                &(line("route=\"/v1/chat/completions\",status_class=\"2xx\",model=\"other\"")
                    + " 1\n")
            ),
            "{text}"
        );
        assert!(!text.contains("made-up") && !text.contains("gpt-b"));
        assert!(!text.contains("key_id"));
    }
}
