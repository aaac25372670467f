//! Background work: the batching call-log writer, the expiry sweeper, call-log retention and
//! webhook delivery.

pub mod log_writer;
pub mod retention;
pub mod sweeper;
pub mod webhooks;
