//! The coordinators' job table as a sequential model, for the `metadata` workload: clients submit,
//! cancel and read jobs through random coordinators while faults are injected.
//!
//! Jobs are independent once they have an id, so the history is checked job by job (Herlihy and
//! Wing's locality: a history is linearizable if and only if each object's sub-history is), which
//! keeps the search small. What spans jobs is checked directly: ids are never handed out twice,
//! and a job submitted after another one was acknowledged gets a higher id. A read of the whole
//! table (`List`) becomes one read per known job.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::history::{Operation, Outcome};
use crate::linearizable::{check, Model, Verdict};

/// What a client did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobInput {
    /// Submit a job (idempotency key `request_id`).
    Submit {
        request_id: String,
    },
    Cancel {
        job_id: String,
    },
    Get {
        job_id: String,
    },
    /// Read every job id in the table.
    List,
}

/// What the system answered (the `Ok` payload of an outcome).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobOutput {
    Submitted {
        job_id: String,
    },
    Cancelled,
    /// The job is not in the table.
    NotFound,
    /// Cancel of a job that had already ended.
    AlreadyEnded,
    Found {
        state: JobState,
    },
    Listed {
        jobs: BTreeMap<String, JobState>,
    },
}

/// A job as the model sees it: status names collapse to whether a cancel took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    Absent,
    /// Submitted, waiting, running or restarting.
    Active,
    /// Cancelling or cancelled.
    Cancelled,
}

impl JobState {
    /// The model state of a status name the coordinators report.
    pub fn of_status(status: &str) -> JobState {
        match status {
            "Cancelling" | "Cancelled" => JobState::Cancelled,
            _ => JobState::Active,
        }
    }
}

/// One job's sequential behaviour.
#[derive(Debug, Clone, Copy)]
struct OneJob;

#[derive(Debug, Clone, PartialEq, Eq)]
enum OneJobInput {
    Create,
    Cancel,
    Read,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OneJobOutput {
    Done,
    NotFound,
    AlreadyEnded,
    Is(JobState),
}

/// One job's state in the model: the table's, plus "forgotten", since the coordinators drop an
/// ended job once 1,000 newer ones have ended (a cancelled job may later read as absent, and then
/// stays absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum OneJobState {
    Absent,
    Active,
    Cancelled,
    Forgotten,
}

impl Model for OneJob {
    type State = OneJobState;
    type Input = OneJobInput;
    type Output = OneJobOutput;

    fn init(&self) -> OneJobState {
        OneJobState::Absent
    }

    fn step(&self, state: &OneJobState, input: &OneJobInput, output: Option<&OneJobOutput>) -> Option<OneJobState> {
        use OneJobOutput::{AlreadyEnded, Done, Is, NotFound};
        use OneJobState::{Absent, Active, Cancelled, Forgotten};
        match (input, state, output) {
            (OneJobInput::Create, Absent, _) => Some(Active),
            (OneJobInput::Create, _, _) => None,
            (OneJobInput::Cancel, Active, None | Some(Done)) => Some(Cancelled),
            (OneJobInput::Cancel, Cancelled, None | Some(AlreadyEnded | Done)) => Some(Cancelled),
            (OneJobInput::Cancel, Cancelled, Some(NotFound)) => Some(Forgotten),
            (OneJobInput::Cancel, Absent | Forgotten, None | Some(NotFound)) => Some(*state),
            (OneJobInput::Cancel, _, _) => None,
            (OneJobInput::Read, _, None) => Some(*state),
            (OneJobInput::Read, Absent | Forgotten, Some(Is(JobState::Absent))) => Some(*state),
            (OneJobInput::Read, Cancelled, Some(Is(JobState::Absent))) => Some(Forgotten),
            (OneJobInput::Read, Active, Some(Is(JobState::Active))) => Some(Active),
            (OneJobInput::Read, Cancelled, Some(Is(JobState::Cancelled))) => Some(Cancelled),
            (OneJobInput::Read, _, Some(_)) => None,
        }
    }
}

/// An anomaly in a metadata history, with the operations that show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: String,
    pub job_id: Option<String>,
    pub operations: Vec<usize>,
    pub explanation: String,
}

type History = [Operation<JobInput, JobOutput>];

fn number_of(job_id: &str) -> Option<u64> {
    job_id.strip_prefix("job-").and_then(|number| number.parse().ok())
}

/// Checks a metadata history: every job's sub-history is linearizable, and job ids are unique and
/// increase in real time.
pub fn check_job_table(history: &History) -> Vec<Anomaly> {
    let mut anomalies = check_ids(history);
    let mut per_job: BTreeMap<String, Vec<Operation<OneJobInput, OneJobOutput>>> = BTreeMap::new();
    for operation in history {
        for (job_id, input, outcome) in project(operation) {
            per_job.entry(job_id).or_default().push(Operation {
                index: operation.index,
                client: operation.client,
                input,
                outcome,
                invoked_us: operation.invoked_us,
                completed_us: operation.completed_us,
            });
        }
    }
    // A job read but never acknowledged as submitted can only come from a submit whose answer
    // was lost: it may have been created at any time after the first such submit was invoked.
    let first_unknown_submit = history
        .iter()
        .filter(|operation| matches!(operation.input, JobInput::Submit { .. }) && operation.is_unknown())
        .map(|operation| (operation.invoked_us, operation.index, operation.client))
        .min();
    for operations in per_job.values_mut() {
        let created = operations
            .iter()
            .any(|operation| operation.input == OneJobInput::Create);
        if let (false, Some((invoked_us, index, client))) = (created, first_unknown_submit) {
            operations.push(Operation {
                index,
                client,
                input: OneJobInput::Create,
                outcome: Outcome::Unknown("an unanswered submit".to_owned()),
                invoked_us,
                completed_us: None,
            });
        }
    }
    for (job_id, operations) in per_job {
        match check(&OneJob, &operations) {
            Verdict::Linearizable => {}
            Verdict::Undecided => anomalies.push(Anomaly {
                kind: "undecided".into(),
                job_id: Some(job_id.clone()),
                operations: operations.iter().map(|operation| operation.index).collect(),
                explanation: format!("the search for a linearization of {job_id} gave up"),
            }),
            Verdict::NotLinearizable(failure) => {
                let first = failure.stuck_at.first().copied();
                // Lists can name thousands of jobs: keep each description short.
                let describe = |index: usize| {
                    let text = history
                        .iter()
                        .find(|operation| operation.index == index)
                        .map(|operation| format!("#{index} {:?} -> {:?}", operation.input, operation.outcome))
                        .unwrap_or_default();
                    match text.char_indices().nth(160) {
                        Some((cut, _)) => format!("{}...", &text[..cut]),
                        None => text,
                    }
                };
                // The end of the longest explainable order is where it went wrong.
                let skipped = failure.longest_prefix.len().saturating_sub(8);
                let mut linearized: Vec<String> = failure
                    .longest_prefix
                    .iter()
                    .skip(skipped)
                    .map(|index| describe(*index))
                    .collect();
                if skipped > 0 {
                    linearized.insert(0, format!("{skipped} earlier operations"));
                }
                anomalies.push(Anomaly {
                    kind: "not-linearizable".into(),
                    job_id: Some(job_id.clone()),
                    operations: failure.stuck_at.clone(),
                    explanation: format!(
                        "{job_id}: no order of its operations explains {}; the longest explainable order is [{}]",
                        first.map(describe).unwrap_or_default(),
                        linearized.join(", ")
                    ),
                });
            }
        }
    }
    anomalies
}

/// The per-job operations one operation stands for.
fn project(operation: &Operation<JobInput, JobOutput>) -> Vec<(String, OneJobInput, Outcome<OneJobOutput>)> {
    let unknown = |reason: &str| Outcome::Unknown(reason.to_owned());
    match (&operation.input, &operation.outcome) {
        (JobInput::Submit { .. }, Outcome::Ok(JobOutput::Submitted { job_id })) => {
            vec![(job_id.clone(), OneJobInput::Create, Outcome::Ok(OneJobOutput::Done))]
        }
        // An unanswered submit's id is unknown; if it took effect, reads of that id show it, and
        // the id checks below still hold every acknowledged submit.
        (JobInput::Submit { .. }, _) => Vec::new(),
        (JobInput::Cancel { job_id }, outcome) => {
            let outcome = match outcome {
                Outcome::Ok(JobOutput::Cancelled) => Outcome::Ok(OneJobOutput::Done),
                Outcome::Ok(JobOutput::NotFound) => Outcome::Ok(OneJobOutput::NotFound),
                Outcome::Ok(JobOutput::AlreadyEnded) => Outcome::Ok(OneJobOutput::AlreadyEnded),
                Outcome::Ok(other) => Outcome::Fail(format!("unexpected answer {other:?}")),
                Outcome::Fail(reason) => Outcome::Fail(reason.clone()),
                Outcome::Unknown(reason) => unknown(reason),
            };
            vec![(job_id.clone(), OneJobInput::Cancel, outcome)]
        }
        (JobInput::Get { job_id }, Outcome::Ok(JobOutput::Found { state })) => {
            vec![(job_id.clone(), OneJobInput::Read, Outcome::Ok(OneJobOutput::Is(*state)))]
        }
        (JobInput::Get { job_id }, Outcome::Ok(JobOutput::NotFound)) => {
            vec![(
                job_id.clone(),
                OneJobInput::Read,
                Outcome::Ok(OneJobOutput::Is(JobState::Absent)),
            )]
        }
        (JobInput::List, Outcome::Ok(JobOutput::Listed { jobs })) => jobs
            .iter()
            .map(|(job_id, state)| (job_id.clone(), OneJobInput::Read, Outcome::Ok(OneJobOutput::Is(*state))))
            .collect(),
        // A read without an answer tells nothing.
        (JobInput::Get { .. } | JobInput::List, _) => Vec::new(),
    }
}

/// Acknowledged submits got distinct ids, and one acknowledged before another was invoked got a
/// lower id. A list that misses a job acknowledged before it was invoked is a lost write.
fn check_ids(history: &History) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let submitted: Vec<(&Operation<JobInput, JobOutput>, &String)> = history
        .iter()
        .filter_map(|operation| match &operation.outcome {
            Outcome::Ok(JobOutput::Submitted { job_id }) => Some((operation, job_id)),
            _ => None,
        })
        .collect();
    let mut owners: BTreeMap<&String, Vec<&Operation<JobInput, JobOutput>>> = BTreeMap::new();
    for (operation, job_id) in &submitted {
        owners.entry(*job_id).or_default().push(*operation);
    }
    for (job_id, operations) in owners {
        let requests: std::collections::BTreeSet<&String> = operations
            .iter()
            .filter_map(|operation| match &operation.input {
                JobInput::Submit { request_id } => Some(request_id),
                _ => None,
            })
            .collect();
        // Retries of one request may return the same job: that is the idempotency promise.
        if requests.len() > 1 {
            anomalies.push(Anomaly {
                kind: "duplicate-id".into(),
                job_id: Some(job_id.clone()),
                operations: operations.iter().map(|operation| operation.index).collect(),
                explanation: format!("{job_id} was handed out to {} different submits", requests.len()),
            });
        }
    }
    for (earlier, earlier_id) in &submitted {
        for (later, later_id) in &submitted {
            let (Some(earlier_number), Some(later_number)) = (number_of(earlier_id), number_of(later_id)) else {
                continue;
            };
            let acknowledged_first = earlier.completed_us.is_some_and(|done| done < later.invoked_us);
            if acknowledged_first && later_number <= earlier_number && earlier_id != later_id {
                anomalies.push(Anomaly {
                    kind: "id-order".into(),
                    job_id: Some((*later_id).clone()),
                    operations: vec![earlier.index, later.index],
                    explanation: format!(
                        "#{} got {later_id} although #{} had already been acknowledged with {earlier_id}",
                        later.index, earlier.index
                    ),
                });
            }
        }
    }
    // A job someone tried to cancel may have ended and, 1,000 ended jobs later, been forgotten.
    let cancel_attempts: BTreeMap<&String, u64> = history
        .iter()
        .filter(|operation| !matches!(operation.outcome, Outcome::Fail(_)))
        .filter_map(|operation| match &operation.input {
            JobInput::Cancel { job_id } => Some((job_id, operation.invoked_us)),
            _ => None,
        })
        .fold(BTreeMap::new(), |mut first, (job_id, invoked_us)| {
            let earliest = first.entry(job_id).or_insert(invoked_us);
            *earliest = (*earliest).min(invoked_us);
            first
        });
    for list in history.iter().filter(|operation| operation.input == JobInput::List) {
        let Outcome::Ok(JobOutput::Listed { jobs }) = &list.outcome else {
            continue;
        };
        let listed_by = list.completed_us.unwrap_or(u64::MAX);
        for (submit, job_id) in &submitted {
            let maybe_forgotten = cancel_attempts.get(*job_id).is_some_and(|invoked| *invoked < listed_by);
            if submit.completed_us.is_some_and(|done| done < list.invoked_us)
                && !jobs.contains_key(*job_id)
                && !maybe_forgotten
            {
                anomalies.push(Anomaly {
                    kind: "lost-write".into(),
                    job_id: Some((*job_id).clone()),
                    operations: vec![submit.index, list.index],
                    explanation: format!(
                        "{job_id} was acknowledged by #{} but missing from the list #{}",
                        submit.index, list.index
                    ),
                });
            }
        }
    }
    anomalies
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<Operation<JobInput, JobOutput>>);

    impl Recorder {
        fn add(&mut self, input: JobInput, outcome: Outcome<JobOutput>, span: (u64, Option<u64>)) -> &mut Self {
            let index = self.0.len();
            self.0.push(Operation {
                index,
                client: index as u32,
                input,
                outcome,
                invoked_us: span.0,
                completed_us: span.1,
            });
            self
        }
    }

    fn submit(request: &str) -> JobInput {
        JobInput::Submit {
            request_id: request.into(),
        }
    }
    fn submitted(job_id: &str) -> Outcome<JobOutput> {
        Outcome::Ok(JobOutput::Submitted { job_id: job_id.into() })
    }
    fn get(job_id: &str) -> JobInput {
        JobInput::Get { job_id: job_id.into() }
    }
    fn cancel(job_id: &str) -> JobInput {
        JobInput::Cancel { job_id: job_id.into() }
    }
    fn found(state: JobState) -> Outcome<JobOutput> {
        Outcome::Ok(JobOutput::Found { state })
    }
    fn kinds(anomalies: &[Anomaly]) -> Vec<&str> {
        anomalies.iter().map(|anomaly| anomaly.kind.as_str()).collect()
    }

    #[test]
    fn a_correct_concurrent_history_passes() {
        let mut history = Recorder(Vec::new());
        history
            .add(submit("r1"), submitted("job-1"), (0, Some(10)))
            .add(submit("r2"), submitted("job-2"), (5, Some(12)))
            .add(cancel("job-1"), Outcome::Ok(JobOutput::Cancelled), (11, Some(30)))
            .add(get("job-1"), found(JobState::Active), (13, Some(14)))
            .add(get("job-1"), found(JobState::Cancelled), (15, Some(16)))
            .add(cancel("job-1"), Outcome::Ok(JobOutput::AlreadyEnded), (31, Some(32)))
            .add(cancel("job-9"), Outcome::Ok(JobOutput::NotFound), (33, Some(34)))
            .add(submit("r3"), Outcome::Unknown("timeout".into()), (35, None))
            .add(
                JobInput::List,
                Outcome::Ok(JobOutput::Listed {
                    jobs: [
                        ("job-1".to_owned(), JobState::Cancelled),
                        ("job-2".to_owned(), JobState::Active),
                        ("job-3".to_owned(), JobState::Active),
                    ]
                    .into(),
                }),
                (40, Some(41)),
            );
        assert_eq!(check_job_table(&history.0), Vec::new());
    }

    #[test]
    fn a_lost_acknowledged_submit_is_reported() {
        let mut history = Recorder(Vec::new());
        history
            .add(submit("r1"), submitted("job-1"), (0, Some(10)))
            .add(get("job-1"), Outcome::Ok(JobOutput::NotFound), (20, Some(21)))
            .add(
                JobInput::List,
                Outcome::Ok(JobOutput::Listed { jobs: BTreeMap::new() }),
                (22, Some(23)),
            );
        let anomalies = check_job_table(&history.0);
        assert_eq!(kinds(&anomalies), vec!["lost-write", "not-linearizable"]);
        assert!(
            anomalies[1].explanation.contains("#1 Get"),
            "{}",
            anomalies[1].explanation
        );
    }

    #[test]
    fn a_read_that_goes_back_in_time_is_reported() {
        let mut history = Recorder(Vec::new());
        history
            .add(submit("r1"), submitted("job-1"), (0, Some(10)))
            .add(cancel("job-1"), Outcome::Ok(JobOutput::Cancelled), (11, Some(12)))
            .add(get("job-1"), found(JobState::Active), (13, Some(14)));
        let anomalies = check_job_table(&history.0);
        assert_eq!(kinds(&anomalies), vec!["not-linearizable"]);
        assert_eq!(anomalies[0].operations, vec![2]);
    }

    #[test]
    fn a_cancelled_job_may_be_forgotten_but_never_come_back() {
        let mut history = Recorder(Vec::new());
        history
            .add(submit("r1"), submitted("job-1"), (0, Some(10)))
            .add(cancel("job-1"), Outcome::Ok(JobOutput::Cancelled), (11, Some(12)))
            .add(get("job-1"), Outcome::Ok(JobOutput::NotFound), (13, Some(14)))
            .add(
                JobInput::List,
                Outcome::Ok(JobOutput::Listed { jobs: BTreeMap::new() }),
                (15, Some(16)),
            )
            .add(cancel("job-1"), Outcome::Ok(JobOutput::NotFound), (17, Some(18)));
        assert_eq!(check_job_table(&history.0), Vec::new());
        // Forgotten as seen by a cancel first.
        let mut by_cancel = Recorder(Vec::new());
        by_cancel
            .add(submit("r1"), submitted("job-1"), (0, Some(10)))
            .add(cancel("job-1"), Outcome::Ok(JobOutput::Cancelled), (11, Some(12)))
            .add(cancel("job-1"), Outcome::Ok(JobOutput::NotFound), (13, Some(14)))
            .add(get("job-1"), Outcome::Ok(JobOutput::NotFound), (15, Some(16)));
        assert_eq!(check_job_table(&by_cancel.0), Vec::new());
        history.add(get("job-1"), found(JobState::Cancelled), (19, Some(20)));
        assert_eq!(kinds(&check_job_table(&history.0)), vec!["not-linearizable"]);
        // Never cancelled: absent is a lost write, not forgetting.
        let mut lost = Recorder(Vec::new());
        lost.add(submit("r1"), submitted("job-1"), (0, Some(10)))
            .add(get("job-1"), found(JobState::Active), (11, Some(12)))
            .add(get("job-1"), Outcome::Ok(JobOutput::NotFound), (13, Some(14)));
        assert_eq!(kinds(&check_job_table(&lost.0)), vec!["not-linearizable"]);
    }

    #[test]
    fn ids_handed_out_twice_or_out_of_order_are_reported() {
        let mut history = Recorder(Vec::new());
        history
            .add(submit("r1"), submitted("job-2"), (0, Some(10)))
            .add(submit("r2"), submitted("job-1"), (11, Some(20)))
            .add(submit("r3"), submitted("job-1"), (21, Some(30)))
            .add(submit("r3"), submitted("job-1"), (31, Some(32)));
        let anomalies = check_job_table(&history.0);
        let found = kinds(&anomalies);
        assert!(found.contains(&"duplicate-id"), "{found:?}");
        assert!(found.contains(&"id-order"), "{found:?}");
        assert!(
            found.contains(&"not-linearizable"),
            "a second create of job-1: {found:?}"
        );
    }
}
