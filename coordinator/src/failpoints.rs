//! Timing perturbations for tests that must put two events in a chosen order on a real cluster
//! (a restart between a checkpoint's last acknowledgement and its commit, say). Off unless the
//! environment variable `RAFTSTREAM_FAILPOINTS` sets one (`name=value`, comma-separated); a
//! coordinator that has one says so loudly at start.

/// The variable that sets failpoints.
pub const VARIABLE: &str = "RAFTSTREAM_FAILPOINTS";

/// Milliseconds the leader holds a checkpoint between its last acknowledgement and proposing
/// `CompleteCheckpoint`, as a slow disk or a slow link to the followers would.
pub const HOLD_CHECKPOINT_COMPLETION_MS: &str = "hold-checkpoint-completion-ms";

/// Milliseconds the leader holds a job's start between reading the placement it deploys and
/// proposing the start, as a slow round of the scheduler would.
pub const HOLD_JOB_START_MS: &str = "hold-job-start-ms";

/// The failpoints this build knows.
pub const KNOWN: &[&str] = &[HOLD_CHECKPOINT_COMPLETION_MS, HOLD_JOB_START_MS];

/// The value failpoint `name` is set to, if it is set (and is a number).
pub fn value(name: &str) -> Option<u64> {
    parse(&std::env::var(VARIABLE).ok()?, name)
}

fn parse(setting: &str, name: &str) -> Option<u64> {
    setting
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| key.trim() == name)
        .and_then(|(_, value)| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_name_value_pairs() {
        let setting = "other=3, hold-checkpoint-completion-ms = 2500";
        assert_eq!(parse(setting, HOLD_CHECKPOINT_COMPLETION_MS), Some(2_500));
        assert_eq!(parse(setting, "other"), Some(3));
        assert_eq!(parse(setting, "missing"), None);
        assert_eq!(
            parse("hold-checkpoint-completion-ms=soon", HOLD_CHECKPOINT_COMPLETION_MS),
            None
        );
    }
}
