//! The fault schedule, drawn from a seed before the run starts: the same seed gives the same
//! faults, in the same order, with the same timing. Targets are roles (the leader, a follower, an
//! executor), resolved when the fault fires, as Jepsen's nemeses do.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// kill -9, restarted when the fault heals.
    Kill,
    /// SIGSTOP for longer than the timeouts, SIGCONT when the fault heals.
    Pause,
    /// kill -9 of every process, all restarted when the fault heals.
    RestartAll,
    /// Links cut through the fault proxy (isolate the leader, a minority, a bridge, an executor).
    Partition,
    /// Every link slowed through the fault proxy.
    Delay,
    /// The stream job rescaled to another parallelism (every operator) while it runs.
    Rescale,
    /// SIGTERM to an executor: it drains itself (its subtasks move through a checkpoint) and
    /// exits; started again when the fault heals.
    Drain,
}

impl FaultKind {
    pub fn parse(name: &str) -> Result<FaultKind, String> {
        match name.trim() {
            "kill" => Ok(FaultKind::Kill),
            "pause" => Ok(FaultKind::Pause),
            "restart-all" => Ok(FaultKind::RestartAll),
            "partition" => Ok(FaultKind::Partition),
            "delay" => Ok(FaultKind::Delay),
            "rescale" => Ok(FaultKind::Rescale),
            "drain" => Ok(FaultKind::Drain),
            other => Err(format!(
                "unknown fault {other:?}; available: kill, pause, restart-all, partition, delay, rescale, drain"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::RestartAll => "restart-all",
            FaultKind::Partition => "partition",
            FaultKind::Delay => "delay",
            FaultKind::Rescale => "rescale",
            FaultKind::Drain => "drain",
        }
    }
}

/// Who a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Leader,
    /// The n-th follower (modulo how many there are).
    Follower(u32),
    /// The n-th executor (modulo how many there are).
    Executor(u32),
    Everything,
    /// The leader cut from every other process.
    IsolatedLeader,
    /// A minority of the coordinators (drawn with this number) cut from the rest and the executors.
    Minority(u32),
    /// The coordinators split in two halves that cannot talk, with the n-th node talking to both.
    Bridge(u32),
    /// The n-th executor cut from every other process.
    IsolatedExecutor(u32),
    /// Every link slowed by this many milliseconds each way.
    AllLinks {
        delay_ms: u64,
    },
    /// The stream job, to this parallelism.
    StreamJob {
        parallelism: u32,
    },
    /// The n-th executor, told to drain itself (SIGTERM).
    DrainedExecutor(u32),
}

/// One fault of the schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledFault {
    /// Quiet time before the fault, after the previous one healed.
    pub quiet_ms: u64,
    pub kind: FaultKind,
    pub target: Target,
    /// How long the fault lasts before it heals.
    pub duration_ms: u64,
}

/// Faults for `time_limit_ms` of chaos, drawn from `seed`. Pauses outlast the executor lease
/// (1.5 s) and election timeouts, so they are noticed; every kind enabled appears in turn
/// before any repeats in a random order, so a short run still exercises all of them.
pub fn schedule(seed: u64, kinds: &[FaultKind], time_limit_ms: u64) -> Vec<ScheduledFault> {
    let mut random = StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    if kinds.is_empty() {
        return faults;
    }
    let mut elapsed = 0u64;
    let mut round: Vec<FaultKind> = Vec::new();
    loop {
        if round.is_empty() {
            round = kinds.to_vec();
            // Fisher-Yates with the seeded generator.
            for index in (1..round.len()).rev() {
                round.swap(index, random.gen_range(0..=index));
            }
        }
        let Some(kind) = round.pop() else { break };
        let quiet_ms = random.gen_range(3_000..6_000);
        let (target, duration_ms) = match kind {
            FaultKind::Kill | FaultKind::Pause => {
                let target = match random.gen_range(0..3) {
                    0 => Target::Leader,
                    1 => Target::Follower(random.gen_range(0..8)),
                    _ => Target::Executor(random.gen_range(0..8)),
                };
                let duration = if kind == FaultKind::Pause {
                    random.gen_range(2_000..4_000)
                } else {
                    random.gen_range(500..3_000)
                };
                (target, duration)
            }
            FaultKind::RestartAll => (Target::Everything, random.gen_range(500..2_000)),
            FaultKind::Partition => {
                let target = match random.gen_range(0..4) {
                    0 => Target::IsolatedLeader,
                    1 => Target::Minority(random.gen_range(0..1_000)),
                    2 => Target::Bridge(random.gen_range(0..8)),
                    _ => Target::IsolatedExecutor(random.gen_range(0..8)),
                };
                (target, random.gen_range(2_000..5_000))
            }
            FaultKind::Delay => (
                Target::AllLinks {
                    // One way. openraft 0.9 gives every AppendEntries the heartbeat interval (50 ms by
                    // default) as its timeout, so a round trip beyond it stalls replication:
                    // found with this fault, documented in the README's Raft settings.
                    delay_ms: random.gen_range(5..20),
                },
                random.gen_range(2_000..5_000),
            ),
            // Nothing to heal: the time it lasts is the time the job has to settle.
            FaultKind::Rescale => (
                Target::StreamJob {
                    parallelism: random.gen_range(1..=4),
                },
                random.gen_range(2_000..4_000),
            ),
            FaultKind::Drain => (
                Target::DrainedExecutor(random.gen_range(0..8)),
                random.gen_range(1_000..3_000),
            ),
        };
        if elapsed + quiet_ms + duration_ms > time_limit_ms {
            break;
        }
        elapsed += quiet_ms + duration_ms;
        faults.push(ScheduledFault {
            quiet_ms,
            kind,
            target,
            duration_ms,
        });
    }
    faults
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [FaultKind; 7] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::RestartAll,
        FaultKind::Partition,
        FaultKind::Delay,
        FaultKind::Rescale,
        FaultKind::Drain,
    ];

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        assert_eq!(schedule(7, &ALL, 120_000), schedule(7, &ALL, 120_000));
        assert_ne!(schedule(7, &ALL, 120_000), schedule(8, &ALL, 120_000));
    }

    #[test]
    fn a_short_run_has_every_kind_and_fits_the_time_limit() {
        for seed in 0..20 {
            let faults = schedule(seed, &ALL, 60_000);
            for kind in ALL {
                assert!(
                    faults.iter().any(|fault| fault.kind == kind),
                    "seed {seed}: no {kind:?}"
                );
            }
            let total: u64 = faults.iter().map(|fault| fault.quiet_ms + fault.duration_ms).sum();
            assert!(total <= 60_000);
            assert!(faults
                .iter()
                .filter(|fault| fault.kind == FaultKind::Pause)
                .all(|fault| fault.duration_ms >= 2_000));
        }
    }

    #[test]
    fn fault_names_parse_and_unknown_ones_are_refused_by_name() {
        for kind in ALL {
            assert_eq!(FaultKind::parse(kind.name()), Ok(kind));
        }
        let error = FaultKind::parse("meteor").err().unwrap_or_default();
        assert!(error.contains("unknown fault \"meteor\""), "{error}");
    }
}
