//! The `functions:` section of a spec: user functions, each a WebAssembly component stored once in
//! the checkpoint store under its SHA-256, which is all the Raft log keeps of it (with its size,
//! language and limits). Operators call one by name (`udf: NAME`); the export they call follows
//! from their kind.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::parse::describe;
use super::{job_error, type_name, OperatorKind, SpecError};

/// The largest function accepted (a Python component is about 18 MB).
pub const MAX_FUNCTION_BYTES: u64 = 100 << 20;
/// Memory an instance gets when the spec does not say, and the most it may ask for.
pub const DEFAULT_FUNCTION_MEMORY_MIB: u64 = 64;
pub const MAX_FUNCTION_MEMORY_MIB: u64 = 4_096;
/// How long one batch call may run when the spec does not say, and the most it may ask for.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 5_000;
pub const MAX_CALL_TIMEOUT_MS: u64 = 600_000;
const MAX_FUNCTIONS: usize = 100;
const MAX_FUNCTION_NAME_CHARS: usize = 64;

/// Where a function's component is stored in the checkpoint store.
pub fn function_location(sha256: &str) -> String {
    format!("functions/{sha256}.wasm")
}

/// A user function as the job keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRef {
    /// SHA-256 of the component, lowercase hex: its name in the store.
    pub sha256: String,
    pub size_bytes: u64,
    /// What it was built from: javascript, python, rust or wasm.
    pub language: String,
    pub memory_limit_bytes: u64,
    pub call_timeout_ms: u64,
}

/// The export of the WIT world an operator calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UdfExport {
    Map,
    FlatMap,
    Filter,
    Key,
    Reduce,
    Process,
}

impl UdfExport {
    /// The export an operator of `kind` calls, if that kind can call a user function.
    pub fn of(kind: OperatorKind) -> Option<UdfExport> {
        Some(match kind {
            OperatorKind::Map => UdfExport::Map,
            OperatorKind::FlatMap => UdfExport::FlatMap,
            OperatorKind::Filter => UdfExport::Filter,
            OperatorKind::KeyBy => UdfExport::Key,
            OperatorKind::Reduce => UdfExport::Reduce,
            OperatorKind::Process => UdfExport::Process,
            _ => return None,
        })
    }

    /// The export's name in the WIT world.
    pub fn wit_name(self) -> &'static str {
        match self {
            UdfExport::Map => "map",
            UdfExport::FlatMap => "flat-map",
            UdfExport::Filter => "filter",
            UdfExport::Key => "key",
            UdfExport::Reduce => "reduce",
            UdfExport::Process => "process",
        }
    }

    /// The export of that WIT name.
    pub fn from_wit_name(name: &str) -> Option<UdfExport> {
        [
            UdfExport::Map,
            UdfExport::FlatMap,
            UdfExport::Filter,
            UdfExport::Key,
            UdfExport::Reduce,
            UdfExport::Process,
        ]
        .into_iter()
        .find(|export| export.wit_name() == name)
    }

    /// Whether the export keeps per-key state in the engine (and needs a keyed input).
    pub fn is_keyed(self) -> bool {
        matches!(self, UdfExport::Reduce | UdfExport::Process)
    }
}

/// An operator's call of a user function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdfCall {
    /// The function's name in the job's `functions:`.
    pub function: String,
    pub export: UdfExport,
}

/// Parses the `functions:` section (absent: no functions).
pub(super) fn parse_functions(value: Option<&Value>) -> Result<BTreeMap<String, FunctionRef>, SpecError> {
    let Some(value) = value else {
        return Ok(BTreeMap::new());
    };
    let Value::Object(entries) = value else {
        return Err(job_error(
            "functions",
            format!("must be a mapping of names to functions, found {}", type_name(value)),
        ));
    };
    if entries.len() > MAX_FUNCTIONS {
        return Err(job_error("functions", format!("more than {MAX_FUNCTIONS} functions")));
    }
    let mut functions = BTreeMap::new();
    for (name, entry) in entries {
        let field = |sub: &str| format!("functions.{name}.{sub}");
        let valid_name = !name.is_empty()
            && name.chars().count() <= MAX_FUNCTION_NAME_CHARS
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_name {
            return Err(job_error(
                &format!("functions.{name}"),
                format!("a function name is 1 to {MAX_FUNCTION_NAME_CHARS} letters, digits, '_' or '-'"),
            ));
        }
        let Value::Object(fields) = entry else {
            return Err(job_error(
                &format!("functions.{name}"),
                format!("must be a mapping, found {}", type_name(entry)),
            ));
        };
        const FIELDS: &[&str] = &[
            "sha256",
            "size_bytes",
            "language",
            "memory_limit_mib",
            "call_timeout_ms",
            "source",
        ];
        if let Some(unknown) = fields.keys().find(|key| !FIELDS.contains(&key.as_str())) {
            return Err(job_error(
                &field(unknown),
                format!("unknown field; expected one of {}", FIELDS.join(", ")),
            ));
        }
        if fields.contains_key("source") {
            return Err(job_error(
                &field("source"),
                "a file on the submitting machine: `raftstream job submit` builds and uploads it and sends its sha256 and size_bytes instead; submit the spec with the CLI",
            ));
        }
        let sha256 = match fields.get("sha256") {
            Some(Value::String(text))
                if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) =>
            {
                text.clone()
            }
            Some(other) => {
                return Err(job_error(
                    &field("sha256"),
                    format!("must be 64 lowercase hex digits, found {}", describe(other)),
                ))
            }
            None => return Err(job_error(&field("sha256"), "missing")),
        };
        let size_bytes = match fields.get("size_bytes").and_then(Value::as_u64) {
            Some(size) if (1..=MAX_FUNCTION_BYTES).contains(&size) => size,
            Some(size) => {
                return Err(job_error(
                    &field("size_bytes"),
                    format!("is {size}, must be between 1 and {MAX_FUNCTION_BYTES}"),
                ))
            }
            None => return Err(job_error(&field("size_bytes"), "missing, or not a whole number")),
        };
        let language = match fields.get("language") {
            None => "wasm".to_owned(),
            Some(Value::String(language)) if ["javascript", "python", "rust", "wasm"].contains(&language.as_str()) => {
                language.clone()
            }
            Some(other) => {
                return Err(job_error(
                    &field("language"),
                    format!("is {}, must be one of javascript, python, rust, wasm", describe(other)),
                ))
            }
        };
        let bounded = |sub: &str, default: u64, max: u64| match fields.get(sub) {
            None => Ok(default),
            Some(value) => match value.as_u64() {
                Some(number) if (1..=max).contains(&number) => Ok(number),
                _ => Err(job_error(
                    &field(sub),
                    format!("is {}, must be a whole number from 1 to {max}", describe(value)),
                )),
            },
        };
        let memory_mib = bounded("memory_limit_mib", DEFAULT_FUNCTION_MEMORY_MIB, MAX_FUNCTION_MEMORY_MIB)?;
        let call_timeout_ms = bounded("call_timeout_ms", DEFAULT_CALL_TIMEOUT_MS, MAX_CALL_TIMEOUT_MS)?;
        functions.insert(
            name.clone(),
            FunctionRef {
                sha256,
                size_bytes,
                language,
                memory_limit_bytes: memory_mib << 20,
                call_timeout_ms,
            },
        );
    }
    Ok(functions)
}
