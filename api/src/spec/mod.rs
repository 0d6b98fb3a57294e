//! Job specs: parsing YAML or JSON into a validated [`JobGraph`], with errors that name the operator
//! and the field at fault.

mod chains;
mod config;
mod exchanges;
mod operators;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use config::operator_config;
pub use config::{
    Combine, CompareOp, FilterConfig, FlatMapFunction, GeneratorConfig, KeyHash, MapFunction, OperatorConfig,
    PreAggregation, TwoPhase, WindowAggregate, WindowConfig,
};
pub use exchanges::Exchange;
pub use operators::{OperatorKind, OperatorRole, ParamSchema, ParamType};

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
    pub id: String,
    pub kind: OperatorKind,
    /// The parallelism it runs at (for an `auto` operator, the one chosen last).
    pub parallelism: u32,
    /// `parallelism: auto`: the bounds it follows the free slots within.
    pub auto: Option<AutoParallelism>,
    pub inputs: Vec<String>,
    /// The parameters as the spec wrote them: what is stored and shown.
    pub params: BTreeMap<String, Value>,
    /// What they mean, read once; the runtime builds the operator from this alone.
    pub config: OperatorConfig,
}

/// An operator as stored in the Raft log and sent to executors: its configuration is read again
/// from the parameters, so the stored form stays what users wrote.
#[derive(Serialize, Deserialize)]
struct StoredOperator {
    id: String,
    kind: OperatorKind,
    parallelism: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auto: Option<AutoParallelism>,
    inputs: Vec<String>,
    params: BTreeMap<String, Value>,
}

impl OperatorSpec {
    /// An operator from its parts, its parameters checked against its kind and read into its
    /// configuration (as a spec's operators are).
    pub fn new(
        id: &str,
        kind: OperatorKind,
        parallelism: u32,
        inputs: Vec<String>,
        params: BTreeMap<String, Value>,
    ) -> Result<OperatorSpec, SpecError> {
        OperatorSpec::try_from(StoredOperator {
            id: id.to_owned(),
            kind,
            parallelism,
            auto: None,
            inputs,
            params,
        })
    }
}

impl TryFrom<StoredOperator> for OperatorSpec {
    type Error = SpecError;

    fn try_from(stored: StoredOperator) -> Result<OperatorSpec, SpecError> {
        validate_params(&stored.id, stored.kind, &stored.params)?;
        let config = operator_config(&stored.id, stored.kind, &stored.params)?;
        Ok(OperatorSpec {
            id: stored.id,
            kind: stored.kind,
            parallelism: stored.parallelism,
            auto: stored.auto,
            inputs: stored.inputs,
            params: stored.params,
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
    ExponentialBackoff {
        max_attempts: u32,
        initial_delay_ms: u64,
        max_delay_ms: u64,
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

impl Default for RestartStrategy {
    fn default() -> Self {
        RestartStrategy::FixedDelay {
            max_attempts: 3,
            delay_ms: 1_000,
        }
    }
}

impl JobGraph {
    /// The number of subtasks (slots) the job needs.
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
        let fits = |parallelism: u32| self.with_auto_parallelism(parallelism).total_subtasks() <= slots;
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
            &operator.id,
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
            let targeted = operator.is_none_or(|id| id == spec.id);
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

fn job_error(field: &str, problem: impl Into<String>) -> SpecError {
    SpecError::Job {
        field: field.to_owned(),
        problem: problem.into(),
    }
}

fn operator_error(operator: &str, field: &str, problem: impl Into<String>) -> SpecError {
    SpecError::Operator {
        operator: operator.to_owned(),
        field: field.to_owned(),
        problem: problem.into(),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Parses and validates a job spec written in YAML or JSON.
pub fn parse_job_spec(text: &str) -> Result<JobGraph, SpecError> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(SpecError::TooLarge {
            size_bytes: text.len(),
            limit_bytes: MAX_SPEC_BYTES,
        });
    }
    if text.trim().is_empty() {
        return Err(SpecError::Empty);
    }
    // JSON is tried first for text that looks like JSON so that its errors speak JSON; YAML is a
    // superset that covers the rest.
    let document: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|error| SpecError::NotYamlOrJson {
            reason: error.to_string(),
        })?
    } else {
        serde_yaml::from_str(text).map_err(|error| SpecError::NotYamlOrJson {
            reason: error.to_string(),
        })?
    };
    validate_document(&document)
}

fn validate_document(document: &Value) -> Result<JobGraph, SpecError> {
    let Value::Object(top) = document else {
        return Err(SpecError::NotAMapping {
            found: type_name(document),
        });
    };
    const TOP_FIELDS: &[&str] = &[
        "name",
        "parallelism",
        "max_parallelism",
        "autoscale",
        "checkpoint",
        "restart",
        "chaining",
        "operators",
    ];
    if let Some(unknown) = top.keys().find(|key| !TOP_FIELDS.contains(&key.as_str())) {
        return Err(job_error(
            unknown,
            format!("unknown field; expected one of {}", TOP_FIELDS.join(", ")),
        ));
    }

    let name = match top.get("name") {
        None => return Err(job_error("name", "missing")),
        Some(Value::String(name)) if name.trim().is_empty() => return Err(job_error("name", "must not be empty")),
        Some(Value::String(name)) if name.chars().count() > MAX_NAME_CHARS => {
            return Err(job_error("name", format!("longer than {MAX_NAME_CHARS} characters")))
        }
        Some(Value::String(name)) => name.clone(),
        Some(other) => {
            return Err(job_error(
                "name",
                format!("must be a string, found {}", type_name(other)),
            ))
        }
    };

    let max_parallelism = match top.get("max_parallelism") {
        None => DEFAULT_MAX_PARALLELISM,
        Some(value) => {
            bounded_u32(value, 1, MAX_KEY_GROUPS).map_err(|problem| job_error("max_parallelism", problem))?
        }
    };
    let default_parallelism = match top.get("parallelism") {
        None => ParallelismSpec::Fixed(1),
        Some(value) => {
            parse_parallelism(value, max_parallelism).map_err(|problem| job_error("parallelism", problem))?
        }
    };
    let autoscale = parse_autoscale(top.get("autoscale"))?;
    let checkpoint = parse_checkpoint(top.get("checkpoint"))?;
    let restart = parse_restart(top.get("restart"))?;
    let chaining = match top.get("chaining") {
        None => true,
        Some(Value::Bool(chaining)) => *chaining,
        Some(other) => {
            return Err(job_error(
                "chaining",
                format!("must be true or false, found {}", describe(other)),
            ))
        }
    };

    let operator_values = match top.get("operators") {
        None => return Err(job_error("operators", "missing")),
        Some(Value::Array(list)) if list.is_empty() => {
            return Err(job_error("operators", "must list at least one operator"))
        }
        Some(Value::Array(list)) if list.len() > MAX_OPERATORS => {
            return Err(job_error("operators", format!("more than {MAX_OPERATORS} operators")))
        }
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(job_error(
                "operators",
                format!("must be a list, found {}", type_name(other)),
            ))
        }
    };

    let mut operators = Vec::with_capacity(operator_values.len());
    let mut seen_ids = BTreeSet::new();
    for (position, value) in operator_values.iter().enumerate() {
        let operator = parse_operator(position, value, default_parallelism, max_parallelism)?;
        if !seen_ids.insert(operator.id.clone()) {
            return Err(operator_error(&operator.id, "id", "duplicate operator id"));
        }
        operators.push(operator);
    }
    validate_edges(&operators)?;
    Ok(JobGraph {
        name,
        max_parallelism,
        checkpoint,
        restart,
        operators,
        chaining,
        autoscale,
    })
}

/// A parallelism as a spec writes it: a number, `auto`, or `{min, max}` (auto within bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParallelismSpec {
    Fixed(u32),
    Auto(AutoParallelism),
}

fn parse_parallelism(value: &Value, max_parallelism: u32) -> Result<ParallelismSpec, String> {
    match value {
        Value::String(text) if text == "auto" => Ok(ParallelismSpec::Auto(AutoParallelism {
            min: 1,
            max: max_parallelism,
        })),
        Value::Object(bounds) => {
            if let Some(unknown) = bounds.keys().find(|key| !["min", "max"].contains(&key.as_str())) {
                return Err(format!(
                    "unknown field {unknown:?} of an automatic parallelism; expected min, max"
                ));
            }
            let bound = |name: &str, default: u32| match bounds.get(name) {
                None => Ok(default),
                Some(value) => bounded_u32(value, 1, max_parallelism).map_err(|problem| format!("{name} {problem}")),
            };
            let min = bound("min", 1)?;
            let max = bound("max", max_parallelism)?;
            if min > max {
                return Err(format!("min {min} is above max {max}"));
            }
            Ok(ParallelismSpec::Auto(AutoParallelism { min, max }))
        }
        Value::String(text) => Err(format!(
            "{text:?} is not a parallelism; write a number, auto, or {{min, max}}"
        )),
        number => bounded_u32(number, 1, max_parallelism).map(ParallelismSpec::Fixed),
    }
}

fn parse_autoscale(value: Option<&Value>) -> Result<AutoscaleConfig, SpecError> {
    let mut config = AutoscaleConfig::default();
    let Some(value) = value else { return Ok(config) };
    let Value::Object(map) = value else {
        return Err(job_error(
            "autoscale",
            format!("must be a mapping, found {}", type_name(value)),
        ));
    };
    if let Some(unknown) = map.keys().find(|key| key.as_str() != "stabilization_ms") {
        return Err(job_error(
            &format!("autoscale.{unknown}"),
            "unknown field; expected stabilization_ms",
        ));
    }
    if let Some(value) = map.get("stabilization_ms") {
        config.stabilization_ms = value.as_u64().filter(|ms| *ms <= 3_600_000).ok_or_else(|| {
            job_error(
                "autoscale.stabilization_ms",
                format!(
                    "must be a whole number of milliseconds up to one hour, found {}",
                    describe(value)
                ),
            )
        })?;
    }
    Ok(config)
}

fn bounded_u32(value: &Value, min: u32, max: u32) -> Result<u32, String> {
    let number = value
        .as_u64()
        .ok_or_else(|| format!("must be a whole number, found {}", describe(value)))?;
    if number < u64::from(min) || number > u64::from(max) {
        return Err(format!("is {number}, must be between {min} and {max}"));
    }
    u32::try_from(number).map_err(|_| format!("is {number}, must be between {min} and {max}"))
}

fn bounded_u64(value: &Value, min: u64) -> Result<u64, String> {
    let number = value
        .as_u64()
        .ok_or_else(|| format!("must be a whole number, found {}", describe(value)))?;
    if number < min {
        return Err(format!("is {number}, must be at least {min}"));
    }
    Ok(number)
}

fn describe(value: &Value) -> String {
    match value {
        Value::Number(number) => format!("{number}"),
        Value::String(text) => format!("{text:?}"),
        other => type_name(other).to_owned(),
    }
}

fn sub_mapping<'a>(
    value: Option<&'a Value>,
    field: &str,
    allowed: &[&str],
) -> Result<Option<&'a Map<String, Value>>, SpecError> {
    match value {
        None => Ok(None),
        Some(Value::Object(map)) => {
            if let Some(unknown) = map.keys().find(|key| !allowed.contains(&key.as_str())) {
                return Err(job_error(
                    &format!("{field}.{unknown}"),
                    format!("unknown field; expected one of {}", allowed.join(", ")),
                ));
            }
            Ok(Some(map))
        }
        Some(other) => Err(job_error(
            field,
            format!("must be a mapping, found {}", type_name(other)),
        )),
    }
}

fn parse_checkpoint(value: Option<&Value>) -> Result<CheckpointConfig, SpecError> {
    let mut config = CheckpointConfig::default();
    let allowed = [
        "interval_ms",
        "timeout_ms",
        "retained",
        "max_records",
        "max_bytes",
        "min_pause_ms",
    ];
    let Some(map) = sub_mapping(value, "checkpoint", &allowed)? else {
        return Ok(config);
    };
    if let Some(value) = map.get("interval_ms") {
        config.interval_ms = bounded_u64(value, 0).map_err(|problem| job_error("checkpoint.interval_ms", problem))?;
        if config.interval_ms != 0 && config.interval_ms < 10 {
            return Err(job_error("checkpoint.interval_ms", "must be 0 (off) or at least 10"));
        }
    }
    if let Some(value) = map.get("timeout_ms") {
        config.timeout_ms = bounded_u64(value, 1).map_err(|problem| job_error("checkpoint.timeout_ms", problem))?;
    }
    if let Some(value) = map.get("retained") {
        config.retained = bounded_u32(value, 1, 100).map_err(|problem| job_error("checkpoint.retained", problem))?;
    }
    if let Some(value) = map.get("max_records") {
        config.max_records =
            Some(bounded_u64(value, 1).map_err(|problem| job_error("checkpoint.max_records", problem))?);
    }
    if let Some(value) = map.get("max_bytes") {
        config.max_bytes = Some(byte_size(value).map_err(|problem| job_error("checkpoint.max_bytes", problem))?);
    }
    if let Some(value) = map.get("min_pause_ms") {
        config.min_pause_ms = bounded_u64(value, 0).map_err(|problem| job_error("checkpoint.min_pause_ms", problem))?;
    }
    if config.interval_ms > 0 && config.min_pause_ms > config.interval_ms {
        return Err(job_error(
            "checkpoint.min_pause_ms",
            format!(
                "{} is above interval_ms {}: checkpoints could never keep their interval",
                config.min_pause_ms, config.interval_ms
            ),
        ));
    }
    if !config.is_enabled() && map.contains_key("retained") {
        return Err(job_error(
            "checkpoint.retained",
            "keeps checkpoints, but every trigger is off (interval_ms is 0 and there is no max_records or max_bytes)",
        ));
    }
    Ok(config)
}

/// A size in bytes: a whole number, or a number with a unit (`64MiB`, `512 KiB`, `1GB`).
fn byte_size(value: &Value) -> Result<u64, String> {
    let size = match value {
        Value::Number(_) => bounded_u64(value, 1)?,
        Value::String(text) => {
            let text = text.trim();
            let split = text
                .find(|character: char| !character.is_ascii_digit())
                .unwrap_or(text.len());
            let (digits, unit) = text.split_at(split);
            let number: u64 = digits
                .parse()
                .map_err(|_| format!("{text:?} is not a size (write e.g. 65536, \"64MiB\" or \"1GB\")"))?;
            let multiplier: u64 = match unit.trim() {
                "" | "B" => 1,
                "KiB" => 1 << 10,
                "MiB" => 1 << 20,
                "GiB" => 1 << 30,
                "KB" | "kB" => 1_000,
                "MB" => 1_000_000,
                "GB" => 1_000_000_000,
                other => {
                    return Err(format!(
                        "unknown unit {other:?} in {text:?} (B, KiB, MiB, GiB, KB, MB or GB)"
                    ))
                }
            };
            number
                .checked_mul(multiplier)
                .ok_or_else(|| format!("{text:?} is too large"))?
        }
        other => return Err(format!("must be a size, found {}", describe(other))),
    };
    if size == 0 {
        return Err("must be at least 1 byte".to_owned());
    }
    Ok(size)
}

fn parse_restart(value: Option<&Value>) -> Result<RestartStrategy, SpecError> {
    let allowed = [
        "strategy",
        "max_attempts",
        "delay_ms",
        "initial_delay_ms",
        "max_delay_ms",
    ];
    let Some(map) = sub_mapping(value, "restart", &allowed)? else {
        return Ok(RestartStrategy::default());
    };
    let number = |field: &str, default: u64, min: u64| -> Result<u64, SpecError> {
        map.get(field)
            .map(|value| bounded_u64(value, min).map_err(|problem| job_error(&format!("restart.{field}"), problem)))
            .unwrap_or(Ok(default))
    };
    let attempts = |default: u32| -> Result<u32, SpecError> {
        map.get("max_attempts")
            .map(|value| bounded_u32(value, 0, 1_000_000).map_err(|problem| job_error("restart.max_attempts", problem)))
            .unwrap_or(Ok(default))
    };
    let strategy = match map.get("strategy") {
        None => "fixed_delay",
        Some(Value::String(text)) => text.as_str(),
        Some(other) => {
            return Err(job_error(
                "restart.strategy",
                format!("must be a string, found {}", type_name(other)),
            ))
        }
    };
    match strategy {
        "none" => Ok(RestartStrategy::None),
        "fixed_delay" => Ok(RestartStrategy::FixedDelay {
            max_attempts: attempts(3)?,
            delay_ms: number("delay_ms", 1_000, 0)?,
        }),
        "exponential_backoff" => {
            let initial_delay_ms = number("initial_delay_ms", 500, 1)?;
            let max_delay_ms = number("max_delay_ms", 30_000, 1)?;
            if max_delay_ms < initial_delay_ms {
                return Err(job_error("restart.max_delay_ms", "must be at least initial_delay_ms"));
            }
            Ok(RestartStrategy::ExponentialBackoff {
                max_attempts: attempts(10)?,
                initial_delay_ms,
                max_delay_ms,
            })
        }
        other => Err(job_error(
            "restart.strategy",
            format!("unknown strategy {other:?}; expected none, fixed_delay or exponential_backoff"),
        )),
    }
}

fn valid_operator_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NAME_CHARS
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

fn parse_operator(
    position: usize,
    value: &Value,
    default_parallelism: ParallelismSpec,
    max_parallelism: u32,
) -> Result<OperatorSpec, SpecError> {
    let fallback_name = format!("#{position}");
    let Value::Object(map) = value else {
        return Err(operator_error(
            &fallback_name,
            "operator",
            format!("must be a mapping, found {}", type_name(value)),
        ));
    };
    let id = match map.get("id") {
        None => return Err(operator_error(&fallback_name, "id", "missing")),
        Some(Value::String(id)) if valid_operator_id(id) => id.clone(),
        Some(Value::String(id)) => {
            return Err(operator_error(
                &fallback_name,
                "id",
                format!("{id:?} must be 1-128 characters of letters, digits, '_', '-' or '.'"),
            ))
        }
        Some(other) => {
            return Err(operator_error(
                &fallback_name,
                "id",
                format!("must be a string, found {}", type_name(other)),
            ))
        }
    };
    const OPERATOR_FIELDS: &[&str] = &["id", "kind", "inputs", "parallelism", "params"];
    if let Some(unknown) = map.keys().find(|key| !OPERATOR_FIELDS.contains(&key.as_str())) {
        return Err(operator_error(
            &id,
            unknown,
            format!("unknown field; expected one of {}", OPERATOR_FIELDS.join(", ")),
        ));
    }
    let kind = match map.get("kind") {
        None => return Err(operator_error(&id, "kind", "missing")),
        Some(Value::String(name)) => OperatorKind::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = OperatorKind::ALL.iter().map(|kind| kind.name()).collect();
            operator_error(
                &id,
                "kind",
                format!("unknown operator kind {name:?}; known kinds: {}", known.join(", ")),
            )
        })?,
        Some(other) => {
            return Err(operator_error(
                &id,
                "kind",
                format!("must be a string, found {}", type_name(other)),
            ))
        }
    };
    let parallelism = match map.get("parallelism") {
        None => default_parallelism,
        Some(value) => {
            parse_parallelism(value, max_parallelism).map_err(|problem| operator_error(&id, "parallelism", problem))?
        }
    };
    // Until the cluster chooses (at submit), an automatic parallelism starts at its minimum.
    let (parallelism, auto) = match parallelism {
        ParallelismSpec::Fixed(parallelism) => (parallelism, None),
        ParallelismSpec::Auto(auto) => (auto.min, Some(auto)),
    };
    let inputs = match map.get("inputs") {
        None => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|input| match input {
                Value::String(name) => Ok(name.clone()),
                other => Err(operator_error(
                    &id,
                    "inputs",
                    format!("each input must be an operator id, found {}", type_name(other)),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        // A single input may be written as a plain string.
        Some(Value::String(name)) => vec![name.clone()],
        Some(other) => {
            return Err(operator_error(
                &id,
                "inputs",
                format!("must be a list of operator ids, found {}", type_name(other)),
            ))
        }
    };
    let params = match map.get("params") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(params)) => params.iter().map(|(key, value)| (key.clone(), value.clone())).collect(),
        Some(other) => {
            return Err(operator_error(
                &id,
                "params",
                format!("must be a mapping, found {}", type_name(other)),
            ))
        }
    };
    validate_params(&id, kind, &params)?;
    let config = operator_config(&id, kind, &params)?;
    Ok(OperatorSpec {
        id,
        kind,
        parallelism,
        auto,
        inputs,
        params,
        config,
    })
}

fn validate_params(id: &str, kind: OperatorKind, params: &BTreeMap<String, Value>) -> Result<(), SpecError> {
    let schema = kind.params();
    for (name, value) in params {
        let field = format!("params.{name}");
        let Some(param) = schema.iter().find(|param| param.name == name) else {
            let known: Vec<&str> = schema.iter().map(|param| param.name).collect();
            let expected = if known.is_empty() {
                "it takes no parameters".to_owned()
            } else {
                format!("expected one of {}", known.join(", "))
            };
            return Err(operator_error(
                id,
                &field,
                format!("unknown parameter for {kind}; {expected}"),
            ));
        };
        let problem = match param.param_type {
            ParamType::UnsignedAtLeast(min) => bounded_u64(value, min).err(),
            ParamType::Text => (!value.is_string()).then(|| format!("must be a string, found {}", type_name(value))),
            ParamType::TextList => match value {
                Value::Array(items) if items.iter().all(Value::is_string) => None,
                other => Some(format!("must be a list of strings, found {}", describe(other))),
            },
            ParamType::Scalar => match value {
                Value::String(_) | Value::Number(_) | Value::Bool(_) => None,
                other => Some(format!(
                    "must be a string, number or boolean, found {}",
                    type_name(other)
                )),
            },
            ParamType::FlagOrAuto => (!value.is_boolean() && value.as_str() != Some("auto"))
                .then(|| format!("is {}, must be true, false or \"auto\"", describe(value))),
            ParamType::FactorAboveOne => match value.as_f64() {
                Some(factor) if factor > 1.0 && factor.is_finite() => None,
                _ => Some(format!("is {}, must be a number above 1", describe(value))),
            },
            ParamType::OneOf(choices) => match value.as_str() {
                Some(choice) if choices.contains(&choice) => None,
                _ => Some(format!("is {}, must be one of {}", describe(value), choices.join(", "))),
            },
        };
        if let Some(problem) = problem {
            return Err(operator_error(id, &field, problem));
        }
    }
    if let Some(missing) = schema
        .iter()
        .find(|param| param.required && !params.contains_key(param.name))
    {
        return Err(operator_error(
            id,
            &format!("params.{}", missing.name),
            format!("missing; {kind} requires it"),
        ));
    }
    if kind == OperatorKind::SlidingWindow {
        let size = params.get("size_ms").and_then(Value::as_u64).unwrap_or(0);
        let slide = params.get("slide_ms").and_then(Value::as_u64).unwrap_or(0);
        if slide > size {
            return Err(operator_error(
                id,
                "params.slide_ms",
                format!("is {slide}, must not exceed size_ms ({size})"),
            ));
        }
    }
    Ok(())
}

fn validate_edges(operators: &[OperatorSpec]) -> Result<(), SpecError> {
    let by_id: BTreeMap<&str, &OperatorSpec> = operators
        .iter()
        .map(|operator| (operator.id.as_str(), operator))
        .collect();
    for operator in operators {
        let role = operator.kind.role();
        if role == OperatorRole::Source && !operator.inputs.is_empty() {
            return Err(operator_error(
                &operator.id,
                "inputs",
                format!("a {} source takes no inputs", operator.kind),
            ));
        }
        if role != OperatorRole::Source && operator.inputs.is_empty() {
            return Err(operator_error(
                &operator.id,
                "inputs",
                format!("missing; a {} needs at least one input", operator.kind),
            ));
        }
        let mut seen = BTreeSet::new();
        for input in &operator.inputs {
            if !seen.insert(input) {
                return Err(operator_error(&operator.id, "inputs", format!("lists {input:?} twice")));
            }
            let Some(upstream) = by_id.get(input.as_str()) else {
                return Err(operator_error(
                    &operator.id,
                    "inputs",
                    format!("refers to unknown operator {input:?}"),
                ));
            };
            if upstream.kind.role() == OperatorRole::Sink {
                return Err(operator_error(
                    &operator.id,
                    "inputs",
                    format!("{input:?} is a sink ({}) and has no output", upstream.kind),
                ));
            }
            if role == OperatorRole::KeyedTransform && upstream.kind != OperatorKind::KeyBy {
                return Err(operator_error(
                    &operator.id,
                    "inputs",
                    format!(
                        "{} needs a keyed stream, but input {input:?} is a {}; put a key_by before it",
                        operator.kind, upstream.kind
                    ),
                ));
            }
            if role == OperatorRole::KeyedTransform
                && matches!(
                    upstream.config,
                    OperatorConfig::KeyBy {
                        hash: KeyHash::Salted { .. },
                        ..
                    }
                )
            {
                return Err(operator_error(
                    &operator.id,
                    "inputs",
                    format!(
                        "{} keeps state per key, but input {input:?} is a salted key_by that spreads each key over several subtasks; use hash: plain (or two_phase on the aggregate for a hot key)",
                        operator.kind
                    ),
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(operators) {
        return Err(SpecError::Cycle { operators: cycle });
    }
    if !operators
        .iter()
        .any(|operator| operator.kind.role() == OperatorRole::Sink)
    {
        return Err(job_error("operators", "the job has no sink (file_sink or print)"));
    }
    Ok(())
}

/// Kahn's algorithm: whatever cannot be ordered topologically lies on or behind a cycle.
fn find_cycle(operators: &[OperatorSpec]) -> Option<Vec<String>> {
    let mut pending_inputs: BTreeMap<&str, usize> = operators
        .iter()
        .map(|operator| (operator.id.as_str(), operator.inputs.len()))
        .collect();
    let mut ready: Vec<&str> = pending_inputs
        .iter()
        .filter(|(_, count)| **count == 0)
        .map(|(id, _)| *id)
        .collect();
    while let Some(done) = ready.pop() {
        for operator in operators {
            if operator.inputs.iter().any(|input| input == done) {
                if let Some(count) = pending_inputs.get_mut(operator.id.as_str()) {
                    *count -= 1;
                    if *count == 0 {
                        ready.push(operator.id.as_str());
                    }
                }
            }
        }
    }
    let stuck: Vec<String> = pending_inputs
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(id, _)| id.to_owned())
        .collect();
    (!stuck.is_empty()).then_some(stuck)
}
