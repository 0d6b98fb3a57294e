//! Typed operator configuration: what each operator kind's `params` mean, read once when a spec
//! is validated (or a stored graph is read back), with every default set here. The runtime builds
//! operators from these and never reads a parameter map.

use std::collections::BTreeMap;

use serde_json::Value;

use super::functions::{UdfCall, UdfExport};
use super::{operator_error, OperatorKind, SpecError};

/// One operator's configuration, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorConfig {
    Generator(GeneratorConfig),
    FileSource {
        path: String,
        /// Lines per second over all subtasks (a replay or test paces its input); unbounded when
        /// `None`.
        rate_per_second: Option<u64>,
    },
    Map(MapFunction),
    FlatMap(FlatMapFunction),
    Filter(FilterConfig),
    /// `None`: the record value becomes the key.
    KeyBy {
        field: Option<String>,
        hash: KeyHash,
    },
    /// `rebalance`, `rescale` and `broadcast`: records pass unchanged, the exchange after them is
    /// what they are for.
    Exchange,
    Count {
        two_phase: TwoPhase,
    },
    /// A running keyed aggregate (`sum`, `min`, `max`, `reduce`) of the value or of one field.
    Aggregate {
        combine: Combine,
        field: Option<String>,
        two_phase: TwoPhase,
    },
    Window(WindowConfig),
    FileSink {
        path: String,
    },
    Print {
        prefix: String,
    },
    /// A user function's export (`params.udf`), in place of a built-in.
    Udf(UdfCall),
}

/// `two_phase: true` on a keyed aggregate or window: each subtask feeding its `key_by` folds the
/// records of a key (of a window pane) into one partial result before the keyed exchange, so a
/// hot key sends the aggregate a partial every flush instead of every record. Partials are
/// flushed at every barrier (a checkpoint never holds one), before every watermark, and after
/// `flush_records` records or `flush_ms`, whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreAggregation {
    pub flush_ms: u64,
    pub flush_records: u64,
}

impl PreAggregation {
    pub const DEFAULT_FLUSH_MS: u64 = 100;
    pub const DEFAULT_FLUSH_RECORDS: u64 = 10_000;
}

/// Whether an aggregate or window runs in two phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TwoPhase {
    #[default]
    Off,
    On(PreAggregation),
    /// `two_phase: auto`: one phase until the leader sees one subtask's input exceed
    /// `skew_percent` of the mean over the operator's subtasks; then on, from the next checkpoint.
    Auto {
        pre_aggregation: PreAggregation,
        skew_percent: u64,
    },
}

impl TwoPhase {
    /// `skew_factor` when the spec does not say: twice the mean.
    pub const DEFAULT_SKEW_PERCENT: u64 = 200;
}

impl OperatorConfig {
    /// The pre-aggregation of a two-phase aggregate or window (not of one that may switch to it).
    pub fn two_phase(&self) -> Option<PreAggregation> {
        match self.two_phase_mode() {
            TwoPhase::On(pre_aggregation) => Some(pre_aggregation),
            TwoPhase::Off | TwoPhase::Auto { .. } => None,
        }
    }

    /// Off, on, or waiting for skew (aggregates and windows; off for everything else).
    pub fn two_phase_mode(&self) -> TwoPhase {
        match self {
            OperatorConfig::Count { two_phase } | OperatorConfig::Aggregate { two_phase, .. } => *two_phase,
            OperatorConfig::Window(window) => window.two_phase,
            _ => TwoPhase::Off,
        }
    }
}

/// How a `key_by` maps keys to the consumer's subtasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyHash {
    /// Every record of a key to the subtask owning the key's key group: what keyed state needs.
    Plain,
    /// `hash: salted`: a key's records go to `salts` key groups in turn (default: as many as the
    /// consumer has subtasks), so a hot key is spread instead of saturating one subtask. A keyed
    /// operator cannot follow it (a key's state would be split); stateless work and sinks can.
    Salted { salts: Option<u32> },
}

/// A deterministic generator of lines of words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratorConfig {
    pub seed: u64,
    /// `None`: unbounded.
    pub count: Option<u64>,
    /// `None`: as fast as it can.
    pub rate_per_second: Option<u64>,
    pub vocabulary_size: u64,
    pub words_per_record: u64,
    /// `word_order: sequential`: the words of the stream are `w0, w1, ...` modulo the vocabulary
    /// (every word once per `vocabulary_size` words, so keyed state of a known size fills in one
    /// pass) instead of drawn at random from the seed.
    pub sequential_words: bool,
    /// `hot_word_percent`: this share of all words is `w0`, the rest drawn from the vocabulary as
    /// usual: a skewed stream with one hot key, for trying two-phase aggregation.
    pub hot_word_percent: u64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 0,
            count: None,
            rate_per_second: None,
            vocabulary_size: 1_000,
            words_per_record: 8,
            sequential_words: false,
            hot_word_percent: 0,
        }
    }
}

/// What a `map` does to each record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapFunction {
    Identity,
    Lowercase,
    Uppercase,
    Trim,
    /// Keeps only the named fields of a JSON object.
    Project {
        fields: Vec<String>,
    },
    /// Delimited text -> a JSON object with the named fields.
    ParseCsv {
        fields: Vec<String>,
        delimiter: String,
    },
    /// Keeps JSON objects, drops the rest.
    ParseJson,
}

/// What a `flat_map` makes of each record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlatMapFunction {
    SplitWords,
    Split {
        delimiter: String,
    },
    ParseCsv {
        fields: Vec<String>,
        delimiter: String,
    },
    /// JSON objects, and the elements of JSON arrays.
    ParseJson,
}

/// Which records a `filter` keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterConfig {
    /// `None`: the record value itself.
    pub field: Option<String>,
    pub op: CompareOp,
    /// Numbers compare as numbers when both sides read as one, text otherwise.
    pub value: String,
}

/// A filter's comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
    StartsWith,
}

impl CompareOp {
    fn from_name(name: &str) -> Option<CompareOp> {
        Some(match name {
            "eq" => CompareOp::Eq,
            "ne" => CompareOp::Ne,
            "lt" => CompareOp::Lt,
            "le" => CompareOp::Le,
            "gt" => CompareOp::Gt,
            "ge" => CompareOp::Ge,
            "contains" => CompareOp::Contains,
            "starts_with" => CompareOp::StartsWith,
            _ => return None,
        })
    }
}

/// How a keyed aggregate combines values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    Sum,
    Min,
    Max,
    Concat,
}

/// What a window computes per key and window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowAggregate {
    Count,
    Sum,
    Min,
    Max,
}

/// A tumbling (`slide_ms == size_ms`) or sliding event-time window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowConfig {
    pub size_ms: u64,
    pub slide_ms: u64,
    pub aggregate: WindowAggregate,
    /// The number to aggregate; `None`: the record value.
    pub field: Option<String>,
    /// The event time; `None`: the record's own timestamp.
    pub timestamp_field: Option<String>,
    pub max_out_of_orderness_ms: u64,
    pub two_phase: TwoPhase,
}

/// The parameters of one operator, their types already checked against its kind's schema.
struct Params<'a> {
    operator: &'a str,
    values: &'a BTreeMap<String, Value>,
}

impl Params<'_> {
    fn text(&self, name: &str) -> Option<String> {
        self.values.get(name).and_then(Value::as_str).map(str::to_owned)
    }

    fn number(&self, name: &str) -> Option<u64> {
        self.values.get(name).and_then(Value::as_u64)
    }

    /// `two_phase` with its flush bounds and skew factor; those alone are refused.
    fn two_phase(&self) -> Result<TwoPhase, SpecError> {
        let pre_aggregation = PreAggregation {
            flush_ms: self.number("flush_ms").unwrap_or(PreAggregation::DEFAULT_FLUSH_MS),
            flush_records: self
                .number("flush_records")
                .unwrap_or(PreAggregation::DEFAULT_FLUSH_RECORDS),
        };
        let refuse = |name: &str, needs: &str| {
            Err(operator_error(
                self.operator,
                &format!("params.{name}"),
                format!("only applies with two_phase: {needs}"),
            ))
        };
        let two_phase = self.values.get("two_phase");
        if two_phase.and_then(Value::as_str) == Some("auto") {
            let skew_percent = self
                .values
                .get("skew_factor")
                .and_then(Value::as_f64)
                .map_or(TwoPhase::DEFAULT_SKEW_PERCENT, |factor| (factor * 100.0).round() as u64);
            return Ok(TwoPhase::Auto {
                pre_aggregation,
                skew_percent,
            });
        }
        if self.values.contains_key("skew_factor") {
            return refuse("skew_factor", "auto");
        }
        if two_phase.and_then(Value::as_bool) == Some(true) {
            return Ok(TwoPhase::On(pre_aggregation));
        }
        match ["flush_ms", "flush_records"]
            .into_iter()
            .find(|name| self.values.contains_key(*name))
        {
            Some(name) => refuse(name, "true or auto"),
            None => Ok(TwoPhase::Off),
        }
    }

    fn required_number(&self, name: &str) -> Result<u64, SpecError> {
        self.number(name)
            .ok_or_else(|| operator_error(self.operator, &format!("params.{name}"), "missing"))
    }

    fn text_list(&self, name: &str) -> Vec<String> {
        self.values
            .get(name)
            .and_then(Value::as_array)
            .map(|items| items.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// The fields a function needs listed.
    fn fields_for(&self, function: &str) -> Result<Vec<String>, SpecError> {
        let fields = self.text_list("fields");
        if fields.is_empty() {
            return Err(operator_error(
                self.operator,
                "params.fields",
                format!("{function} needs the list of field names"),
            ));
        }
        Ok(fields)
    }

    fn delimiter(&self) -> String {
        self.text("delimiter").unwrap_or_else(|| ",".to_owned())
    }

    fn unknown(&self, name: &str, value: &str) -> SpecError {
        operator_error(
            self.operator,
            &format!("params.{name}"),
            format!("{value:?} is not supported"),
        )
    }
}

/// The configuration of operator `id` of `kind` from its `params`, which must already have passed
/// the kind's schema (names and types); checks what the schema cannot (required combinations,
/// ranges between parameters).
pub(super) fn operator_config(
    id: &str,
    kind: OperatorKind,
    params: &BTreeMap<String, Value>,
) -> Result<OperatorConfig, SpecError> {
    let params = Params {
        operator: id,
        values: params,
    };
    if let (Some(function), Some(export)) = (params.text(super::operators::UDF_PARAM), UdfExport::of(kind)) {
        return Ok(OperatorConfig::Udf(UdfCall { function, export }));
    }
    let function = params.text("function").unwrap_or_default();
    Ok(match kind {
        OperatorKind::Generator => {
            let defaults = GeneratorConfig::default();
            let sequential_words = params.text("word_order").is_some_and(|order| order == "sequential");
            let hot_word_percent = params.number("hot_word_percent").unwrap_or(0);
            if hot_word_percent > 100 {
                return Err(operator_error(
                    id,
                    "params.hot_word_percent",
                    format!("is {hot_word_percent}, must be at most 100"),
                ));
            }
            if hot_word_percent > 0 && sequential_words {
                return Err(operator_error(
                    id,
                    "params.hot_word_percent",
                    "only applies with word_order: random",
                ));
            }
            OperatorConfig::Generator(GeneratorConfig {
                seed: params.number("seed").unwrap_or(defaults.seed),
                count: params.number("count"),
                rate_per_second: params.number("rate_per_second"),
                vocabulary_size: params.number("vocabulary_size").unwrap_or(defaults.vocabulary_size),
                words_per_record: params.number("words_per_record").unwrap_or(defaults.words_per_record),
                sequential_words,
                hot_word_percent,
            })
        }
        OperatorKind::FileSource => OperatorConfig::FileSource {
            path: params.text("path").unwrap_or_default(),
            rate_per_second: params.number("rate_per_second"),
        },
        OperatorKind::Map => OperatorConfig::Map(match function.as_str() {
            "identity" => MapFunction::Identity,
            "lowercase" => MapFunction::Lowercase,
            "uppercase" => MapFunction::Uppercase,
            "trim" => MapFunction::Trim,
            "project" => MapFunction::Project {
                fields: params.fields_for("project")?,
            },
            "parse_csv" => MapFunction::ParseCsv {
                fields: params.fields_for("parse_csv")?,
                delimiter: params.delimiter(),
            },
            "parse_json" => MapFunction::ParseJson,
            other => return Err(params.unknown("function", other)),
        }),
        OperatorKind::FlatMap => OperatorConfig::FlatMap(match function.as_str() {
            "split_words" => FlatMapFunction::SplitWords,
            "split" => FlatMapFunction::Split {
                delimiter: params.delimiter(),
            },
            "parse_csv" => FlatMapFunction::ParseCsv {
                fields: params.fields_for("parse_csv")?,
                delimiter: params.delimiter(),
            },
            "parse_json" => FlatMapFunction::ParseJson,
            other => return Err(params.unknown("function", other)),
        }),
        OperatorKind::Filter => {
            let op_name = params.text("op").unwrap_or_else(|| "eq".to_owned());
            OperatorConfig::Filter(FilterConfig {
                field: params.text("field"),
                op: CompareOp::from_name(&op_name).ok_or_else(|| params.unknown("op", &op_name))?,
                value: match params.values.get("value") {
                    Some(Value::String(text)) => text.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                },
            })
        }
        OperatorKind::KeyBy => OperatorConfig::KeyBy {
            field: params.text("field"),
            hash: match params.text("hash").as_deref() {
                Some("salted") => KeyHash::Salted {
                    salts: params
                        .number("salts")
                        .map(|salts| u32::try_from(salts).unwrap_or(u32::MAX)),
                },
                _ if params.values.contains_key("salts") => {
                    return Err(operator_error(
                        id,
                        "params.salts",
                        "only applies with hash: salted".to_owned(),
                    ))
                }
                _ => KeyHash::Plain,
            },
        },
        OperatorKind::Rebalance | OperatorKind::Rescale | OperatorKind::Broadcast => OperatorConfig::Exchange,
        OperatorKind::Count => OperatorConfig::Count {
            two_phase: params.two_phase()?,
        },
        OperatorKind::Sum | OperatorKind::Min | OperatorKind::Max | OperatorKind::Reduce => {
            let combine = match (kind, function.as_str()) {
                (OperatorKind::Sum, _) | (OperatorKind::Reduce, "sum") => Combine::Sum,
                (OperatorKind::Min, _) | (OperatorKind::Reduce, "min") => Combine::Min,
                (OperatorKind::Max, _) | (OperatorKind::Reduce, "max") => Combine::Max,
                (_, "concat") => Combine::Concat,
                (_, other) => return Err(params.unknown("function", other)),
            };
            let two_phase = params.two_phase()?;
            if two_phase != TwoPhase::Off && combine == Combine::Concat {
                return Err(operator_error(
                    id,
                    "params.two_phase",
                    "a concat reduce keeps its values in arrival order, which partial results cannot; use two_phase with sum, min or max",
                ));
            }
            OperatorConfig::Aggregate {
                combine,
                field: params.text("field"),
                two_phase,
            }
        }
        OperatorKind::TumblingWindow | OperatorKind::SlidingWindow => {
            let size_ms = params.required_number("size_ms")?;
            let slide_ms = match kind {
                OperatorKind::SlidingWindow => params.required_number("slide_ms")?,
                _ => size_ms,
            };
            if slide_ms == 0 || slide_ms > size_ms {
                return Err(operator_error(
                    id,
                    "params.slide_ms",
                    format!("must be between 1 and size_ms ({size_ms}), is {slide_ms}"),
                ));
            }
            let aggregate_name = params.text("aggregate").unwrap_or_else(|| "count".to_owned());
            let aggregate = match aggregate_name.as_str() {
                "count" => WindowAggregate::Count,
                "sum" => WindowAggregate::Sum,
                "min" => WindowAggregate::Min,
                "max" => WindowAggregate::Max,
                other => return Err(params.unknown("aggregate", other)),
            };
            OperatorConfig::Window(WindowConfig {
                size_ms,
                slide_ms,
                aggregate,
                field: params.text("field"),
                timestamp_field: params.text("timestamp_field"),
                max_out_of_orderness_ms: params.number("max_out_of_orderness_ms").unwrap_or(0),
                two_phase: params.two_phase()?,
            })
        }
        OperatorKind::FileSink => OperatorConfig::FileSink {
            path: params.text("path").unwrap_or_default(),
        },
        OperatorKind::Print => OperatorConfig::Print {
            prefix: params.text("prefix").unwrap_or_default(),
        },
        // Its only parameter, `udf`, is required and handled above.
        OperatorKind::Process => return Err(operator_error(id, "params.udf", "missing; process requires it")),
    })
}
