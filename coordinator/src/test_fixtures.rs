//! What the coordinator's unit tests share: states built by applying real commands to the pure
//! state machine, and a leader context over that state machine, so that the leader duties run
//! without Raft, RocksDB or sockets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::CoordinatorError;
use crate::leader::checkpoints::CheckpointAck;
use crate::leader::context::LeaderContext;
use crate::leader::sessions::ExecutorSessions;
use crate::state_machine::{apply, Command, JobStatus, Response, State};
use raftstream_api::checkpoint::{SubtaskKey, TaskStateHandle};
use raftstream_api::ids::{CheckpointId, Epoch, ExecutorId, JobId};
use raftstream_api::spec::{parse_job_spec, JobGraph};

/// The validated graph of `spec`; a test's own spec must be valid.
pub fn graph(spec: &str) -> JobGraph {
    match parse_job_spec(spec) {
        Ok(graph) => graph,
        Err(error) => panic!("test spec is invalid: {error}\n{spec}"),
    }
}

/// A job of a generator `src` feeding a print sink `out`; `fields` adds top-level spec fields
/// (each followed by a comma), e.g. `"parallelism": 2,`.
pub fn source_to_sink(fields: &str) -> JobGraph {
    graph(&format!(
        r#"{{"name": "fixture", {fields} "operators": [
            {{"id": "src", "kind": "generator"}}, {{"id": "out", "kind": "print", "inputs": ["src"]}}]}}"#
    ))
}

/// Like [`source_to_sink`], with the sink in a slot sharing group of its own, so the two may run
/// on different executors.
pub fn source_to_separate_sink(fields: &str) -> JobGraph {
    graph(&format!(
        r#"{{"name": "fixture", {fields} "operators": [
            {{"id": "src", "kind": "generator"}},
            {{"id": "out", "kind": "print", "inputs": ["src"], "slot_sharing_group": "sink"}}]}}"#
    ))
}

pub fn executor_id(name: &str) -> ExecutorId {
    ExecutorId(name.to_owned())
}

pub fn subtask(operator: &str, index: u32) -> SubtaskKey {
    SubtaskKey {
        operator_id: operator.into(),
        subtask_index: index,
    }
}

/// What subtask `operator[index]`, running at `epoch`, reports for checkpoint `checkpoint_id`:
/// ten bytes of state in the checkpoint store, and an offset if it is the source `src`.
pub fn checkpoint_ack(operator: &str, index: u32, epoch: Epoch, checkpoint_id: CheckpointId) -> CheckpointAck {
    let subtask = subtask(operator, index);
    CheckpointAck {
        subtask: subtask.clone(),
        epoch,
        state: TaskStateHandle {
            subtask,
            location: format!("job-1/chk-{}/{operator}-{index}.state", checkpoint_id.0),
            inline_state: Vec::new(),
            size_bytes: 10,
            checksum: 0,
        },
        source_offset: (operator == "src").then_some(checkpoint_id.0 * 100),
    }
}

/// Applies a command a test's set-up relies on; a rejection fails the test with its reason.
pub fn apply_ok(state: &mut State, command: Command) -> Response {
    let described = format!("{command:?}");
    match apply(state, command) {
        Ok(response) => response,
        Err(rejection) => panic!("set-up command refused: {rejection}\n{described}"),
    }
}

/// The epoch subtask `operator[index]` of job `job_number` is placed at.
pub fn epoch_of(state: &State, job_number: u64, operator: &str, index: u32) -> Epoch {
    state.jobs[&JobId::from_number(job_number)].assignments[&subtask(operator, index)].epoch
}

/// A state built step by step through the state machine, as a leader would build it.
#[derive(Default)]
pub struct StateBuilder {
    state: State,
    at_ms: u64,
}

impl StateBuilder {
    pub fn new() -> Self {
        StateBuilder::default()
    }

    fn apply(mut self, command: impl FnOnce(u64) -> Command) -> Self {
        let command = command(self.at_ms);
        apply_ok(&mut self.state, command);
        self.at_ms += 1;
        self
    }

    pub fn executor(self, name: &str, slots: u32) -> Self {
        self.apply(|at_ms| Command::RegisterExecutor {
            executor_id: executor_id(name),
            address: format!("{name}:1"),
            slots,
            at_ms,
        })
    }

    /// Submits `graph` as the next job (`job-1`, `job-2`, ...).
    pub fn job(self, graph: JobGraph) -> Self {
        self.apply(|at_ms| Command::SubmitJob {
            request_id: None,
            graph,
            at_ms,
            from_savepoint: None,
            allow_unmatched_state: false,
        })
    }

    /// Places subtask `operator[index]` of job `job_number` on `executor`.
    pub fn place(self, job_number: u64, operator: &str, index: u32, executor: &str) -> Self {
        self.apply(|at_ms| Command::AssignSubtask {
            job_id: JobId::from_number(job_number),
            subtask: subtask(operator, index),
            executor_id: executor_id(executor),
            at_ms,
        })
    }

    /// Places every waiting subtask of job `job_number` on `executor`.
    pub fn place_all(mut self, job_number: u64, executor: &str) -> Self {
        let job_id = JobId::from_number(job_number);
        let waiting: Vec<SubtaskKey> = self.state.jobs[&job_id]
            .assignments
            .iter()
            .filter(|(_, assignment)| assignment.executor_id.is_none())
            .map(|(subtask, _)| subtask.clone())
            .collect();
        for subtask in waiting {
            self = self.place(
                job_number,
                subtask.operator_id.as_str(),
                subtask.subtask_index,
                executor,
            );
        }
        self
    }

    /// Starts job `job_number` (every subtask must be placed).
    pub fn running(self, job_number: u64) -> Self {
        self.apply(|at_ms| Command::TransitionJob {
            job_id: JobId::from_number(job_number),
            to: JobStatus::Running,
            reason: String::new(),
            at_ms,
            deployed_through_epoch: None,
        })
    }

    pub fn build(self) -> State {
        self.state
    }
}

/// A leader over the pure state machine: proposals apply at once, in order, to a state shared by
/// every clone; commands to executors go through real [`ExecutorSessions`], whose outboxes the
/// test reads. Its wall clock is tokio's, so a test on a paused runtime controls every duration.
#[derive(Clone)]
pub struct InMemoryLeader {
    state: Arc<Mutex<State>>,
    sessions: ExecutorSessions,
    proposed: Arc<Mutex<Vec<Command>>>,
    deposed: Arc<AtomicBool>,
    origin: tokio::time::Instant,
}

/// How long the in-memory leader takes to commit a proposal.
const COMMIT_LATENCY: std::time::Duration = std::time::Duration::from_millis(1);

/// Where the in-memory leader's wall clock starts.
const FIXTURE_EPOCH_MS: u64 = 1_700_000_000_000;

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl InMemoryLeader {
    /// A leader of `state` whose sessions have begun a term of leadership.
    pub fn new(state: State, sessions: ExecutorSessions) -> Self {
        InMemoryLeader {
            state: Arc::new(Mutex::new(state)),
            sessions,
            proposed: Arc::default(),
            deposed: Arc::default(),
            origin: tokio::time::Instant::now(),
        }
    }

    /// The leader of the next term: the same committed state, its own sessions and proposals.
    pub fn successor(&self, sessions: ExecutorSessions) -> Self {
        InMemoryLeader {
            state: Arc::clone(&self.state),
            sessions,
            proposed: Arc::default(),
            deposed: Arc::default(),
            origin: self.origin,
        }
    }

    /// From now on this leader's proposals fail as on a node that lost its leadership.
    pub fn depose(&self) {
        self.deposed.store(true, Ordering::SeqCst);
    }

    /// A copy of the committed state.
    pub fn state(&self) -> State {
        locked(&self.state).clone()
    }

    /// Applies a change made by someone else (another duty, a client), which must be accepted.
    pub fn commit(&self, command: Command) -> Response {
        apply_ok(&mut locked(&self.state), command)
    }

    /// Every command this leader proposed, accepted or not, in order.
    pub fn proposed(&self) -> Vec<Command> {
        locked(&self.proposed).clone()
    }
}

impl LeaderContext for InMemoryLeader {
    async fn propose(&self, command: Command) -> Result<Response, CoordinatorError> {
        locked(&self.proposed).push(command.clone());
        // A commit takes a round trip: whatever a duty does before its proposal resolves, other
        // tasks see before the state changes.
        tokio::time::sleep(COMMIT_LATENCY).await;
        if self.deposed.load(Ordering::SeqCst) {
            return Err(CoordinatorError::NotLeader {
                node_id: raftstream_api::ids::NodeId(1),
                leader_id: Some(raftstream_api::ids::NodeId(2)),
                leader_address: None,
            });
        }
        Ok(apply(&mut locked(&self.state), command)?)
    }

    fn read_state<R>(&self, read: impl FnOnce(&State) -> R) -> R {
        read(&locked(&self.state))
    }

    fn sessions(&self) -> &ExecutorSessions {
        &self.sessions
    }

    fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        FIXTURE_EPOCH_MS.saturating_add(elapsed)
    }
}
