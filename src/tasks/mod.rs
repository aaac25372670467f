//! Background work: the batching call-log writer and the expiry sweeper.

pub mod log_writer;
pub mod sweeper;
