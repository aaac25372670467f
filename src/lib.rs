//! keygate: issues API keys, authenticates and relays OpenAI-compatible requests, logs every call.

pub mod admin;
pub mod alloc;
pub mod app;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod error;
pub mod key_ops;
pub mod keys;
pub mod limits;
pub mod log_output;
pub mod metrics;
pub mod policy;
pub mod prices;
pub mod relay;
pub mod secrets;
pub mod server;
pub mod store;
pub mod swar;
pub mod tasks;
pub mod upstreams;
pub mod webhooks;

pub use app::{serve, AppState};
pub use clock::Clock;
pub use config::Config;
