//! What a call costs: LiteLLM's per-token prices embedded at build time, a file that overrides or adds models, and the pure cost of one call's usage.

use std::fmt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::relay::record::Usage;

/// The snapshot `scripts/update_prices.py` writes (its licence: `LICENSE-litellm` beside it).
const EMBEDDED: &str = include_str!("litellm_prices.json");

/// At most this many distinct unknown models are remembered (and warned about); calls of
/// further ones are counted together. Model names come from clients: the set stays bounded.
const UNKNOWN_MODELS_KEPT: usize = 1024;

/// A model's prices in USD per token, as LiteLLM names them.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_cost_per_token: f64,
    pub output_cost_per_token: f64,
    /// Prompt tokens read from the provider's cache; the input price when absent.
    #[serde(default)]
    pub cache_read_input_token_cost: Option<f64>,
    /// Prompt tokens written to the cache (Anthropic's `cache_creation_input_tokens`); the
    /// input price when absent.
    #[serde(default)]
    pub cache_creation_input_token_cost: Option<f64>,
}

impl Price {
    fn check(&self) -> Result<(), String> {
        let prices = [
            ("input_cost_per_token", Some(self.input_cost_per_token)),
            ("output_cost_per_token", Some(self.output_cost_per_token)),
            (
                "cache_read_input_token_cost",
                self.cache_read_input_token_cost,
            ),
            (
                "cache_creation_input_token_cost",
                self.cache_creation_input_token_cost,
            ),
        ];
        for (field, price) in prices {
            if price.is_some_and(|p| !p.is_finite() || p < 0.0) {
                return Err(format!("`{field}` must be a price of 0 or more"));
            }
        }
        Ok(())
    }
}

/// The USD cost of `usage` at `price`: uncached prompt tokens at the input price, cache reads
/// at the cache-read price and cache writes at the cache-creation price (each the input price
/// when the table has none), completion tokens at the output price. The cached parts are
/// parts of `prompt_tokens`, never counted past it.
pub fn cost(price: &Price, usage: &Usage) -> f64 {
    let tokens = |n: Option<i64>| n.unwrap_or(0).max(0);
    let prompt = tokens(usage.prompt_tokens);
    let read = tokens(usage.cache_read_tokens).min(prompt);
    let written = tokens(usage.cache_write_tokens).min(prompt - read);
    let input = price.input_cost_per_token;
    (prompt - read - written) as f64 * input
        + read as f64 * price.cache_read_input_token_cost.unwrap_or(input)
        + written as f64 * price.cache_creation_input_token_cost.unwrap_or(input)
        + tokens(usage.completion_tokens) as f64 * price.output_cost_per_token
}

/// foldhash, not SipHash: every relayed call with usage looks its model up here.
type Table = foldhash::HashMap<Box<str>, Price>;

/// The embedded snapshot, parsed once per process.
#[derive(Debug)]
struct Embedded {
    litellm_version: String,
    date: String,
    models: Table,
}

#[derive(Deserialize)]
struct EmbeddedFile {
    metadata: EmbeddedMetadata,
    models: Table,
}

#[derive(Deserialize)]
struct EmbeddedMetadata {
    litellm_version: String,
    date: String,
}

fn embedded() -> Result<&'static Embedded, &'static str> {
    static EMBEDDED_TABLE: OnceLock<Result<Embedded, String>> = OnceLock::new();
    EMBEDDED_TABLE
        .get_or_init(|| {
            let file: EmbeddedFile = serde_json::from_str(EMBEDDED).map_err(|e| e.to_string())?;
            for (model, price) in &file.models {
                price.check().map_err(|e| format!("model `{model}`: {e}"))?;
            }
            Ok(Embedded {
                litellm_version: file.metadata.litellm_version,
                date: file.metadata.date,
                models: file.models,
            })
        })
        .as_ref()
        .map_err(String::as_str)
}

/// The price table of one running keygate: the embedded snapshot under the models of
/// `KEYGATE_PRICES_FILE`, and the unknown models seen so far.
pub struct Prices {
    embedded: &'static Embedded,
    overrides: Table,
    /// Calls per unknown model; touched only when a model has no price.
    unknown: Mutex<Unknown>,
}

#[derive(Default)]
struct Unknown {
    /// foldhash, seeded per process: SipHash cost ~100 instructions per call of such a
    /// model, and the map is capped (`UNKNOWN_MODELS_KEPT`), so no flood can grow it.
    calls: foldhash::HashMap<Box<str>, u64>,
    /// Calls of unknown models past `UNKNOWN_MODELS_KEPT`.
    others: u64,
}

impl Prices {
    /// The embedded table, with the models of `file` (if any) over it. Errors name the file's
    /// setting and what is wrong; a broken embedded table is an error too (a bad build).
    pub fn load(file: Option<&Path>) -> anyhow::Result<Prices> {
        let embedded =
            embedded().map_err(|e| anyhow!("the embedded price table does not parse: {e}"))?;
        let overrides = match file {
            None => Table::default(),
            Some(path) => read_file(path).with_context(|| {
                format!(
                    "KEYGATE_PRICES_FILE: {} is not a usable price file",
                    path.display()
                )
            })?,
        };
        Ok(Prices {
            embedded,
            overrides,
            unknown: Mutex::new(Unknown::default()),
        })
    }

    /// The price of `model`: its exact name (the file's first), else the name without its
    /// provider prefixes (`openai/gpt-4o` → `gpt-4o`). No allocation.
    pub fn lookup(&self, model: &str) -> Option<&Price> {
        let mut name = model;
        loop {
            let found = self
                .overrides
                .get(name)
                .or_else(|| self.embedded.models.get(name));
            if found.is_some() {
                return found;
            }
            name = name.split_once('/')?.1;
        }
    }

    /// What a call of `model` with `usage` cost, in USD. A model without a price costs 0 and
    /// is counted; the first call of each is warned about.
    pub fn cost(&self, model: Option<&str>, usage: &Usage) -> f64 {
        let Some(model) = model else {
            return 0.0;
        };
        match self.lookup(model) {
            Some(price) => cost(price, usage),
            None => {
                self.count_unknown(model);
                0.0
            }
        }
    }

    fn count_unknown(&self, model: &str) {
        let Ok(mut unknown) = self.unknown.lock() else {
            return;
        };
        if let Some(calls) = unknown.calls.get_mut(model) {
            *calls += 1;
            return;
        }
        if unknown.calls.len() >= UNKNOWN_MODELS_KEPT {
            unknown.others += 1;
            return;
        }
        unknown.calls.insert(model.into(), 1);
        drop(unknown);
        tracing::warn!(
            model = ?model,
            "no price for this model: its calls are logged with cost 0; add it with KEYGATE_PRICES_FILE"
        );
    }

    /// Calls per model without a price so far, most first, and the calls of models past the
    /// ones remembered.
    pub fn unknown_models(&self) -> (Vec<(String, u64)>, u64) {
        let Ok(unknown) = self.unknown.lock() else {
            return (Vec::new(), 0);
        };
        let mut calls: Vec<(String, u64)> = unknown
            .calls
            .iter()
            .map(|(model, n)| (model.to_string(), *n))
            .collect();
        calls.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        (calls, unknown.others)
    }
}

impl fmt::Debug for Prices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LiteLLM {} ({}, {} models) + {} from KEYGATE_PRICES_FILE",
            self.embedded.litellm_version,
            self.embedded.date,
            self.embedded.models.len(),
            self.overrides.len()
        )
    }
}

/// A price file: keygate's own format (`{"models": {name: price}}`, as embedded) or LiteLLM's
/// (`{name: entry}`, whose entries without token prices are skipped).
fn read_file(path: &Path) -> anyhow::Result<Table> {
    let text = std::fs::read_to_string(path).context("cannot read it")?;
    let json: Map<String, Value> =
        serde_json::from_str(&text).context("not a JSON object of models")?;
    let mut table = Table::default();
    match json.get("models") {
        Some(Value::Object(models)) => {
            for (model, entry) in models {
                let price = Price::deserialize(entry)
                    .map_err(|e| anyhow!("models.{model}: {e}"))
                    .and_then(|price| checked(model, price))?;
                table.insert(model.as_str().into(), price);
            }
        }
        Some(_) => bail!("`models` must be an object of model names to prices"),
        None => {
            for (model, entry) in &json {
                let Value::Object(entry) = entry else {
                    continue;
                };
                if model == "sample_spec" || !entry.contains_key("input_cost_per_token") {
                    continue;
                }
                let fields = [
                    "input_cost_per_token",
                    "output_cost_per_token",
                    "cache_read_input_token_cost",
                    "cache_creation_input_token_cost",
                ];
                let mut kept: Map<String, Value> = fields
                    .iter()
                    .filter_map(|f| Some((f.to_string(), entry.get(*f)?.clone())))
                    .collect();
                kept.entry("output_cost_per_token")
                    .or_insert(Value::from(0.0));
                let price = Price::deserialize(Value::Object(kept))
                    .map_err(|e| anyhow!("{model}: {e}"))
                    .and_then(|price| checked(model, price))?;
                table.insert(model.as_str().into(), price);
            }
            if table.is_empty() {
                bail!(
                    "no models in it: write {{\"models\": {{\"<model>\": {{\"input_cost_per_token\": …, \"output_cost_per_token\": …}}}}}} or LiteLLM's model_prices_and_context_window.json"
                );
            }
        }
    }
    Ok(table)
}

fn checked(model: &str, price: Price) -> anyhow::Result<Price> {
    price.check().map_err(|e| anyhow!("{model}: {e}"))?;
    Ok(price)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(prompt: i64, cached: Option<i64>, completion: i64) -> Usage {
        Usage {
            prompt_tokens: Some(prompt),
            completion_tokens: Some(completion),
            total_tokens: Some(prompt + completion),
            cache_read_tokens: cached,
            cache_write_tokens: None,
        }
    }

    #[test]
    fn the_embedded_table_parses_and_prices_common_models() {
        let table = embedded().expect("embedded price table");
        assert!(table.models.len() > 1000, "{}", table.models.len());
        assert!(!table.litellm_version.is_empty() && table.date.len() == 10);
        for model in ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"] {
            assert!(table.models.contains_key(model), "{model}");
        }
        let mini = table.models["gpt-4o-mini"];
        assert!(mini.input_cost_per_token > 0.0 && mini.output_cost_per_token > 0.0);
        assert!(mini.cache_read_input_token_cost.is_some());
    }

    #[test]
    fn lookup_is_exact_then_without_provider_prefixes() {
        let prices = Prices::load(None).unwrap();
        let plain = prices.lookup("gpt-4o").copied().unwrap();
        assert_eq!(prices.lookup("openai/gpt-4o"), Some(&plain));
        assert_eq!(prices.lookup("proxy/openai/gpt-4o"), Some(&plain));
        assert_eq!(prices.lookup("no-such-model"), None);
        assert_eq!(prices.lookup("openai/no-such-model"), None);
        assert_eq!(prices.lookup(""), None);
        // A name the table holds with its prefix is found exactly, not under the bare name.
        let embedded = embedded().unwrap();
        let (prefixed, price) = embedded
            .models
            .iter()
            .find(|(name, price)| {
                name.split_once('/')
                    .is_some_and(|(_, bare)| embedded.models.get(bare).is_some_and(|p| p != *price))
            })
            .expect("a prefixed model priced unlike its bare name");
        assert_eq!(prices.lookup(prefixed), Some(price));
    }

    #[test]
    fn cost_splits_cached_prompt_tokens() {
        let price = Price {
            input_cost_per_token: 2.0,
            output_cost_per_token: 10.0,
            cache_read_input_token_cost: Some(0.5),
            cache_creation_input_token_cost: None,
        };
        assert_eq!(
            cost(&price, &usage(100, Some(40), 7)),
            60.0 * 2.0 + 40.0 * 0.5 + 70.0
        );
        assert_eq!(cost(&price, &usage(100, None, 0)), 200.0);
        // More cached than prompt tokens (a broken upstream) never goes negative.
        assert_eq!(cost(&price, &usage(10, Some(50), 0)), 5.0);
        let no_cache_price = Price {
            cache_read_input_token_cost: None,
            ..price
        };
        assert_eq!(cost(&no_cache_price, &usage(100, Some(40), 1)), 210.0);
        assert_eq!(cost(&price, &Usage::default()), 0.0);
    }

    #[test]
    fn cost_prices_cache_reads_and_writes_apart() {
        let price = Price {
            input_cost_per_token: 2.0,
            output_cost_per_token: 10.0,
            cache_read_input_token_cost: Some(0.5),
            cache_creation_input_token_cost: Some(3.0),
        };
        // Anthropic's counts as keygate keeps them: 100 prompt tokens of which 30 were read
        // from the cache and 50 written to it; 20 plain input tokens.
        let anthropic = Usage {
            prompt_tokens: Some(100),
            completion_tokens: Some(7),
            total_tokens: Some(107),
            cache_read_tokens: Some(30),
            cache_write_tokens: Some(50),
        };
        assert_eq!(
            cost(&price, &anthropic),
            20.0 * 2.0 + 30.0 * 0.5 + 50.0 * 3.0 + 7.0 * 10.0
        );
        // Without cache prices every prompt token is at the input price.
        let plain = Price {
            cache_read_input_token_cost: None,
            cache_creation_input_token_cost: None,
            ..price
        };
        assert_eq!(cost(&plain, &anthropic), 100.0 * 2.0 + 70.0);
        // Cached parts past the prompt (a broken upstream) are cut to it: reads first.
        let broken = Usage {
            prompt_tokens: Some(40),
            cache_read_tokens: Some(30),
            cache_write_tokens: Some(50),
            ..Usage::default()
        };
        assert_eq!(cost(&price, &broken), 30.0 * 0.5 + 10.0 * 3.0);
        let negative = Usage {
            prompt_tokens: Some(10),
            cache_write_tokens: Some(-5),
            ..Usage::default()
        };
        assert_eq!(cost(&price, &negative), 20.0);
    }

    #[test]
    fn claude_models_are_priced_with_their_cache_prices() {
        let prices = Prices::load(None).unwrap();
        let sonnet = *prices
            .lookup("claude-sonnet-4-5")
            .expect("claude-sonnet-4-5");
        let (read, write) = (
            sonnet
                .cache_read_input_token_cost
                .expect("cache read price"),
            sonnet
                .cache_creation_input_token_cost
                .expect("cache write price"),
        );
        assert!(read < sonnet.input_cost_per_token && write > sonnet.input_cost_per_token);
        assert_eq!(prices.lookup("anthropic/claude-sonnet-4-5"), Some(&sonnet));
        let usage = Usage {
            prompt_tokens: Some(1_000 + 2_000 + 3_000),
            completion_tokens: Some(500),
            total_tokens: Some(6_500),
            cache_read_tokens: Some(3_000),
            cache_write_tokens: Some(2_000),
        };
        let expected = 1_000.0 * sonnet.input_cost_per_token
            + 3_000.0 * read
            + 2_000.0 * write
            + 500.0 * sonnet.output_cost_per_token;
        let got = prices.cost(Some("claude-sonnet-4-5"), &usage);
        assert!((got - expected).abs() < 1e-12, "{got} != {expected}");
        // $3 / $15 per million, reads at a tenth, writes at 1.25×: the snapshot's figures.
        assert!((got - 0.0189).abs() < 1e-9, "{got}");
    }

    #[test]
    fn unknown_models_cost_nothing_and_are_counted() {
        let prices = Prices::load(None).unwrap();
        let u = usage(10, None, 10);
        assert_eq!(prices.cost(Some("mystery-model"), &u), 0.0);
        assert_eq!(prices.cost(Some("mystery-model"), &u), 0.0);
        assert_eq!(prices.cost(Some("other-mystery"), &u), 0.0);
        assert_eq!(prices.cost(None, &u), 0.0);
        assert!(prices.cost(Some("gpt-4o"), &u) > 0.0);
        let (calls, others) = prices.unknown_models();
        assert_eq!(
            calls,
            [
                ("mystery-model".to_string(), 2),
                ("other-mystery".to_string(), 1)
            ]
        );
        assert_eq!(others, 0);
    }

    #[test]
    fn the_unknown_set_stays_bounded() {
        let prices = Prices::load(None).unwrap();
        for i in 0..UNKNOWN_MODELS_KEPT + 5 {
            prices.cost(Some(&format!("mystery-{i}")), &Usage::default());
        }
        let (calls, others) = prices.unknown_models();
        assert_eq!((calls.len(), others), (UNKNOWN_MODELS_KEPT, 5));
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn a_file_overrides_and_adds_models_in_either_format() {
        let own = write(
            r#"{"models": {"gpt-4o": {"input_cost_per_token": 1, "output_cost_per_token": 2},
                "my-model": {"input_cost_per_token": 0.5, "output_cost_per_token": 0.25,
                             "cache_read_input_token_cost": 0.125}}}"#,
        );
        let prices = Prices::load(Some(own.path())).unwrap();
        assert_eq!(
            prices.lookup("openai/gpt-4o").unwrap().input_cost_per_token,
            1.0
        );
        assert_eq!(
            prices
                .lookup("my-model")
                .unwrap()
                .cache_read_input_token_cost,
            Some(0.125)
        );
        assert!(prices.lookup("gpt-4o-mini").is_some());
        let litellm = write(
            r#"{"sample_spec": {"input_cost_per_token": 0.0, "mode": "chat"},
                "my-model": {"input_cost_per_token": 3e-6, "output_cost_per_token": 4e-6,
                             "mode": "chat", "max_tokens": 8192, "litellm_provider": "x"},
                "dall-e-9": {"mode": "image_generation", "input_cost_per_pixel": 1e-8}}"#,
        );
        let prices = Prices::load(Some(litellm.path())).unwrap();
        assert_eq!(
            prices.lookup("my-model").unwrap().output_cost_per_token,
            4e-6
        );
        assert!(prices.lookup("dall-e-9").is_none());
        assert_eq!(prices.overrides.len(), 1);
    }

    #[test]
    fn a_bad_file_is_an_error_naming_the_setting_and_the_problem() {
        let cases = [
            ("not json", "not a JSON object"),
            (r#"{"models": []}"#, "`models` must be an object"),
            (
                r#"{"models": {"m": {"input_cost_per_token": "1", "output_cost_per_token": 1}}}"#,
                "models.m",
            ),
            (
                r#"{"models": {"m": {"input_cost_per_token": 1, "output_cost_per_token": 1, "typo": 1}}}"#,
                "unknown field `typo`",
            ),
            (
                r#"{"models": {"m": {"input_cost_per_token": -1, "output_cost_per_token": 1}}}"#,
                "0 or more",
            ),
            (r#"{"m": {"mode": "chat"}}"#, "no models in it"),
        ];
        for (text, expected) in cases {
            let file = write(text);
            let err = format!("{:#}", Prices::load(Some(file.path())).unwrap_err());
            assert!(err.starts_with("KEYGATE_PRICES_FILE: "), "{err}");
            assert!(err.contains(expected), "{text}: {err}");
        }
        let err = format!(
            "{:#}",
            Prices::load(Some(Path::new("/nonexistent/prices.json"))).unwrap_err()
        );
        assert!(
            err.contains("KEYGATE_PRICES_FILE") && err.contains("cannot read it"),
            "{err}"
        );
    }
}
