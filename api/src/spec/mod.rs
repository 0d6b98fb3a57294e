//! Job specs: parsing YAML or JSON into a validated [`JobGraph`], with errors that name the operator
//! and the field at fault.

mod chains;
mod config;
mod exchanges;
mod functions;
mod operators;
mod parse;
mod slots;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::BTreeMap;

use crate::ids::OperatorId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use config::operator_config;
pub use config::{
    Combine, CompareOp, FilterConfig, FlatMapFunction, GeneratorConfig, KeyHash, MapFunction, OperatorConfig,
    PreAggregation, TwoPhase, WindowAggregate, WindowConfig,
};
pub use exchanges::Exchange;
pub use functions::{
    function_location, FunctionRef, UdfCall, UdfExport, DEFAULT_CALL_TIMEOUT_MS, DEFAULT_FUNCTION_MEMORY_MIB,
    MAX_FUNCTION_BYTES,
};
pub use operators::{OperatorKind, OperatorRole, ParamSchema, ParamType};
pub use parse::parse_job_spec;
pub use slots::{SlotKey, DEFAULT_SHARING_GROUP};
use validate::validate_params;

/// Specs above this size are rejected before parsing, so a huge upload cannot exhaust memory.
pub const MAX_SPEC_BYTES: usize = 1024 * 1024;
/// The highest `max_parallelism` (number of key groups) a job may ask for.
pub const MAX_KEY_GROUPS: u32 = 32_768;
/// Key groups when the spec does not say.
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;
const MAX_OPERATORS: usize = 1_000;
const MAX_NAME_CHARS: usize = 128;

/// A validated job graph: a DAG of operators with parallelism, as stored in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobGraph {
    pub name: String,
    pub max_parallelism: u32,
    pub checkpoint: CheckpointConfig,
    pub restart: RestartStrategy,
    pub operators: Vec<OperatorSpec>,
    /// Forward edges between operators of equal parallelism run in one task (default on).
    #[serde(default = "chaining_by_default")]
    pub chaining: bool,
    /// How operators with `parallelism: auto` follow the cluster's free slots.
    #[serde(default, skip_serializing_if = "AutoscaleConfig::is_default")]
    pub autoscale: AutoscaleConfig,
    /// How the job's subtasks take slots: one slot per parallel slice of each sharing group
    /// (true for every parsed spec), or one per subtask (false: jobs stored before slot sharing,
    /// whose Raft log entries must replay to the state they produced then).
    #[serde(default, skip_serializing_if = "is_false")]
    pub slot_sharing: bool,
    /// The user functions operators call, by name (absent in jobs without any).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub functions: BTreeMap<String, FunctionRef>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Reactive parallelism: how long the slots a job could use must stay the same before the job
/// is rescaled to them (executors joining one after another cause one rescale, not several).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoscaleConfig {
    pub stabilization_ms: u64,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        AutoscaleConfig {
            stabilization_ms: 2_000,
        }
    }
}

impl AutoscaleConfig {
    fn is_default(&self) -> bool {
        *self == AutoscaleConfig::default()
    }
}

/// An operator whose parallelism follows the free slots, between `min` and `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoParallelism {
    pub min: u32,
    pub max: u32,
}

impl AutoParallelism {
    /// `parallelism` brought within the bounds.
    pub fn clamp(&self, parallelism: u32) -> u32 {
        parallelism.clamp(self.min, self.max)
    }
}

fn chaining_by_default() -> bool {
    true
}

/// One operator of a job graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredOperator", into = "StoredOperator")]
pub struct OperatorSpec {
    pub id: OperatorId,
    pub kind: OperatorKind,
    /// The parallelism it runs at (for an `auto` operator, the one chosen last).
    pub parallelism: u32,
    /// `parallelism: auto`: the bounds it follows the free slots within.
    pub auto: Option<AutoParallelism>,
    pub inputs: Vec<OperatorId>,
    /// The parameters as the spec wrote them: what is stored and shown.
    pub params: BTreeMap<String, Value>,
    /// The slot sharing group the spec named for it; without one it shares its inputs' group.
    pub slot_sharing_group: Option<String>,
    /// What they mean, read once; the runtime builds the operator from this alone.
    pub config: OperatorConfig,
}

/// An operator as stored in the Raft log and sent to executors: its configuration is read again
/// from the parameters, so the stored form stays what users wrote.
#[derive(Serialize, Deserialize)]
struct StoredOperator {
    id: OperatorId,
    kind: OperatorKind,
    parallelism: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auto: Option<AutoParallelism>,
    inputs: Vec<OperatorId>,
    params: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slot_sharing_group: Option<String>,
}

impl OperatorSpec {
    /// An operator from its parts, its parameters checked against its kind and read into its
    /// configuration (as a spec's operators are).
    pub fn new(
        id: &str,
        kind: OperatorKind,
        parallelism: u32,
        inputs: Vec<OperatorId>,
        params: BTreeMap<String, Value>,
    ) -> Result<OperatorSpec, SpecError> {
        OperatorSpec::try_from(StoredOperator {
            id: OperatorId::from(id),
            kind,
            parallelism,
            auto: None,
            inputs,
            params,
            slot_sharing_group: None,
        })
    }
}

impl TryFrom<StoredOperator> for OperatorSpec {
    type Error = SpecError;

    fn try_from(stored: StoredOperator) -> Result<OperatorSpec, SpecError> {
        validate_params(stored.id.as_str(), stored.kind, &stored.params)?;
        let config = operator_config(stored.id.as_str(), stored.kind, &stored.params)?;
        Ok(OperatorSpec {
            id: stored.id,
            kind: stored.kind,
            parallelism: stored.parallelism,
            auto: stored.auto,
            inputs: stored.inputs,
            params: stored.params,
            slot_sharing_group: stored.slot_sharing_group,
            config,
        })
    }
}

impl From<OperatorSpec> for StoredOperator {
    fn from(operator: OperatorSpec) -> StoredOperator {
        StoredOperator {
            id: operator.id,
            kind: operator.kind,
            parallelism: operator.parallelism,
            auto: operator.auto,
            inputs: operator.inputs,
            params: operator.params,
            slot_sharing_group: operator.slot_sharing_group,
        }
    }
}

/// When to checkpoint, and how many completed checkpoints to keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointConfig {
    /// 0 disables periodic checkpoints.
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retained: u32,
    /// At most this many records emitted by the sources (together) since the last completed
    /// checkpoint: what a failure replays. A checkpoint starts at half of it; a source that
    /// reached its share waits for one to complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_records: Option<u64>,
    /// The same bound in bytes of source records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// No checkpoint starts sooner than this after the last one ended (completed or aborted).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_pause_ms: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl CheckpointConfig {
    /// Whether anything triggers checkpoints of a running job by itself.
    pub fn is_enabled(&self) -> bool {
        self.interval_ms > 0 || self.max_records.is_some() || self.max_bytes.is_some()
    }
}

/// What to do when a task fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "snake_case")]
pub enum RestartStrategy {
    None,
    FixedDelay {
        max_attempts: u32,
        delay_ms: u64,
    },
    /// Delays doubling from `initial_delay_ms` up to `max_delay_ms`. With `first_delay_ms` the
    /// first restart of a run of failures waits that long and the doubling starts at the second.
    /// With `reset_after_ms` `max_attempts` counts restarts within a run (else over the job's
    /// life), and a run ends when the job completes a checkpoint after restarting or fails that
    /// long after its previous failure.
    ExponentialBackoff {
        max_attempts: u32,
        initial_delay_ms: u64,
        max_delay_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        first_delay_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reset_after_ms: Option<u64>,
    },
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval_ms: 1_000,
            timeout_ms: 60_000,
            retained: 3,
            max_records: None,
            max_bytes: None,
            min_pause_ms: 0,
        }
    }
}

/// Without a `restart:` section a job restarts at once and backs off when it keeps failing before
/// it completes a checkpoint: 0 ms, then 100 ms doubling to 30 s, 10 attempts in a row; a
/// completed checkpoint or 10 minutes without a failure end the run. (Flink's default since 1.19
/// is an exponential delay too, from 1 s.)
impl Default for RestartStrategy {
    fn default() -> Self {
        RestartStrategy::ExponentialBackoff {
            max_attempts: 10,
            initial_delay_ms: 100,
            max_delay_ms: 30_000,
            first_delay_ms: Some(0),
            reset_after_ms: Some(600_000),
        }
    }
}

impl RestartStrategy {
    /// How many restarts it allows (in a run of failures when it has `reset_after_ms`).
    pub fn max_attempts(&self) -> u32 {
        match self {
            RestartStrategy::None => 0,
            RestartStrategy::FixedDelay { max_attempts, .. }
            | RestartStrategy::ExponentialBackoff { max_attempts, .. } => *max_attempts,
        }
    }

    /// After how long without a failure the next one starts a new run of attempts, if ever.
    pub fn reset_after_ms(&self) -> Option<u64> {
        match self {
            RestartStrategy::ExponentialBackoff { reset_after_ms, .. } => *reset_after_ms,
            _ => None,
        }
    }

    /// How long restart number `attempt` (1 for the first) waits.
    pub fn delay_ms(&self, attempt: u32) -> u64 {
        let doubled = |initial: u64, doublings: u32, max: u64| {
            let factor = 1u64.checked_shl(doublings.min(62)).unwrap_or(u64::MAX);
            initial.saturating_mul(factor).min(max)
        };
        match self {
            RestartStrategy::None => 0,
            RestartStrategy::FixedDelay { delay_ms, .. } => *delay_ms,
            RestartStrategy::ExponentialBackoff {
                initial_delay_ms,
                max_delay_ms,
                first_delay_ms: Some(first_delay_ms),
                ..
            } => match attempt {
                0 | 1 => *first_delay_ms,
                later => doubled(*initial_delay_ms, later - 2, *max_delay_ms),
            },
            RestartStrategy::ExponentialBackoff {
                initial_delay_ms,
                max_delay_ms,
                first_delay_ms: None,
                ..
            } => doubled(*initial_delay_ms, attempt.saturating_sub(1), *max_delay_ms),
        }
    }
}

impl JobGraph {
    /// The number of subtasks the job runs (its slot need is [`JobGraph::slots_needed`]).
    pub fn total_subtasks(&self) -> u64 {
        self.operators
            .iter()
            .map(|operator| u64::from(operator.parallelism))
            .sum()
    }

    /// The operator with the given id.
    pub fn operator(&self, operator_id: &str) -> Option<&OperatorSpec> {
        self.operators.iter().find(|operator| operator.id == operator_id)
    }

    /// Whether any operator's parallelism is `auto`.
    pub fn is_auto(&self) -> bool {
        self.operators.iter().any(|operator| operator.auto.is_some())
    }

    /// This graph with its `auto` operators at `parallelism`, each within its bounds.
    pub fn with_auto_parallelism(&self, parallelism: u32) -> JobGraph {
        let mut graph = self.clone();
        for operator in &mut graph.operators {
            if let Some(auto) = operator.auto {
                operator.parallelism = auto.clamp(parallelism);
            }
        }
        graph
    }

    /// The parallelism for the `auto` operators with which the whole job fits in `slots`: the
    /// highest that fits, or the lowest their bounds allow when none does (it then waits for
    /// slots). `None` when no operator is `auto`.
    pub fn auto_parallelism_for(&self, slots: u64) -> Option<u32> {
        let highest = self
            .operators
            .iter()
            .filter_map(|operator| operator.auto)
            .map(|auto| auto.max)
            .max()?;
        let fits = |parallelism: u32| self.with_auto_parallelism(parallelism).slots_needed() <= slots;
        Some((1..=highest).rev().find(|parallelism| fits(*parallelism)).unwrap_or(1))
    }

    /// This graph with `operator` (every operator when `None`) at `parallelism`. Keyed state
    /// moves by key group, generator offsets by lane, file progress by file and sink output by
    /// subtask, so any operator may change.
    /// The graph with `two_phase: auto` operator `operator_id` switched to two phases for good
    /// (its parameters say `two_phase: true` from then on, its flush bounds kept).
    pub fn with_two_phase_on(&self, operator_id: &str) -> Result<JobGraph, RescaleError> {
        let mut switched = self.clone();
        let Some(operator) = switched
            .operators
            .iter_mut()
            .find(|operator| operator.id == operator_id)
        else {
            let known: Vec<&str> = self.operators.iter().map(|operator| operator.id.as_str()).collect();
            return Err(RescaleError::UnknownOperator {
                operator: operator_id.to_owned(),
                known: known.join(", "),
            });
        };
        if !matches!(operator.config.two_phase_mode(), TwoPhase::Auto { .. }) {
            return Err(RescaleError::NotAutoTwoPhase {
                operator: operator_id.to_owned(),
            });
        }
        let mut params = operator.params.clone();
        params.remove("skew_factor");
        params.insert("two_phase".to_owned(), Value::Bool(true));
        *operator = OperatorSpec::new(
            operator.id.as_str(),
            operator.kind,
            operator.parallelism,
            operator.inputs.clone(),
            params,
        )
        .map(|mut switched| {
            switched.auto = operator.auto;
            switched
        })
        .map_err(|error| RescaleError::NotAutoTwoPhase {
            operator: format!("{operator_id} ({error})"),
        })?;
        Ok(switched)
    }

    pub fn rescaled(&self, operator: Option<&str>, parallelism: u32) -> Result<JobGraph, RescaleError> {
        if parallelism == 0 {
            return Err(RescaleError::ZeroParallelism);
        }
        if parallelism > self.max_parallelism {
            return Err(RescaleError::AboveMaxParallelism {
                parallelism,
                max_parallelism: self.max_parallelism,
            });
        }
        if let Some(id) = operator {
            if self.operator(id).is_none() {
                let known: Vec<&str> = self.operators.iter().map(|operator| operator.id.as_str()).collect();
                return Err(RescaleError::UnknownOperator {
                    operator: id.to_owned(),
                    known: known.join(", "),
                });
            }
        }
        let mut rescaled = self.clone();
        for spec in &mut rescaled.operators {
            let targeted = operator.is_none_or(|id| spec.id == id);
            if !targeted || spec.parallelism == parallelism {
                continue;
            }
            spec.parallelism = parallelism;
        }
        if rescaled == *self {
            return Err(RescaleError::Unchanged { parallelism });
        }
        Ok(rescaled)
    }
}

/// Why a job cannot be rescaled as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RescaleError {
    #[error("parallelism must be at least 1")]
    ZeroParallelism,
    #[error(
        "operator {operator:?} does not wait to switch to two phases (it is not two_phase: auto, or already switched)"
    )]
    NotAutoTwoPhase { operator: String },
    #[error(
        "parallelism {parallelism} is above the job's max_parallelism of {max_parallelism} (its number of key groups)"
    )]
    AboveMaxParallelism { parallelism: u32, max_parallelism: u32 },
    #[error("the job has no operator {operator:?} (operators: {known})")]
    UnknownOperator { operator: String, known: String },
    #[error("already at parallelism {parallelism}: nothing to change")]
    Unchanged { parallelism: u32 },
}

/// Why a job spec was rejected. The message names the operator and field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("job spec is {size_bytes} bytes, above the limit of {limit_bytes} bytes")]
    TooLarge { size_bytes: usize, limit_bytes: usize },
    #[error("job spec is empty")]
    Empty,
    #[error("job spec is neither valid YAML nor JSON: {reason}")]
    NotYamlOrJson { reason: String },
    #[error("job spec must be a mapping (YAML) or an object (JSON), found {found}")]
    NotAMapping { found: &'static str },
    #[error("job spec: {field}: {problem}")]
    Job { field: String, problem: String },
    #[error("operator {operator:?}: {field}: {problem}")]
    Operator {
        operator: String,
        field: String,
        problem: String,
    },
    #[error("job graph has a cycle through operators {operators:?}")]
    Cycle { operators: Vec<String> },
}

pub(super) fn job_error(field: &str, problem: impl Into<String>) -> SpecError {
    SpecError::Job {
        field: field.to_owned(),
        problem: problem.into(),
    }
}

pub(super) fn operator_error(operator: &str, field: &str, problem: impl Into<String>) -> SpecError {
    SpecError::Operator {
        operator: operator.to_owned(),
        field: field.to_owned(),
        problem: problem.into(),
    }
}

pub(super) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}
