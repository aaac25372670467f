//! Upstreams configured at run time (SPEC §12): what one is (`spec`), how an admin describes
//! and changes one (`form`, `ops`, `view`), and — built on it — the live set the relay routes over.

pub mod form;
pub mod health;
pub mod models;
pub mod ops;
pub mod registry;
pub mod spec;
pub mod view;

pub use registry::Registry;
