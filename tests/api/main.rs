//! The one integration test binary: the real server on loopback, a temp SQLite file, a mock upstream.

mod admin;
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
mod openapi;
mod relay;
mod restrictions;
mod retention;
mod rollup;
mod rows;
mod scale;
mod sdk;
mod secrets;
mod shutdown;
mod stream_usage;
mod upstream_wire;
mod wire_fuzz;
