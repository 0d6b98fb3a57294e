//! Bugs put in on purpose, for the chaos harness to prove that its checkers catch real defects of
//! the system (`raftstream-jepsen --inject-defect NAME`). Off unless the environment variable
//! `RAFTSTREAM_INJECT_DEFECT` names one; an executor that has one says so loudly at start.

/// The variable that switches a defect on.
pub const VARIABLE: &str = "RAFTSTREAM_INJECT_DEFECT";

/// Sources restart from the beginning of their input instead of the restored offset: every
/// restart replays what was already committed (duplicates in the output).
pub const REPLAY_FROM_START: &str = "replay-from-start";

/// The defects this build knows.
pub const KNOWN: &[&str] = &[REPLAY_FROM_START];

/// Whether defect `name` is switched on.
pub fn injected(name: &str) -> bool {
    std::env::var(VARIABLE).is_ok_and(|value| value.split(',').any(|defect| defect.trim() == name))
}
