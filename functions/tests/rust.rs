//! Rust functions built into components by the installed toolchain (cargo for
//! wasm32-unknown-unknown, then `jco new`; `scripts/ensure-build-deps.sh --test` installs both)
//! and run in the sandbox: every export through the guest library, a dependency from the file's
//! front matter, `println!` to the log, an `Err` and a panic that names itself.

use raftstream_functions::build::{build_component, BuildError, Language};
use raftstream_functions::{
    EventView, Events, Export, FunctionError, FunctionHost, FunctionInstance, FunctionLimits, KeyedEvents, KeyedValues,
    Strings,
};

const FRAUD: &str = r#"---
[dependencies]
serde_json = "1"
---
use serde_json::Value;

pub fn map(value: &str) -> String {
    value.to_uppercase()
}

pub fn flat_map(value: &str) -> Vec<&str> {
    value.split_whitespace().collect()
}

pub fn filter(value: &str) -> bool {
    value.len() > 3
}

pub fn key(value: &str) -> Result<String, String> {
    let transaction: Value = serde_json::from_str(value).map_err(|error| format!("not a transaction: {error}"))?;
    match transaction["account"].as_str() {
        Some(account) => Ok(account.to_owned()),
        None => panic!("a transaction without an account: {value}"),
    }
}

pub fn reduce(total: Option<&str>, value: &str, key: &str) -> String {
    println!("reduce {key} {value}");
    let transaction: Value = serde_json::from_str(value).unwrap_or_default();
    let total: f64 = total.unwrap_or("0").parse().unwrap_or(0.0);
    (total + transaction["amount"].as_f64().unwrap_or(0.0)).to_string()
}

pub fn process(key: &str, state: Option<&str>, values: &[&str]) -> (Option<String>, Vec<String>) {
    let seen = state.and_then(|seen| seen.parse::<usize>().ok()).unwrap_or(0) + values.len();
    if seen >= 3 {
        return (None, vec![format!("alert {key} after {seen}")]);
    }
    (Some(seen.to_string()), Vec::new())
}
"#;

fn event<'a>(key: &'a str, value: &'a str, timestamp_ms: i64) -> EventView<'a> {
    EventView {
        key,
        value,
        timestamp_ms,
    }
}

fn batch(events: &[EventView<'_>]) -> Events {
    events.iter().copied().collect()
}

fn texts(column: &Strings) -> Vec<&str> {
    column.iter().collect()
}

fn build(dir: &std::path::Path, name: &str, text: &str, exports: &[Export]) -> Vec<u8> {
    let source = dir.join(name);
    std::fs::write(&source, text).expect("write");
    let work = dir.join(format!("work-{name}"));
    std::fs::create_dir(&work).expect("work dir");
    match build_component(&source, &work, exports) {
        Ok(built) => {
            assert_eq!(built.language, Language::Rust);
            built.bytes
        }
        Err(error @ BuildError::ToolMissing { .. }) => {
            panic!("{error} (scripts/ensure-build-deps.sh --test installs it)")
        }
        Err(error) => panic!("building {name}: {error}"),
    }
}

#[test]
fn a_rust_file_of_plain_functions_runs_every_export() {
    let host = FunctionHost::new().expect("host");
    let dir = tempfile::tempdir().expect("temp dir");
    let bytes = build(dir.path(), "fraud.rs", FRAUD, &Export::ALL);
    let compiled = host.compile("fraud", &bytes).expect("compile");
    let mut function = FunctionInstance::new(&host, &compiled, FunctionLimits::default()).expect("instantiate");
    for export in Export::ALL {
        function.check_export(export).expect("every export is defined");
    }
    assert_eq!(
        texts(&function.map(&batch(&[event("k", "ab", 7)])).expect("map")),
        vec!["AB"]
    );
    let split = function
        .flat_map(&batch(&[event("", "to be  or", 1), event("", "", 2)]))
        .expect("flat_map");
    assert_eq!(split.outputs_of(0).collect::<Vec<_>>(), vec!["to", "be", "or"]);
    assert_eq!(split.outputs_of(1).count(), 0);
    assert_eq!(
        function
            .filter(&batch(&[event("", "long enough", 0), event("", "ab", -1)]))
            .expect("filter"),
        vec![true, false]
    );
    let transactions = [
        event("", r#"{"account":"a1","amount":5}"#, 0),
        event("", r#"{"account":"a1","amount":2.5}"#, 0),
    ];
    assert_eq!(
        texts(&function.key(&batch(&transactions)).expect("key")),
        vec!["a1", "a1"]
    );
    let mut groups = KeyedValues::default();
    groups.push_group("a1", Some("10"), [transactions[0].value, transactions[1].value]);
    groups.push_group("a2", None, [transactions[0].value]);
    let sums = function.reduce(&groups).expect("reduce");
    assert_eq!(texts(&sums), vec!["17.5", "5"]);
    let three = [event("u", "x", 1), event("u", "y", 2), event("u", "z", 3)];
    let mut groups = KeyedEvents::default();
    groups.push_group("u", None, three);
    groups.push_group("v", Some("1"), [three[0]]);
    let processed = function.process(&groups).expect("process");
    assert_eq!(processed.state_of(0), None);
    assert_eq!(
        processed.outputs_of(0).collect::<Vec<_>>(),
        vec![event("u", "alert u after 3", 3)]
    );
    assert_eq!(processed.state_of(1), Some("2"));
    assert_eq!(processed.outputs_of(1).count(), 0);

    // An Err is the export's error, with the user's message.
    let error = function.key(&batch(&[event("", "not json", 0)])).expect_err("Err");
    assert!(
        matches!(&error, FunctionError::Guest { export: "key", message, .. } if message.starts_with("not a transaction")),
        "{error}"
    );
    // A panic traps the instance; the trap carries the panic's message and place.
    let error = function
        .key(&batch(&[event("", r#"{"amount":1}"#, 0)]))
        .expect_err("panics");
    let message = error.to_string();
    assert!(
        matches!(error, FunctionError::Trap { export: "key", .. })
            && message.contains("a transaction without an account")
            && message.contains("user.rs:"),
        "{message}"
    );
    assert!(matches!(
        function.map(&batch(&[event("", "x", 0)])),
        Err(FunctionError::Poisoned { .. })
    ));
}

#[test]
fn a_rust_function_is_built_with_only_the_exports_the_job_calls() {
    let host = FunctionHost::new().expect("host");
    let dir = tempfile::tempdir().expect("temp dir");
    let text = "pub fn flat_map(line: &str) -> Vec<String> {\n    line.split(' ').map(str::to_owned).collect()\n}\n";
    let bytes = build(dir.path(), "split.rs", text, &[Export::FlatMap]);
    let compiled = host.compile("split", &bytes).expect("compile");
    let mut function = FunctionInstance::new(&host, &compiled, FunctionLimits::default()).expect("instantiate");
    function.check_export(Export::FlatMap).expect("flat_map is defined");
    let missing = function.check_export(Export::Reduce).expect_err("no reduce");
    assert!(
        matches!(&missing, FunctionError::MissingExport { export: "reduce", reason, .. } if reason.contains("defines no function reduce")),
        "{missing}"
    );

    // A job that calls a function the file does not define does not build, and rustc says why.
    let source = dir.path().join("split-again.rs");
    std::fs::write(&source, text).expect("write");
    let work = dir.path().join("work-again");
    std::fs::create_dir(&work).expect("work dir");
    let error = build_component(&source, &work, &[Export::Reduce]).expect_err("no reduce to call");
    let message = error.to_string();
    assert!(
        matches!(error, BuildError::ToolFailed { tool: "cargo", .. }) && message.contains("reduce"),
        "{message}"
    );
}

#[test]
fn a_rust_reduce_group_gets_each_keys_values_at_once_and_defining_both_reduces_is_refused() {
    let host = FunctionHost::new().expect("host");
    let dir = tempfile::tempdir().expect("temp dir");
    let grouped = "pub fn reduce_group(total: Option<&str>, values: &[&str], key: &str) -> String {\n    \
                   let sum: i64 = values.iter().map(|value| value.parse::<i64>().unwrap_or(0)).sum();\n    \
                   format!(\"{}/{}/{key}\", total.map_or(0, |total| total.parse::<i64>().unwrap_or(0)) + sum, values.len())\n}\n";
    let bytes = build(dir.path(), "grouped.rs", grouped, &[Export::Reduce]);
    let compiled = host.compile("grouped", &bytes).expect("compile");
    let mut function = FunctionInstance::new(&host, &compiled, FunctionLimits::default()).expect("instantiate");
    let mut groups = KeyedValues::default();
    groups.push_group("a", None, ["2", "3"]);
    groups.push_group("b", Some("32"), ["10"]);
    let sums = function.reduce(&groups).expect("reduce");
    assert_eq!(texts(&sums), vec!["5/2/a", "42/1/b"]);

    let both =
        format!("{grouped}\npub fn reduce(total: Option<&str>, value: &str, key: &str) -> String {{ value.into() }}\n");
    let source = dir.path().join("both.rs");
    std::fs::write(&source, both).expect("write");
    let work = dir.path().join("work-both");
    std::fs::create_dir(&work).expect("work dir");
    let error = build_component(&source, &work, &[Export::Reduce]).expect_err("ambiguous");
    assert!(error.to_string().contains("keep one"), "{error}");
}
