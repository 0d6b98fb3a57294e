//! The built-in operator kinds and the parameters each one accepts.

use serde::{Deserialize, Serialize};

/// Every operator kind a job graph may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorKind {
    Generator,
    FileSource,
    Map,
    FlatMap,
    Filter,
    KeyBy,
    Rebalance,
    Rescale,
    Broadcast,
    Count,
    Sum,
    Min,
    Max,
    Reduce,
    Process,
    TumblingWindow,
    SlidingWindow,
    FileSink,
    Print,
}

/// What role an operator plays in the graph, which decides how many inputs it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorRole {
    Source,
    Transform,
    /// Needs a keyed input: every input must be a `key_by`.
    KeyedTransform,
    Sink,
}

/// The type a parameter value must have.
#[derive(Debug, Clone, Copy)]
pub enum ParamType {
    /// An integer of at least the given value.
    UnsignedAtLeast(u64),
    Text,
    TextList,
    /// A string, number or boolean.
    Scalar,
    /// One of the listed strings.
    OneOf(&'static [&'static str]),
    /// `true`, `false` or `"auto"`.
    FlagOrAuto,
    /// A number above 1 (a factor).
    FactorAboveOne,
}

/// The parameter naming a user function; with it an operator takes no other parameter.
pub const UDF_PARAM: &str = "udf";

/// One parameter an operator kind accepts.
#[derive(Debug, Clone, Copy)]
pub struct ParamSchema {
    pub name: &'static str,
    pub param_type: ParamType,
    pub required: bool,
}

const fn optional(name: &'static str, param_type: ParamType) -> ParamSchema {
    ParamSchema {
        name,
        param_type,
        required: false,
    }
}

const fn required(name: &'static str, param_type: ParamType) -> ParamSchema {
    ParamSchema {
        name,
        param_type,
        required: true,
    }
}

const AGGREGATES: &[&str] = &["count", "sum", "min", "max"];
const WINDOW_COMMON: [ParamSchema; 4] = [
    required("aggregate", ParamType::OneOf(AGGREGATES)),
    optional("field", ParamType::Text),
    optional("timestamp_field", ParamType::Text),
    optional("max_out_of_orderness_ms", ParamType::UnsignedAtLeast(0)),
];
/// Two-phase aggregation (see `PreAggregation`): every aggregate and window accepts it.
const TWO_PHASE: [ParamSchema; 4] = [
    optional("two_phase", ParamType::FlagOrAuto),
    optional("flush_ms", ParamType::UnsignedAtLeast(1)),
    optional("flush_records", ParamType::UnsignedAtLeast(1)),
    optional("skew_factor", ParamType::FactorAboveOne),
];

impl OperatorKind {
    /// All kinds, in the order the documentation lists them.
    pub const ALL: [OperatorKind; 19] = [
        OperatorKind::Generator,
        OperatorKind::FileSource,
        OperatorKind::Map,
        OperatorKind::FlatMap,
        OperatorKind::Filter,
        OperatorKind::KeyBy,
        OperatorKind::Rebalance,
        OperatorKind::Rescale,
        OperatorKind::Broadcast,
        OperatorKind::Count,
        OperatorKind::Sum,
        OperatorKind::Min,
        OperatorKind::Max,
        OperatorKind::Reduce,
        OperatorKind::Process,
        OperatorKind::TumblingWindow,
        OperatorKind::SlidingWindow,
        OperatorKind::FileSink,
        OperatorKind::Print,
    ];

    /// The name used in job specs.
    pub fn name(self) -> &'static str {
        match self {
            OperatorKind::Generator => "generator",
            OperatorKind::FileSource => "file_source",
            OperatorKind::Map => "map",
            OperatorKind::FlatMap => "flat_map",
            OperatorKind::Filter => "filter",
            OperatorKind::KeyBy => "key_by",
            OperatorKind::Rebalance => "rebalance",
            OperatorKind::Rescale => "rescale",
            OperatorKind::Broadcast => "broadcast",
            OperatorKind::Count => "count",
            OperatorKind::Sum => "sum",
            OperatorKind::Min => "min",
            OperatorKind::Max => "max",
            OperatorKind::Reduce => "reduce",
            OperatorKind::Process => "process",
            OperatorKind::TumblingWindow => "tumbling_window",
            OperatorKind::SlidingWindow => "sliding_window",
            OperatorKind::FileSink => "file_sink",
            OperatorKind::Print => "print",
        }
    }

    /// The kind with the given spec name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// Source, transform, keyed transform or sink.
    pub fn role(self) -> OperatorRole {
        match self {
            OperatorKind::Generator | OperatorKind::FileSource => OperatorRole::Source,
            OperatorKind::Map
            | OperatorKind::FlatMap
            | OperatorKind::Filter
            | OperatorKind::KeyBy
            | OperatorKind::Rebalance
            | OperatorKind::Rescale
            | OperatorKind::Broadcast => OperatorRole::Transform,
            OperatorKind::Count
            | OperatorKind::Sum
            | OperatorKind::Min
            | OperatorKind::Max
            | OperatorKind::Reduce
            | OperatorKind::Process
            | OperatorKind::TumblingWindow
            | OperatorKind::SlidingWindow => OperatorRole::KeyedTransform,
            OperatorKind::FileSink | OperatorKind::Print => OperatorRole::Sink,
        }
    }

    /// The parameters this kind accepts; any other parameter is rejected.
    pub fn params(self) -> Vec<ParamSchema> {
        use ParamType::*;
        match self {
            OperatorKind::Generator => vec![
                optional("seed", UnsignedAtLeast(0)),
                optional("count", UnsignedAtLeast(0)),
                optional("rate_per_second", UnsignedAtLeast(1)),
                optional("vocabulary_size", UnsignedAtLeast(1)),
                optional("words_per_record", UnsignedAtLeast(1)),
                optional("word_order", OneOf(&["random", "sequential"])),
                optional("hot_word_percent", UnsignedAtLeast(0)),
            ],
            OperatorKind::FileSource => vec![required("path", Text), optional("rate_per_second", UnsignedAtLeast(1))],
            OperatorKind::Map => vec![
                required(
                    "function",
                    OneOf(&[
                        "identity",
                        "lowercase",
                        "uppercase",
                        "trim",
                        "project",
                        "parse_csv",
                        "parse_json",
                    ]),
                ),
                optional("fields", TextList),
                optional("delimiter", Text),
                optional("udf", Text),
            ],
            OperatorKind::FlatMap => vec![
                required("function", OneOf(&["split_words", "split", "parse_csv", "parse_json"])),
                optional("fields", TextList),
                optional("delimiter", Text),
                optional("udf", Text),
            ],
            OperatorKind::Filter => vec![
                optional("field", Text),
                required(
                    "op",
                    OneOf(&["eq", "ne", "lt", "le", "gt", "ge", "contains", "starts_with"]),
                ),
                required("value", Scalar),
                optional("udf", Text),
            ],
            OperatorKind::KeyBy => vec![
                optional("field", Text),
                optional("hash", OneOf(&["plain", "salted"])),
                optional("salts", UnsignedAtLeast(2)),
                optional("udf", Text),
            ],
            // Records pass unchanged; the kind chooses the exchange on the edges out of it.
            OperatorKind::Rebalance | OperatorKind::Rescale | OperatorKind::Broadcast => vec![],
            OperatorKind::Count => TWO_PHASE.to_vec(),
            OperatorKind::Sum | OperatorKind::Min | OperatorKind::Max => {
                let mut params = vec![optional("field", Text)];
                params.extend(TWO_PHASE);
                params
            }
            OperatorKind::Reduce => {
                let mut params = vec![
                    required("function", OneOf(&["sum", "min", "max", "concat"])),
                    optional("field", Text),
                    optional("udf", Text),
                ];
                params.extend(TWO_PHASE);
                params
            }
            OperatorKind::Process => vec![required("udf", Text)],
            OperatorKind::TumblingWindow => {
                let mut params = vec![required("size_ms", UnsignedAtLeast(1))];
                params.extend(WINDOW_COMMON);
                params.extend(TWO_PHASE);
                params
            }
            OperatorKind::SlidingWindow => {
                let mut params = vec![
                    required("size_ms", UnsignedAtLeast(1)),
                    required("slide_ms", UnsignedAtLeast(1)),
                ];
                params.extend(WINDOW_COMMON);
                params.extend(TWO_PHASE);
                params
            }
            OperatorKind::FileSink => vec![required("path", Text)],
            OperatorKind::Print => vec![optional("prefix", Text)],
        }
    }
}

impl std::fmt::Display for OperatorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
