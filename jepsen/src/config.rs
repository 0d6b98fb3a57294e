//! What a chaos run is asked to do.

use std::path::PathBuf;
use std::time::Duration;

use crate::network::NetMode;
use crate::schedule::FaultKind;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub seed: u64,
    pub time_limit: Duration,
    pub faults: Vec<FaultKind>,
    pub metadata: bool,
    pub stream: bool,
    pub checkpoints: bool,
    pub nodes: u64,
    pub executors: u32,
    pub clients: u32,
    pub out: PathBuf,
    /// The `raftstream` binary the cluster runs.
    pub binary: PathBuf,
    /// A bug switched on in the executors (see `raftstream_executor::defects`).
    pub inject_defect: Option<String>,
    /// Where the faults act: the harness's proxies or the kernel's namespaces.
    pub net: NetMode,
}
