//! Upstreams configured at run time (SPEC §12): what one is (`spec`), and — built on it — the
//! live set the relay routes over.

pub mod health;
pub mod models;
pub mod registry;
pub mod spec;

pub use registry::Registry;
