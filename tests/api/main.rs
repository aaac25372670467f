//! The one integration test binary: the real server on loopback, a temp SQLite file, a mock upstream.

mod admin;
mod audit;
mod cli;
mod confine;
mod console;
mod cost;
mod data;
mod expiry;
mod faults;
mod helpers;
mod hostile;
mod limits;
mod logs;
mod relay;
mod restrictions;
mod rollup;
mod rows;
mod sdk;
mod secrets;
mod shutdown;
mod stream_usage;
mod upstream_wire;
mod webhooks;
mod wire_fuzz;
