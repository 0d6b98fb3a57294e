//! Operators and edges of a spec: ids, kinds, the params each kind accepts, inputs that exist,
//! and a graph without cycles.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::config::operator_config;
use super::operators::UDF_PARAM;
use super::parse::{bounded_u64, describe, parse_parallelism, ParallelismSpec};
use super::*;

pub(super) fn valid_operator_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NAME_CHARS
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

pub(super) fn parse_operator(
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
    const OPERATOR_FIELDS: &[&str] = &["id", "kind", "inputs", "parallelism", "params", "slot_sharing_group"];
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
    let slot_sharing_group = match map.get("slot_sharing_group") {
        None | Some(Value::Null) => None,
        Some(Value::String(group)) if valid_operator_id(group) => Some(group.clone()),
        Some(Value::String(group)) => {
            return Err(operator_error(
                &id,
                "slot_sharing_group",
                format!("{group:?} must be 1-128 characters of letters, digits, '_', '-' or '.'"),
            ))
        }
        Some(other) => {
            return Err(operator_error(
                &id,
                "slot_sharing_group",
                format!("must be a string, found {}", type_name(other)),
            ))
        }
    };
    validate_params(&id, kind, &params)?;
    let config = operator_config(&id, kind, &params)?;
    Ok(OperatorSpec {
        id: OperatorId(id),
        kind,
        parallelism,
        auto,
        inputs: inputs.into_iter().map(OperatorId).collect(),
        params,
        slot_sharing_group,
        config,
    })
}

pub(super) fn validate_params(id: &str, kind: OperatorKind, params: &BTreeMap<String, Value>) -> Result<(), SpecError> {
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
    if params.contains_key(UDF_PARAM) {
        // A user function replaces the built-in's parameters.
        if let Some(other) = params.keys().find(|name| name.as_str() != UDF_PARAM) {
            return Err(operator_error(
                id,
                &format!("params.{other}"),
                format!("an operator calling a user function (params.{UDF_PARAM}) takes no other parameter"),
            ));
        }
        return Ok(());
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

pub(super) fn validate_edges(operators: &[OperatorSpec]) -> Result<(), SpecError> {
    let by_id: BTreeMap<&str, &OperatorSpec> = operators
        .iter()
        .map(|operator| (operator.id.as_str(), operator))
        .collect();
    for operator in operators {
        let role = operator.kind.role();
        if role == OperatorRole::Source && !operator.inputs.is_empty() {
            return Err(operator_error(
                operator.id.as_str(),
                "inputs",
                format!("a {} source takes no inputs", operator.kind),
            ));
        }
        if role != OperatorRole::Source && operator.inputs.is_empty() {
            return Err(operator_error(
                operator.id.as_str(),
                "inputs",
                format!("missing; a {} needs at least one input", operator.kind),
            ));
        }
        let mut seen = BTreeSet::new();
        for input in &operator.inputs {
            if !seen.insert(input) {
                return Err(operator_error(
                    operator.id.as_str(),
                    "inputs",
                    format!("lists {input:?} twice"),
                ));
            }
            let Some(upstream) = by_id.get(input.as_str()) else {
                return Err(operator_error(
                    operator.id.as_str(),
                    "inputs",
                    format!("refers to unknown operator {input:?}"),
                ));
            };
            if upstream.kind.role() == OperatorRole::Sink {
                return Err(operator_error(
                    operator.id.as_str(),
                    "inputs",
                    format!("{input:?} is a sink ({}) and has no output", upstream.kind),
                ));
            }
            if role == OperatorRole::KeyedTransform && upstream.kind != OperatorKind::KeyBy {
                return Err(operator_error(
                    operator.id.as_str(),
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
                    operator.id.as_str(),
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
pub(super) fn find_cycle(operators: &[OperatorSpec]) -> Option<Vec<String>> {
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
