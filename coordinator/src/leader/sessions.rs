//! Executor leases and session outboxes, kept by the leader in memory. Heartbeats never go through
//! Raft; only the verdict "dead" does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::state_machine::State;
use raftstream_api::checkpoint::CheckpointTrigger;
use raftstream_api::checkpoint::SubtaskKey;
use raftstream_api::ids::{CheckpointId, Epoch, ExecutorId, JobId};

use raftstream_api::messages::{CheckpointAck, ExecutorCommand, SubtaskMetrics, TaskRef};

/// What executors report that the leader's duties act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutorEvent {
    Ack {
        job_id: JobId,
        checkpoint_id: CheckpointId,
        ack: CheckpointAck,
    },
    /// A subtask reached the end of its input and delivered everything.
    Finished { task: TaskRef },
    /// A bounded source produced its last record: its job wants its final checkpoint now.
    InputEnded { task: TaskRef },
    /// An executor opened a (new) session: what was sent on its previous one may be lost.
    SessionOpened { executor_id: ExecutorId },
    /// A source emitted half its share of the job's record or byte limit since the last
    /// completed checkpoint.
    CheckpointWanted { task: TaskRef, trigger: CheckpointTrigger },
    TaskFailed {
        task: TaskRef,
        reason: String,
        /// Its checkpoint could not be restored: restarting would fail the same way.
        fatal: bool,
    },
}

/// Executor reports (acks, failures, finished subtasks) queued for the leader duties.
const EVENT_CAPACITY: usize = 16_384;

/// Messages queued per executor session before the oldest slows the sender.
pub const SESSION_OUTBOX_CAPACITY: usize = 1_024;

#[derive(Debug)]
struct Session {
    generation: u64,
    outbox: mpsc::Sender<ExecutorCommand>,
}

/// Why the failure detector declares an executor dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathCause {
    /// Nothing heard within the lease: a silent failure (pause, partition, or a death nobody saw).
    LeaseExpired,
    /// Its session broke with a transport error and it did not reconnect within the grace.
    SessionBroken,
    /// Its session broke with a transport error and its address then refused a connection: no
    /// process listens there any more, so waiting out the grace would only delay the restart.
    ProcessGone,
}

impl DeathCause {
    pub fn describe(self) -> &'static str {
        match self {
            DeathCause::LeaseExpired => "no heartbeat within its lease",
            DeathCause::SessionBroken => "its session broke and it did not reconnect within the grace",
            DeathCause::ProcessGone => "its session broke and its address refused a connection",
        }
    }
}

/// How a session stream ended, as the leader saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnded {
    /// The executor closed its side (it reconnects or shuts down), or this node stopped leading.
    Closed,
    /// The transport failed: the process died or its connection was reset.
    Broken,
}

/// An executor whose session broke with a transport error.
#[derive(Debug, Clone, Copy)]
struct Suspicion {
    since: Instant,
    /// The broken session's generation: tells this suspicion from a later one.
    generation: u64,
    /// A probe of its address was started for this suspicion.
    probed: bool,
    /// The probe found nothing listening at its address.
    gone: bool,
}

/// A suspect whose address should be probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRequest {
    pub executor_id: ExecutorId,
    /// The broken session's generation.
    generation: u64,
}

#[derive(Debug, Default)]
struct Inner {
    leases: HashMap<ExecutorId, Instant>,
    /// Executors whose session broke with a transport error, and when. A process that died takes
    /// its socket with it, so the leader learns of the death at once instead of a lease later;
    /// one that merely lost its connection reconnects within the grace and is no longer suspect.
    suspects: HashMap<ExecutorId, Suspicion>,
    /// Wakes the failure detector when a session breaks or a probe confirms a death.
    suspicion_changed: Arc<tokio::sync::Notify>,
    /// Wakes the scheduler when subtasks lost their executor.
    placements_wanted: Arc<tokio::sync::Notify>,
    sessions: HashMap<ExecutorId, Session>,
    next_generation: u64,
    /// Cancelled when this node stops leading: every session stream then ends.
    leadership: CancellationToken,
    /// When this node started leading; executors not heard from since count from here.
    leading_since: Option<Instant>,
    /// Checkpoint acks and task failures, to the leader duties.
    events: Option<mpsc::Sender<ExecutorEvent>>,
    /// What each executor last reported as finished.
    finished: HashMap<ExecutorId, Vec<TaskRef>>,
    /// What each executor's tasks last counted (volatile: shown, never acted on).
    metrics: HashMap<ExecutorId, Vec<SubtaskMetrics>>,
    /// The latest placement of each subtask reported running, with its restore time in ms
    /// (volatile, like the metrics: one entry per subtask, replaced by its next placement).
    running: HashMap<(JobId, SubtaskKey), (Epoch, u64)>,
}

/// Leases and open sessions of the executors, shared by the executor service and the leader
/// duties.
#[derive(Debug, Clone, Default)]
pub struct ExecutorSessions(Arc<Mutex<Inner>>);

/// The subtasks `executor_id` must run according to `state`.
pub fn assigned_tasks(state: &State, executor_id: &ExecutorId) -> Vec<TaskRef> {
    state
        .jobs
        .values()
        .flat_map(|job| {
            job.assignments
                .iter()
                .filter(|(_, assignment)| assignment.executor_id.as_ref() == Some(executor_id))
                .map(|(subtask, assignment)| TaskRef {
                    job_id: job.job_id,
                    subtask: subtask.clone(),
                    epoch: assignment.epoch,
                })
        })
        .collect()
}

impl ExecutorSessions {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a term of leadership: every executor gets a full lease from now (DESIGN: a new leader
    /// grants every executor a full lease timeout before declaring any dead).
    pub fn begin_leadership(&self) -> (CancellationToken, mpsc::Receiver<ExecutorEvent>) {
        let mut inner = self.lock();
        inner.leases.clear();
        inner.suspects.clear();
        inner.sessions.clear();
        inner.finished.clear();
        inner.leadership = CancellationToken::new();
        inner.leading_since = Some(Instant::now());
        let (events, receiver) = mpsc::channel(EVENT_CAPACITY);
        inner.events = Some(events);
        (inner.leadership.clone(), receiver)
    }

    /// Hands an executor's report to the leader duties (dropped when not leading).
    pub fn report(&self, event: ExecutorEvent) {
        if let Some(events) = &self.lock().events {
            // Full means the checkpoint coordinator is far behind; a dropped ack lets its
            // checkpoint time out, a dropped failure is repeated with the next heartbeat.
            if events.try_send(event).is_err() {
                tracing::warn!("leader duties are behind: an executor report was dropped");
            }
        }
    }

    /// Records what an executor reports as finished (replacing its previous report).
    pub fn set_finished(&self, executor_id: &ExecutorId, finished: Vec<TaskRef>) {
        self.lock().finished.insert(executor_id.clone(), finished);
    }

    /// Records what an executor's tasks counted (replacing its previous report).
    pub fn set_metrics(&self, executor_id: &ExecutorId, metrics: Vec<SubtaskMetrics>) {
        self.lock().metrics.insert(executor_id.clone(), metrics);
    }

    /// What the tasks of `job_id` last reported, on any executor, for the placements in
    /// `current` (older placements' reports are left out).
    pub fn job_metrics(&self, job_id: &JobId, current: impl Fn(&TaskRef) -> bool) -> Vec<SubtaskMetrics> {
        let inner = self.lock();
        let mut metrics: Vec<SubtaskMetrics> = inner
            .metrics
            .values()
            .flatten()
            .filter(|metrics| metrics.task.job_id == *job_id && current(&metrics.task))
            .cloned()
            .collect();
        metrics.sort_by(|a, b| {
            (&a.task.subtask.operator_id, a.task.subtask.subtask_index)
                .cmp(&(&b.task.subtask.operator_id, b.task.subtask.subtask_index))
        });
        metrics
    }

    /// Records that `task` restored its state and runs, after `restore_ms`.
    pub fn set_running(&self, task: TaskRef, restore_ms: u64) {
        self.lock()
            .running
            .insert((task.job_id, task.subtask), (task.epoch, restore_ms));
    }

    /// The subtasks of `job_id` that run at their current epoch (`current_epoch`), with their
    /// restore time in ms: reported running, or (to a leader that took over after the report)
    /// reporting metrics, which a task does only once it runs, for itself and the operators
    /// chained behind it; their restore time is then unknown (`None`).
    pub fn job_running(
        &self,
        job_id: &JobId,
        current_epoch: impl Fn(&SubtaskKey) -> Option<Epoch>,
    ) -> Vec<(TaskRef, Option<u64>)> {
        let inner = self.lock();
        let mut running: Vec<(TaskRef, Option<u64>)> = inner
            .running
            .iter()
            .filter(|((job, subtask), (epoch, _))| job == job_id && current_epoch(subtask) == Some(*epoch))
            .map(|((job, subtask), (epoch, restore_ms))| {
                let task = TaskRef {
                    job_id: *job,
                    subtask: subtask.clone(),
                    epoch: *epoch,
                };
                (task, Some(*restore_ms))
            })
            .collect();
        let mut seen: std::collections::HashSet<SubtaskKey> =
            running.iter().map(|(task, _)| task.subtask.clone()).collect();
        for metrics in inner.metrics.values().flatten() {
            let head = &metrics.task;
            if head.job_id != *job_id || current_epoch(&head.subtask) != Some(head.epoch) {
                continue;
            }
            let members =
                std::iter::once(head.subtask.clone()).chain(metrics.chained.iter().map(|operator_id| SubtaskKey {
                    operator_id: operator_id.clone(),
                    subtask_index: head.subtask.subtask_index,
                }));
            for subtask in members {
                if let Some(epoch) = current_epoch(&subtask) {
                    if seen.insert(subtask.clone()) {
                        let task = TaskRef {
                            job_id: *job_id,
                            subtask,
                            epoch,
                        };
                        running.push((task, None));
                    }
                }
            }
        }
        running.sort_by(|(a, _), (b, _)| {
            (&a.subtask.operator_id, a.subtask.subtask_index).cmp(&(&b.subtask.operator_id, b.subtask.subtask_index))
        });
        running
    }

    /// Records one finished subtask of an executor (before its next heartbeat repeats it).
    pub fn add_finished(&self, executor_id: &ExecutorId, task: TaskRef) {
        let mut inner = self.lock();
        let list = inner.finished.entry(executor_id.clone()).or_default();
        if !list.contains(&task) {
            list.push(task);
        }
    }

    /// Every subtask placement reported finished, by any executor.
    pub fn finished(&self) -> std::collections::HashSet<TaskRef> {
        self.lock().finished.values().flatten().cloned().collect()
    }

    /// Ends leadership: sessions close so executors reconnect to the new leader.
    pub fn end_leadership(&self) {
        let mut inner = self.lock();
        inner.leadership.cancel();
        inner.sessions.clear();
        inner.leases.clear();
        inner.suspects.clear();
        inner.finished.clear();
        inner.metrics.clear();
        inner.running.clear();
        inner.events = None;
        inner.leading_since = None;
    }

    /// Whether this node currently runs leader duties.
    pub fn is_leading(&self) -> bool {
        self.lock().leading_since.is_some()
    }

    /// How long this node has been running leader duties.
    pub fn leading_for(&self) -> Option<Duration> {
        self.lock().leading_since.map(|since| since.elapsed())
    }

    /// Records a sign of life from an executor.
    pub fn touch(&self, executor_id: &ExecutorId) {
        self.lock().leases.insert(executor_id.clone(), Instant::now());
    }

    fn last_contact(inner: &Inner, executor_id: &ExecutorId) -> Option<Instant> {
        inner.leases.get(executor_id).copied().or(inner.leading_since)
    }

    /// Of `alive`, those to declare dead at `now` and why: the lease ran out, or the session broke
    /// more than `grace` ago and no new one opened.
    pub fn expired(
        &self,
        alive: &[ExecutorId],
        lease_timeout: Duration,
        grace: Duration,
        now: Instant,
    ) -> Vec<(ExecutorId, DeathCause)> {
        let inner = self.lock();
        alive
            .iter()
            .filter_map(|id| {
                if Self::last_contact(&inner, id).is_some_and(|at| now.saturating_duration_since(at) > lease_timeout) {
                    Some((id.clone(), DeathCause::LeaseExpired))
                } else if inner.sessions.contains_key(id) {
                    None
                } else {
                    let suspicion = inner.suspects.get(id)?;
                    if suspicion.gone {
                        Some((id.clone(), DeathCause::ProcessGone))
                    } else if now.saturating_duration_since(suspicion.since) > grace {
                        Some((id.clone(), DeathCause::SessionBroken))
                    } else {
                        None
                    }
                }
            })
            .collect()
    }

    /// Of `alive`, those with a valid lease and an open session: the ones work can go to.
    pub fn live(&self, alive: &[ExecutorId], lease_timeout: Duration) -> Vec<ExecutorId> {
        let inner = self.lock();
        alive
            .iter()
            .filter(|id| inner.sessions.contains_key(*id))
            .filter(|id| Self::last_contact(&inner, id).is_some_and(|at| at.elapsed() <= lease_timeout))
            .cloned()
            .collect()
    }

    /// Opens a session; a newer session of the same executor replaces an older one.
    pub fn attach(
        &self,
        executor_id: &ExecutorId,
    ) -> Option<(u64, mpsc::Receiver<ExecutorCommand>, CancellationToken)> {
        let mut inner = self.lock();
        inner.leading_since?;
        let (outbox, inbox) = mpsc::channel(SESSION_OUTBOX_CAPACITY);
        inner.next_generation += 1;
        let generation = inner.next_generation;
        inner
            .sessions
            .insert(executor_id.clone(), Session { generation, outbox });
        inner.leases.insert(executor_id.clone(), Instant::now());
        inner.suspects.remove(executor_id);
        Some((generation, inbox, inner.leadership.clone()))
    }

    /// Closes a session, unless a newer one has replaced it; a broken one makes its executor
    /// suspect until it reconnects.
    pub fn detach(&self, executor_id: &ExecutorId, generation: u64, ended: SessionEnded) {
        let mut inner = self.lock();
        if inner
            .sessions
            .get(executor_id)
            .is_some_and(|session| session.generation == generation)
        {
            inner.sessions.remove(executor_id);
            if ended == SessionEnded::Broken && !inner.leadership.is_cancelled() {
                let suspicion = Suspicion {
                    since: Instant::now(),
                    generation,
                    probed: false,
                    gone: false,
                };
                inner.suspects.insert(executor_id.clone(), suspicion);
                inner.suspicion_changed.notify_one();
            }
        }
    }

    /// What the failure detector waits on besides its clock: a session broke or a probe
    /// confirmed a death.
    pub fn suspicion_changed(&self) -> Arc<tokio::sync::Notify> {
        self.lock().suspicion_changed.clone()
    }

    /// What the scheduler waits on besides its clock: subtasks lost their executor.
    pub fn placements_wanted(&self) -> Arc<tokio::sync::Notify> {
        self.lock().placements_wanted.clone()
    }

    /// Suspects not probed yet, now marked as probed.
    pub fn take_probe_requests(&self) -> Vec<ProbeRequest> {
        let mut inner = self.lock();
        inner
            .suspects
            .iter_mut()
            .filter(|(_, suspicion)| !suspicion.probed)
            .map(|(executor_id, suspicion)| {
                suspicion.probed = true;
                ProbeRequest {
                    executor_id: executor_id.clone(),
                    generation: suspicion.generation,
                }
            })
            .collect()
    }

    /// Whether the suspicion `probe` was started for still holds (no new session since).
    pub fn is_suspect(&self, probe: &ProbeRequest) -> bool {
        let inner = self.lock();
        !inner.sessions.contains_key(&probe.executor_id)
            && inner
                .suspects
                .get(&probe.executor_id)
                .is_some_and(|suspicion| suspicion.generation == probe.generation && !suspicion.gone)
    }

    /// A probe found nothing listening at the suspect's address. Ignored when the executor
    /// reconnected (or broke again) since the probe started.
    pub fn confirm_gone(&self, probe: &ProbeRequest) {
        let mut inner = self.lock();
        let still_suspect = !inner.sessions.contains_key(&probe.executor_id);
        if let Some(suspicion) = inner.suspects.get_mut(&probe.executor_id) {
            if still_suspect && suspicion.generation == probe.generation {
                suspicion.gone = true;
                inner.suspicion_changed.notify_one();
            }
        }
    }

    /// Forgets an executor declared dead: its session ends.
    pub fn remove(&self, executor_id: &ExecutorId) {
        let mut inner = self.lock();
        inner.sessions.remove(executor_id);
        inner.leases.remove(executor_id);
        inner.suspects.remove(executor_id);
        inner.finished.remove(executor_id);
        inner.metrics.remove(executor_id);
    }

    /// Whether the executor has an open session, and how long ago the leader heard from it (since
    /// this node started leading).
    pub fn contact(&self, executor_id: &ExecutorId) -> (bool, Option<Duration>) {
        let inner = self.lock();
        (
            inner.sessions.contains_key(executor_id),
            inner.leases.get(executor_id).map(Instant::elapsed),
        )
    }

    /// Queues `command` for every executor with a session; how many took it.
    pub fn send_to_all(&self, command: &ExecutorCommand) -> usize {
        let inner = self.lock();
        inner
            .sessions
            .values()
            .filter(|session| session.outbox.try_send(command.clone()).is_ok())
            .count()
    }

    /// Queues a command for an executor; false when it has no session or its outbox is full (the
    /// next heartbeat's reconciliation repairs either case).
    pub fn send(&self, executor_id: &ExecutorId, command: ExecutorCommand) -> bool {
        let inner = self.lock();
        inner
            .sessions
            .get(executor_id)
            .is_some_and(|session| session.outbox.try_send(command).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftstream_api::ids::OperatorId;

    const LEASE: Duration = Duration::from_millis(1_500);
    const GRACE: Duration = Duration::from_millis(300);

    fn leading_with(executor: &ExecutorId) -> (ExecutorSessions, u64) {
        let sessions = ExecutorSessions::default();
        let _duties = sessions.begin_leadership();
        let (generation, _inbox, _leadership) = sessions.attach(executor).expect("leading");
        (sessions, generation)
    }

    #[test]
    fn a_broken_session_is_declared_dead_after_the_grace_not_the_lease() {
        let executor = ExecutorId("exec-1".into());
        let (sessions, generation) = leading_with(&executor);
        sessions.detach(&executor, generation, SessionEnded::Broken);
        let alive = [executor.clone()];
        let now = Instant::now();
        assert!(
            sessions.expired(&alive, LEASE, GRACE, now).is_empty(),
            "not within the grace"
        );
        assert_eq!(
            sessions.expired(&alive, LEASE, GRACE, now + Duration::from_millis(400)),
            vec![(executor.clone(), DeathCause::SessionBroken)]
        );
        assert_eq!(
            sessions.expired(&alive, LEASE, GRACE, now + Duration::from_secs(2)),
            vec![(executor, DeathCause::LeaseExpired)]
        );
    }

    #[test]
    fn reconnecting_within_the_grace_clears_the_suspicion() {
        let executor = ExecutorId("exec-1".into());
        let (sessions, generation) = leading_with(&executor);
        sessions.detach(&executor, generation, SessionEnded::Broken);
        sessions.attach(&executor).expect("leading");
        let later = Instant::now() + Duration::from_millis(400);
        assert!(sessions.expired(&[executor], LEASE, GRACE, later).is_empty());
    }

    #[test]
    fn a_closed_or_replaced_session_leaves_only_the_lease() {
        let executor = ExecutorId("exec-1".into());
        let (sessions, first) = leading_with(&executor);
        // A newer session replaced the first; the old stream breaking says nothing of the executor.
        let (second, _inbox, _leadership) = sessions.attach(&executor).expect("leading");
        sessions.detach(&executor, first, SessionEnded::Broken);
        let later = Instant::now() + Duration::from_millis(400);
        assert!(sessions.expired(&[executor.clone()], LEASE, GRACE, later).is_empty());
        // The executor closed its own stream (it looks for the leader again): not suspect.
        sessions.detach(&executor, second, SessionEnded::Closed);
        assert!(sessions.expired(&[executor.clone()], LEASE, GRACE, later).is_empty());
        assert!(sessions.live(&[executor], LEASE).is_empty(), "no session, no work");
    }

    #[test]
    fn a_refused_probe_declares_the_suspect_dead_before_the_grace() {
        let executor = ExecutorId("exec-1".into());
        let (sessions, generation) = leading_with(&executor);
        sessions.detach(&executor, generation, SessionEnded::Broken);
        let probes = sessions.take_probe_requests();
        assert_eq!(probes.len(), 1);
        assert!(
            sessions.take_probe_requests().is_empty(),
            "each suspicion is probed once"
        );
        let now = Instant::now();
        assert!(sessions.expired(&[executor.clone()], LEASE, GRACE, now).is_empty());
        assert!(sessions.is_suspect(&probes[0]));
        sessions.confirm_gone(&probes[0]);
        assert!(!sessions.is_suspect(&probes[0]), "confirmed: nothing more to probe");
        assert_eq!(
            sessions.expired(&[executor.clone()], LEASE, GRACE, now),
            vec![(executor, DeathCause::ProcessGone)]
        );
    }

    #[test]
    fn a_probe_answered_after_a_reconnect_changes_nothing() {
        let executor = ExecutorId("exec-1".into());
        let (sessions, generation) = leading_with(&executor);
        sessions.detach(&executor, generation, SessionEnded::Broken);
        let first = sessions.take_probe_requests();
        // It reconnects and breaks again: the first probe's answer is about the old suspicion.
        let (second, _inbox, _leadership) = sessions.attach(&executor).expect("leading");
        assert!(!sessions.is_suspect(&first[0]), "reconnected: the probe stops");
        sessions.confirm_gone(&first[0]);
        assert!(sessions
            .expired(&[executor.clone()], LEASE, GRACE, Instant::now())
            .is_empty());
        sessions.detach(&executor, second, SessionEnded::Broken);
        sessions.confirm_gone(&first[0]);
        assert!(
            sessions
                .expired(&[executor.clone()], LEASE, GRACE, Instant::now())
                .is_empty(),
            "a stale probe does not confirm a newer suspicion"
        );
    }

    #[tokio::test]
    async fn only_a_refused_connection_counts_as_nothing_listening() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        assert!(
            !super::super::context::connection_refused(address.clone()).await,
            "a listener answers"
        );
        drop(listener);
        assert!(
            super::super::context::connection_refused(address).await,
            "nothing listens any more"
        );
        assert!(
            !super::super::context::connection_refused("no-such-host.invalid:1".to_owned()).await,
            "a name that does not resolve says nothing about a process"
        );
    }

    #[test]
    fn a_new_leadership_forgets_suspects() {
        let executor = ExecutorId("exec-1".into());
        let (sessions, generation) = leading_with(&executor);
        sessions.detach(&executor, generation, SessionEnded::Broken);
        let _duties = sessions.begin_leadership();
        let later = Instant::now() + Duration::from_millis(400);
        assert!(sessions.expired(&[executor], LEASE, GRACE, later).is_empty());
    }

    #[test]
    fn running_reports_follow_the_current_placement_and_metrics_stand_in_after_a_takeover() {
        let job_id = JobId::from_number(1);
        let key = |operator: &str, index: u32| SubtaskKey {
            operator_id: operator.into(),
            subtask_index: index,
        };
        let task = |operator: &str, index: u32, epoch: u64| TaskRef {
            job_id,
            subtask: key(operator, index),
            epoch: Epoch(epoch),
        };
        // The current placement: counts[0] at 3, counts[1] at 4, its chained sink out[1] at 5.
        let placement: HashMap<SubtaskKey, Epoch> = [
            (key("counts", 0), Epoch(3)),
            (key("counts", 1), Epoch(4)),
            (key("out", 1), Epoch(5)),
        ]
        .into_iter()
        .collect();
        let current = |subtask: &SubtaskKey| placement.get(subtask).copied();
        let sessions = ExecutorSessions::default();
        let _duties = sessions.begin_leadership();
        sessions.set_running(task("counts", 0, 3), 1_200);
        sessions.set_running(task("counts", 1, 2), 900);
        assert_eq!(
            sessions.job_running(&job_id, current),
            vec![(task("counts", 0, 3), Some(1_200))],
            "counts[1] reported running at an older placement only"
        );
        // A later placement of counts[1] replaces the earlier report.
        sessions.set_running(task("counts", 1, 4), 40);
        assert_eq!(
            sessions.job_running(&job_id, current),
            vec![(task("counts", 0, 3), Some(1_200)), (task("counts", 1, 4), Some(40))]
        );
        // A new leader has no reports, only the metrics of tasks that run, reported by their
        // chain's head for every operator of the chain.
        sessions.end_leadership();
        let _duties = sessions.begin_leadership();
        assert!(sessions.job_running(&job_id, current).is_empty());
        let metrics = SubtaskMetrics {
            task: task("counts", 1, 4),
            records_in: 10,
            records_out: 10,
            busy_ms: 1,
            records_in_per_second: 10.0,
            busy_ratio: 0.1,
            hot_keys: Vec::new(),
            keys_counted: 0,
            chained: vec![OperatorId::from("out")],
            functions: Vec::new(),
        };
        sessions.set_metrics(&ExecutorId("exec-1".into()), vec![metrics]);
        assert_eq!(
            sessions.job_running(&job_id, current),
            vec![(task("counts", 1, 4), None), (task("out", 1, 5), None)]
        );
    }
}
