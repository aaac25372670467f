//! Background work: the batching call-log writer, the expiry sweeper, call-log retention,
//! webhook delivery and reloading upstreams changed by another process.

pub mod log_writer;
pub mod retention;
pub mod sweeper;
pub mod upstream_watch;
pub mod webhooks;
pub mod writer_priority;

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Runs `work` now and then every `every` (a late tick is not made up for) until `stop` is
/// cancelled; an error is logged as `what` failing and the next tick tries again.
pub fn every<F, Fut>(
    what: &'static str,
    every: Duration,
    stop: CancellationToken,
    mut work: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(err) = work().await {
                        tracing::error!(error = format!("{err:#}"), "{what} failed");
                    }
                }
            }
        }
    })
}
