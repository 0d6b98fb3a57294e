//! Python functions built by componentize-py (from PyPI; `scripts/ensure-build-deps.sh --test`
//! installs it) and run in the sandbox: every export through the guest library, print() and a
//! raised exception. One build: a Python component takes seconds to build and to compile.

use raftstream_functions::build::{build_component, BuildError, Language};
use raftstream_functions::{
    EventView, Events, Export, FunctionError, FunctionHost, FunctionInstance, FunctionLimits, KeyedEvents, KeyedValues,
    Strings,
};

const FRAUD: &str = r#"
import json

def map(value):
    return value.upper()

def flat_map(value):
    return [word for word in value.split() if word]

def filter(value, event):
    return len(value) > 3 and event.timestamp_ms >= 0

def key(value):
    return json.loads(value)["account"]

def reduce(total, value, key):
    print("reduce", key, value)
    return str(float(total or 0) + float(json.loads(value)["amount"]))

def process(key, state, values):
    seen = int(state or 0) + len(values)
    if seen >= 3:
        return None, [f"alert {key} after {seen}"]
    return seen, []

def broken(value):
    return 1 / 0
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

#[test]
fn a_python_module_of_plain_functions_runs_every_export() {
    let host = FunctionHost::new().expect("host");
    let dir = tempfile::tempdir().expect("temp dir");
    let source = dir.path().join("fraud.py");
    std::fs::write(&source, FRAUD.replace("def broken", "def map_broken")).expect("write");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("work dir");
    let built = match build_component(&source, &work, &Export::ALL) {
        Ok(built) => built,
        Err(error @ BuildError::ToolMissing { .. }) => {
            panic!("{error} (scripts/ensure-build-deps.sh --test installs it)")
        }
        Err(error) => panic!("building fraud.py: {error}"),
    };
    assert_eq!(built.language, Language::Python);
    let compiled = host.compile("fraud", &built.bytes).expect("compile");
    let mut function = FunctionInstance::new(&host, &compiled, FunctionLimits::default()).expect("instantiate");
    for export in Export::ALL {
        function.check_export(export).expect("every export is defined");
    }
    let mapped = function
        .map(&batch(&[event("k", "ab", 7), event("", "grüße 😀", 0)]))
        .expect("map");
    assert_eq!(texts(&mapped), vec!["AB", "GRÜSSE 😀"]);
    let split = function
        .flat_map(&batch(&[event("", "to be  or", 1), event("", "", 2)]))
        .expect("flat_map");
    assert_eq!(split.outputs_of(0).collect::<Vec<_>>(), vec!["to", "be", "or"]);
    assert_eq!(split.outputs_of(1).count(), 0);
    assert_eq!(
        function
            .filter(&batch(&[event("", "long enough", 0), event("", "late!", -1)]))
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
    let sums = function.reduce(&groups).expect("reduce");
    assert_eq!(texts(&sums), vec!["17.5"]);
    let three = [event("u", "x", 1), event("u", "y", 2), event("u", "z", 3)];
    let mut groups = KeyedEvents::default();
    groups.push_group("u", None, three);
    let processed = function.process(&groups).expect("process");
    assert_eq!(processed.state_of(0), None);
    assert_eq!(
        processed.outputs_of(0).collect::<Vec<_>>(),
        vec![event("u", "alert u after 3", 3)]
    );

    // A Python exception is the export's error, with its type and traceback.
    let error = function.key(&batch(&[event("", "not json", 0)])).expect_err("raises");
    let message = error.to_string();
    assert!(
        matches!(error, FunctionError::Guest { export: "key", .. })
            && message.contains("JSONDecodeError")
            && message.contains("Traceback"),
        "{message}"
    );
}

#[test]
fn a_python_reduce_group_gets_each_keys_values_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = dir.path().join("grouped.py");
    std::fs::write(
        &source,
        "def reduce_group(total, values, key):\n    return f\"{int(total or 0) + sum(map(int, values))}/{len(values)}/{key}\"\n",
    )
    .expect("write");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("work dir");
    let built =
        build_component(&source, &work, &[Export::Reduce]).expect("build (scripts/ensure-build-deps.sh --test)");
    let host = FunctionHost::new().expect("host");
    let compiled = host.compile("grouped", &built.bytes).expect("compile");
    let mut function = FunctionInstance::new(&host, &compiled, FunctionLimits::default()).expect("instantiate");
    let mut groups = KeyedValues::default();
    groups.push_group("a", None, ["2", "3"]);
    groups.push_group("b", Some("32"), ["10"]);
    let sums = function.reduce(&groups).expect("reduce");
    assert_eq!(texts(&sums), vec!["5/2/a", "42/1/b"]);
}
