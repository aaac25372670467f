//! Background work: the batching call-log writer, the expiry sweeper and webhook delivery.

pub mod log_writer;
pub mod sweeper;
pub mod webhooks;
