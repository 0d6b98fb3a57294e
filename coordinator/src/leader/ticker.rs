//! The clock of the leader duties that work in rounds (autoscaler, skew watch, checkpoint
//! coordinator).

use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Ticks every `period`; a tick missed while a round ran long is delayed, not made up in a burst.
pub fn duty_ticker(period: Duration) -> Interval {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

/// Waits for the next round: false once `shutdown` is cancelled (checked first, so a duty whose
/// rounds keep it busy still stops).
pub async fn next_round(ticker: &mut Interval, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => false,
        _ = ticker.tick() => true,
    }
}
