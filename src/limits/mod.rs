//! A key's limits (SPEC §10) as a pure value: declared once, validated, and checked against
//! what the key has spent by its in-memory meter (`meter`), kept per key id (`meters`).

pub mod headers;
pub mod meter;
pub mod meters;
pub mod report;

use serde::{Deserialize, Serialize};

use serde::de::{DeserializeOwned, Deserializer, Error as _};

use crate::error::ApiError;

/// Longest rate window, in minutes (a year).
pub const MAX_WINDOW_MINUTES: i64 = 366 * 24 * 60;
/// Largest USD amount a cost limit takes.
pub const MAX_USD: f64 = 1e12;

/// Declares the limit fields once: the stored/shown value (`Limits`, 0 = no limit), the
/// optional form a create, PATCH or CLI command gives (`LimitsPatch`, absent = unchanged),
/// and the names of the fields.
macro_rules! limit_fields {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty ),* $(,)?) => {
        /// A key's limits; each 0 means no limit. USD amounts are `f64`.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
        #[serde(default)]
        pub struct Limits {
            $( $(#[doc = $doc])* #[schema(minimum = 0)] pub $name: $ty, )*
        }

        /// Limits as given: an absent field is unchanged, 0 lifts that limit.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize, clap::Args, utoipa::ToSchema)]
        pub struct LimitsPatch {
            $( $(#[doc = $doc])* #[arg(long)] #[schema(minimum = 0)] pub $name: Option<$ty>, )*
        }

        impl Limits {
            /// The field names, as stored, shown and exported.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($name)),*];

            /// `self` with every given field of `patch` put in its place (not yet validated).
            pub fn patched(mut self, patch: &LimitsPatch) -> Limits {
                $( if let Some(value) = patch.$name { self.$name = value; } )*
                self
            }
        }

        impl LimitsPatch {
            /// Takes the limit fields out of a JSON object (a create or PATCH body); an error
            /// names the field.
            pub fn take_from(
                object: &mut serde_json::Map<String, serde_json::Value>,
            ) -> Result<LimitsPatch, String> {
                let mut patch = LimitsPatch::default();
                $(
                    if let Some(value) = object.remove(stringify!($name)) {
                        patch.$name = serde_json::from_value(value).map_err(|err| {
                            format!("{}: {err}; send a number, 0 for no limit", stringify!($name))
                        })?;
                    }
                )*
                Ok(patch)
            }
        }

        impl Limits {
            /// A field's value by its name (None: no such limit).
            pub fn get(&self, field: &str) -> Option<f64> {
                match field {
                    $( stringify!($name) => Some(self.$name as f64), )*
                    _ => None,
                }
            }

            /// Each field's value as stored: whole numbers stay integers.
            pub fn values(&self) -> [LimitValue; Limits::FIELDS.len()] {
                [$( LimitValue::from(self.$name) ),*]
            }

            /// Each field as (name, value as f64), for checks and displays.
            pub fn entries(&self) -> [(&'static str, f64); Limits::FIELDS.len()] {
                [$( (stringify!($name), self.$name as f64) ),*]
            }
        }
    };
}

limit_fields! {
    /// Minutes of the rate window that `rate_limit_requests`, `_tokens` and `_cost` count in;
    /// it starts at the first request and a new one at the first request after it ends.
    rate_limit_window: i64,
    /// Requests per window.
    rate_limit_requests: i64,
    /// Tokens (total_tokens) per window.
    rate_limit_tokens: i64,
    /// USD per window.
    rate_limit_cost: f64,
    /// Requests under way at once (a stream holds its slot until it ends).
    concurrency_limit: i64,
    /// Lifetime tokens.
    token_limit: i64,
    /// USD per UTC day.
    daily_cost_limit: f64,
    /// USD per week (Monday 00:00 UTC to Monday).
    weekly_cost_limit: f64,
    /// Lifetime USD.
    total_cost_limit: f64,
}

/// A limit's value as stored: a count (INTEGER) or USD (REAL).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LimitValue {
    Count(i64),
    Usd(f64),
}

impl From<i64> for LimitValue {
    fn from(value: i64) -> Self {
        LimitValue::Count(value)
    }
}

impl From<f64> for LimitValue {
    fn from(value: f64) -> Self {
        LimitValue::Usd(value)
    }
}

impl Limits {
    /// Whether any limit is set (a key without limits has no meter and no headers).
    pub fn any(&self) -> bool {
        self.entries().iter().any(|(_, value)| *value > 0.0)
    }

    /// Whether a rate window counts something.
    pub fn windowed(&self) -> bool {
        self.rate_limit_window > 0
            && (self.rate_limit_requests > 0
                || self.rate_limit_tokens > 0
                || self.rate_limit_cost > 0.0)
    }

    /// The window's length in milliseconds (0: none).
    pub fn window_ms(&self) -> i64 {
        self.rate_limit_window.saturating_mul(60_000)
    }

    /// Checks the limits as they are to be stored; the error names the field and the fix.
    pub fn validate(&self) -> Result<(), ApiError> {
        for (field, value) in self.entries() {
            if !value.is_finite() || value < 0.0 {
                return Err(ApiError::invalid(
                    field,
                    "must be 0 (no limit) or a positive number",
                ));
            }
            let usd = field.ends_with("_cost_limit") || field == "rate_limit_cost";
            if usd && value > MAX_USD {
                return Err(ApiError::invalid(
                    field,
                    format!("must be at most {MAX_USD} USD"),
                ));
            }
        }
        if self.rate_limit_window > MAX_WINDOW_MINUTES {
            return Err(ApiError::invalid(
                "rate_limit_window",
                format!("must be at most {MAX_WINDOW_MINUTES} minutes (a year)"),
            ));
        }
        let counted = [
            ("rate_limit_requests", self.rate_limit_requests > 0),
            ("rate_limit_tokens", self.rate_limit_tokens > 0),
            ("rate_limit_cost", self.rate_limit_cost > 0.0),
        ];
        if self.rate_limit_window == 0 {
            if let Some((field, _)) = counted.iter().find(|(_, set)| *set) {
                return Err(ApiError::invalid(
                    "rate_limit_window",
                    format!(
                        "{field} needs a window: give rate_limit_window in minutes (e.g. 1 or 60)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A request body that has the limit fields beside its own: `T` is read from the other
/// fields (and still refuses unknown ones), the limits into `T::limits_mut`.
pub struct WithLimits<T>(pub T);

/// A request that carries limits to set.
pub trait TakesLimits {
    fn limits_mut(&mut self) -> &mut LimitsPatch;
}

impl<'de, T: DeserializeOwned + TakesLimits> Deserialize<'de> for WithLimits<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut object = serde_json::Map::deserialize(deserializer)?;
        let limits = LimitsPatch::take_from(&mut object).map_err(D::Error::custom)?;
        let mut fields: T = serde_path_to_error::deserialize(serde_json::Value::Object(object))
            .map_err(|err| {
                let path = err.path().to_string();
                match path.as_str() {
                    "." => D::Error::custom(err.into_inner()),
                    _ => D::Error::custom(format!("{path}: {}", err.into_inner())),
                }
            })?;
        *fields.limits_mut() = limits;
        Ok(WithLimits(fields))
    }
}

/// A refusal by a limit: which one, the client's message, and when it would pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Exceeded {
    /// The limit's field name (`rate_limit_requests`, …).
    pub limit: &'static str,
    pub message: String,
    /// Seconds until the limit would let the request through; None when it never will by
    /// itself (a lifetime limit: only raising it helps).
    pub retry_after: Option<u64>,
}

/// The prefix of every limit refusal's stored reason.
pub const REFUSAL_PREFIX: &str = "key limit reached";

impl Exceeded {
    pub fn error(&self) -> ApiError {
        ApiError::LimitExceeded {
            limit: self.limit,
            message: self.message.clone(),
            retry_after: self.retry_after,
        }
    }

    /// The call-log row's reason.
    pub fn reason(&self) -> String {
        format!("{REFUSAL_PREFIX}: {}", self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_changes_only_what_it_gives_and_validation_names_the_field() {
        let limits = Limits {
            rate_limit_window: 1,
            rate_limit_requests: 10,
            ..Limits::default()
        };
        let patched = limits.patched(&LimitsPatch {
            daily_cost_limit: Some(2.5),
            rate_limit_requests: Some(0),
            ..LimitsPatch::default()
        });
        assert_eq!(patched.rate_limit_window, 1);
        assert_eq!(patched.rate_limit_requests, 0);
        assert_eq!(patched.daily_cost_limit, 2.5);
        assert!(patched.any());
        assert!(!patched.windowed());
        assert!(!Limits::default().any());

        let field = |limits: Limits| match limits.validate() {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let negative = Limits {
            concurrency_limit: -1,
            ..Limits::default()
        };
        assert_eq!(field(negative), "concurrency_limit");
        let nan = Limits {
            weekly_cost_limit: f64::NAN,
            ..Limits::default()
        };
        assert_eq!(field(nan), "weekly_cost_limit");
        let windowless = Limits {
            rate_limit_tokens: 100,
            ..Limits::default()
        };
        assert_eq!(field(windowless), "rate_limit_window");
        let long = Limits {
            rate_limit_window: MAX_WINDOW_MINUTES + 1,
            ..Limits::default()
        };
        assert_eq!(field(long), "rate_limit_window");
        assert_eq!(Limits::FIELDS.len(), 9);
    }
}
