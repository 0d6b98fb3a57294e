//! Reading a spec document: its size and syntax, the job-level fields (parallelism, checkpoint,
//! restart, autoscale) with their bounds, each field's error naming it.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::validate::{parse_operator, validate_edges};
use super::*;

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

pub(super) fn validate_document(document: &Value) -> Result<JobGraph, SpecError> {
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
        "functions",
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
            return Err(operator_error(operator.id.as_str(), "id", "duplicate operator id"));
        }
        operators.push(operator);
    }
    validate_edges(&operators)?;
    let functions = super::functions::parse_functions(top.get("functions"))?;
    for operator in &operators {
        if let OperatorConfig::Udf(call) = &operator.config {
            if !functions.contains_key(&call.function) {
                let known: Vec<&str> = functions.keys().map(String::as_str).collect();
                return Err(operator_error(
                    operator.id.as_str(),
                    "params.udf",
                    format!(
                        "unknown function {:?}; the spec's functions are: {}",
                        call.function,
                        if known.is_empty() {
                            "(none)".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        }
    }
    Ok(JobGraph {
        name,
        max_parallelism,
        checkpoint,
        restart,
        operators,
        chaining,
        autoscale,
        slot_sharing: true,
        functions,
    })
}

/// A parallelism as a spec writes it: a number, `auto`, or `{min, max}` (auto within bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ParallelismSpec {
    Fixed(u32),
    Auto(AutoParallelism),
}

pub(super) fn parse_parallelism(value: &Value, max_parallelism: u32) -> Result<ParallelismSpec, String> {
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

pub(super) fn parse_autoscale(value: Option<&Value>) -> Result<AutoscaleConfig, SpecError> {
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

pub(super) fn bounded_u32(value: &Value, min: u32, max: u32) -> Result<u32, String> {
    let number = value
        .as_u64()
        .ok_or_else(|| format!("must be a whole number, found {}", describe(value)))?;
    if number < u64::from(min) || number > u64::from(max) {
        return Err(format!("is {number}, must be between {min} and {max}"));
    }
    u32::try_from(number).map_err(|_| format!("is {number}, must be between {min} and {max}"))
}

pub(super) fn bounded_u64(value: &Value, min: u64) -> Result<u64, String> {
    let number = value
        .as_u64()
        .ok_or_else(|| format!("must be a whole number, found {}", describe(value)))?;
    if number < min {
        return Err(format!("is {number}, must be at least {min}"));
    }
    Ok(number)
}

pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::Number(number) => format!("{number}"),
        Value::String(text) => format!("{text:?}"),
        other => type_name(other).to_owned(),
    }
}

pub(super) fn sub_mapping<'a>(
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

pub(super) fn parse_checkpoint(value: Option<&Value>) -> Result<CheckpointConfig, SpecError> {
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
pub(super) fn byte_size(value: &Value) -> Result<u64, String> {
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

pub(super) fn parse_restart(value: Option<&Value>) -> Result<RestartStrategy, SpecError> {
    let allowed = [
        "strategy",
        "max_attempts",
        "delay_ms",
        "initial_delay_ms",
        "max_delay_ms",
        "first_delay_ms",
        "reset_after_ms",
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
    let optional = |field: &str, min: u64| -> Result<Option<u64>, SpecError> {
        map.get(field)
            .map(|value| bounded_u64(value, min).map_err(|problem| job_error(&format!("restart.{field}"), problem)))
            .transpose()
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
                first_delay_ms: optional("first_delay_ms", 0)?,
                reset_after_ms: optional("reset_after_ms", 1)?,
            })
        }
        other => Err(job_error(
            "restart.strategy",
            format!("unknown strategy {other:?}; expected none, fixed_delay or exponential_backoff"),
        )),
    }
}
