//! What a run records as it goes: its one clock, the metadata clients' history and jobs, and what
//! the poller observed of the stream job and the cluster.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use raftstream_proto::v1 as pb;

use crate::checkpoints::{CheckpointObservation, RestoreObservation};
use crate::history::Operation;
use crate::job_table::{JobInput, JobOutput};
use crate::report::LeaderObservation;

/// Microseconds on the run's one clock, a monotonic one started with the run.
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) started: Instant,
}

impl Clock {
    pub(crate) fn start() -> Clock {
        Clock {
            started: Instant::now(),
        }
    }

    pub(crate) fn now_us(self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// A recent wall-clock time (what the coordinators record, on this same machine) on this
    /// clock: now, less how long ago it was by the wall clock. Not counted from the run's start:
    /// the wall clock may step against the monotonic one during a run (a suspended virtual machine
    /// resumes with its wall clock set forward, here once by 25 s), and every later completion
    /// time would then read as that much later than the faults it followed.
    pub(crate) fn from_wall_ms(self, wall_ms: u64) -> u64 {
        let ago_us = wall_clock_ms().saturating_sub(wall_ms).saturating_mul(1_000);
        self.now_us().saturating_sub(ago_us)
    }
}

fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

pub(crate) type History = Arc<Mutex<Vec<Operation<JobInput, JobOutput>>>>;

/// What the poller saw of the stream job and the cluster.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observations {
    pub(crate) checkpoints: Vec<CheckpointObservation>,
    pub(crate) restores: Vec<RestoreObservation>,
    pub(crate) leaders: Vec<LeaderObservation>,
    /// The stream job as last seen once it ended: 1,000 jobs ending after it (the metadata
    /// clients cancel many), the coordinators forget it.
    pub(crate) stream_ended: Option<pb::Job>,
}

/// Metadata jobs kept running at once (one slot each). Clients submit more than they cancel;
/// beyond this they cancel instead, so the jobs never crowd out the stream job's slots.
pub(crate) const MAX_ACTIVE_METADATA_JOBS: usize = 6;

/// The metadata jobs the clients know of: every one submitted, and those believed running (from
/// answers and the latest list; a job whose submit went unanswered appears with the next list).
#[derive(Debug, Default)]
pub(crate) struct MetadataJobs {
    pub(crate) known: Vec<String>,
    pub(crate) active: std::collections::BTreeSet<String>,
}
