//! Background work: the batching call-log writer, the expiry sweeper and call-log retention.

pub mod log_writer;
pub mod retention;
pub mod sweeper;
