//! JavaScript functions built by componentize-qjs (the tool `scripts/ensure-build-deps.sh --test`
//! installs from npm) and run in the sandbox: every export through the guest library, the bad
//! components and the limits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use raftstream_functions::build::{build_component, BuildError, Language};
use raftstream_functions::{
    CompiledFunction, EventView, Events, Export, FunctionError, FunctionHost, FunctionInstance, FunctionLimits,
    KeyedEvents, KeyedValues, Strings,
};

/// Builds `source` (a user module for the guest library) as `name.js` in a temp dir.
fn build_js(host: &FunctionHost, name: &str, source: &str) -> CompiledFunction {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(format!("{name}.js"));
    std::fs::write(&path, source).expect("write source");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("work dir");
    let built = match build_component(&path, &work, &Export::ALL) {
        Ok(built) => built,
        Err(error @ BuildError::ToolMissing { .. }) => {
            panic!("{error} (scripts/ensure-build-deps.sh --test installs it)")
        }
        Err(error) => panic!("building {name}: {error}"),
    };
    assert_eq!(built.language, Language::JavaScript);
    host.compile(name, &built.bytes).expect("compile")
}

/// Builds raw JavaScript implementing the WIT exports itself (no guest library): a component
/// as another toolchain would make it.
fn build_raw_js(host: &FunctionHost, name: &str, source: &str, stub_wasi: bool) -> CompiledFunction {
    let dir = tempfile::tempdir().expect("temp dir");
    let wit = dir.path().join("stream-function.wit");
    std::fs::write(&wit, raftstream_functions::WIT).expect("write wit");
    let js = dir.path().join("raw.js");
    std::fs::write(&js, source).expect("write js");
    let out = dir.path().join("raw.wasm");
    let status = std::process::Command::new("componentize-qjs")
        .arg("--wit")
        .arg(&wit)
        .arg("--js")
        .arg(&js)
        .args(["--world", "stream-function", "--sync", "-o"])
        .arg(&out)
        .args(stub_wasi.then_some("--stub-wasi"))
        .output()
        .expect("componentize-qjs runs (scripts/ensure-build-deps.sh --test installs it)");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    host.compile(name, &std::fs::read(&out).expect("read wasm"))
        .expect("compile")
}

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

fn instance(host: &Arc<FunctionHost>, function: &CompiledFunction) -> FunctionInstance {
    FunctionInstance::new(host, function, FunctionLimits::default()).expect("instantiate")
}

const WORDS: &str = r#"
export function map(value) { return value.toUpperCase(); }
export function flatMap(value) { return value.split(/[^A-Za-z0-9]+/).filter((word) => word.length > 0); }
export function filter(value, event) { return value.length > 3 && event.timestampMs >= 0; }
export function key(value) { return JSON.parse(value).account; }
export function reduce(sum, value) { return (Number(sum ?? 0) + Number(value)).toString(); }
export function process(key, state, values) {
  const seen = Number(state ?? 0) + values.length;
  console.log("process", key, seen);
  return { state: seen >= 3 ? undefined : seen, emit: seen >= 3 ? [`alert ${key} after ${seen}`] : [] };
}
"#;

#[test]
fn every_export_runs_on_a_batch_through_the_guest_library() {
    let host = FunctionHost::new().expect("host");
    let words = build_js(&host, "words", WORDS);
    assert!(!words.sha256.is_empty() && words.compile_time > Duration::ZERO);
    let mut function = instance(&host, &words);
    for export in Export::ALL {
        function.check_export(export).expect("every export is implemented");
    }

    let mapped = function
        .map(&batch(&[
            event("k", "ab", 7),
            event("", "ü", -1),
            event("", "ß€😀x", 0),
        ]))
        .expect("map");
    assert_eq!(texts(&mapped), vec!["AB", "Ü", "SS€😀X"]);
    let split = function
        .flat_map(&batch(&[
            event("", "to be, or", 1),
            event("", "", 2),
            event("", "not", 3),
        ]))
        .expect("flat_map");
    assert_eq!(split.outputs_of(0).collect::<Vec<_>>(), vec!["to", "be", "or"]);
    assert_eq!(split.outputs_of(1).count(), 0);
    assert_eq!(split.outputs_of(2).collect::<Vec<_>>(), vec!["not"]);
    // Text that is not ASCII: the guest library maps the byte offsets to its UTF-16 indexes.
    let split = function
        .flat_map(&batch(&[event("", "grüße, 😀 zoë", 1), event("", "plain words", 2)]))
        .expect("flat_map");
    assert_eq!(texts(split.values()), vec!["gr", "e", "zo", "plain", "words"]);
    let kept = function
        .filter(&batch(&[
            event("", "long enough", 0),
            event("", "no", 0),
            event("", "late", -5),
        ]))
        .expect("filter");
    assert_eq!(kept, vec![true, false, false]);
    let keys = function
        .key(&batch(&[
            event("", r#"{"account":"a1","amount":5}"#, 0),
            event("", r#"{"account":7}"#, 0),
        ]))
        .expect("key");
    assert_eq!(texts(&keys), vec!["a1", "7"]);

    let mut groups = KeyedValues::default();
    groups.push_group("a", None, ["2", "3"]);
    groups.push_group("b", Some("32"), ["10"]);
    let sums = function.reduce(&groups).expect("reduce");
    assert_eq!(texts(&sums), vec!["5", "42"]);

    let mut groups = KeyedEvents::default();
    groups.push_group("u", None, [event("u", "x", 5), event("u", "y", 6)]);
    let processed = function.process(&groups).expect("process");
    assert_eq!(processed.state_of(0), Some("2"));
    assert_eq!(processed.outputs_of(0).count(), 0);
    let mut groups = KeyedEvents::default();
    groups.push_group("u", Some("2"), [event("u", "z", 9)]);
    let processed = function.process(&groups).expect("process");
    assert_eq!(processed.state_of(0), None, "the state is cleared after the alert");
    assert_eq!(
        processed.outputs_of(0).collect::<Vec<_>>(),
        vec![event("u", "alert u after 3", 9)]
    );
}

#[test]
fn a_reduce_group_gets_each_keys_values_at_once_and_defining_both_reduces_is_refused() {
    let host = FunctionHost::new().expect("host");
    let grouped = build_js(
        &host,
        "grouped",
        r#"export function reduceGroup(sum, values, key) {
  return `${Number(sum ?? 0) + values.reduce((total, value) => total + Number(value), 0)}/${values.length}/${key}`;
}"#,
    );
    let mut function = instance(&host, &grouped);
    let mut groups = KeyedValues::default();
    groups.push_group("a", None, ["2", "3"]);
    groups.push_group("b", Some("32"), ["10"]);
    let sums = function.reduce(&groups).expect("reduce");
    assert_eq!(texts(&sums), vec!["5/2/a", "42/1/b"]);

    let both = build_js(
        &host,
        "both",
        "export function reduce(sum, value) { return value; }\nexport function reduceGroup(sum, values) { return values[0]; }",
    );
    let error = instance(&host, &both).reduce(&groups).expect_err("ambiguous");
    assert!(
        matches!(&error, FunctionError::Guest { export: "reduce", message, .. } if message.contains("keep one")),
        "{error}"
    );
}

#[test]
fn a_missing_export_a_guest_error_and_a_trap_name_the_function() {
    let host = FunctionHost::new().expect("host");
    let only_map = build_js(
        &host,
        "only_map",
        r#"export function map(value) { if (value === "bad") throw new Error("cannot map bad"); return value; }"#,
    );
    let mut function = instance(&host, &only_map);
    function.check_export(Export::Map).expect("map is there");
    let missing = function.check_export(Export::Filter).expect_err("no filter");
    assert!(
        matches!(&missing, FunctionError::MissingExport { export: "filter", reason, .. } if reason.contains("no function filter")),
        "{missing}"
    );
    let failed = function
        .map(&batch(&[event("", "ok", 0), event("", "bad", 0)]))
        .expect_err("throws");
    let message = failed.to_string();
    assert!(
        message.starts_with("only_map.map: ") && message.contains("cannot map bad"),
        "{message}"
    );
    // A guest error is an answer, not a trap: the instance still works.
    assert_eq!(
        function
            .map(&batch(&[event("", "ok", 0)]))
            .expect("still callable")
            .len(),
        1
    );
}

#[test]
fn a_component_that_answers_too_few_or_malformed_or_imports_wasi_is_refused() {
    let host = FunctionHost::new().expect("host");
    let short = build_raw_js(
        &host,
        "short",
        r#"export function filter(batch) { return new Uint8Array(batch.values.ends.length / 4 - 1).fill(1); }"#,
        true,
    );
    let mut function = instance(&host, &short);
    let error = function
        .filter(&batch(&[event("", "a", 0), event("", "b", 0)]))
        .expect_err("one answer short");
    assert!(
        matches!(
            error,
            FunctionError::AnswerCount {
                expected: 2,
                returned: 1,
                ..
            }
        ),
        "{error}"
    );
    // Offsets past the text, or inside a character, are refused before anyone reads them.
    let lying = build_raw_js(
        &host,
        "lying",
        r#"export function map(batch) { return { data: batch.values.data, ends: new Uint8Array([3, 0, 0, 0]) }; }
           export function key(batch) { return { data: "ü", ends: new Uint8Array([1, 0, 0, 0]) }; }"#,
        true,
    );
    let mut function = instance(&host, &lying);
    let error = function.map(&batch(&[event("", "ab", 0)])).expect_err("past the text");
    assert!(
        matches!(&error, FunctionError::MalformedAnswer { export: "map", problem, .. } if problem.contains("string 0 ends at byte 3, outside 0..=2")),
        "{error}"
    );
    let error = function
        .key(&batch(&[event("", "ab", 0)]))
        .expect_err("inside a character");
    assert!(error.to_string().contains("inside a character"), "{error}");

    // Without --stub-wasi the component imports WASI, which the sandbox does not provide.
    let with_wasi = build_raw_js(
        &host,
        "with_wasi",
        "export function map(batch) { return batch.values; }",
        false,
    );
    let error = FunctionInstance::new(&host, &with_wasi, FunctionLimits::default())
        .err()
        .expect("refused");
    let message = error.to_string();
    assert!(
        matches!(error, FunctionError::Instantiate { .. }) && message.contains("wasi"),
        "{message}"
    );
}

#[test]
fn an_endless_loop_is_stopped_within_twice_the_deadline() {
    let host = FunctionHost::new().expect("host");
    let spin = build_js(&host, "spin", r#"export function map(value) { for (;;) {} }"#);
    let limits = FunctionLimits {
        call_timeout: Duration::from_millis(300),
        ..FunctionLimits::default()
    };
    let mut function = FunctionInstance::new(&host, &spin, limits).expect("instantiate");
    let started = Instant::now();
    let error = function.map(&batch(&[event("", "x", 0)])).expect_err("stopped");
    let took = started.elapsed();
    assert!(
        matches!(error, FunctionError::Deadline { timeout_ms: 300, .. }),
        "{error}"
    );
    assert!(took < Duration::from_millis(600), "stopped after {took:?}");
    let again = function.map(&batch(&[event("", "x", 0)])).expect_err("poisoned");
    assert!(matches!(again, FunctionError::Poisoned { .. }), "{again}");
}

#[test]
fn a_memory_bomb_is_stopped_at_the_limit() {
    let host = FunctionHost::new().expect("host");
    let bomb = build_js(
        &host,
        "bomb",
        r#"export function map(value) { const hoard = []; for (;;) { hoard.push(new Array(1 << 16).fill(value)); } }"#,
    );
    let limits = FunctionLimits {
        memory_bytes: 32 << 20,
        ..FunctionLimits::default()
    };
    let mut function = FunctionInstance::new(&host, &bomb, limits).expect("instantiate");
    let error = function.map(&batch(&[event("", "x", 0)])).expect_err("stopped");
    assert!(
        matches!(error, FunctionError::MemoryLimit { limit_bytes, .. } if limit_bytes == 32 << 20),
        "{error}"
    );
}

#[test]
fn a_second_load_compiles_nothing_and_a_damaged_cache_file_is_replaced() {
    let host = FunctionHost::new().expect("host");
    let dir = tempfile::tempdir().expect("temp dir");
    let source = dir.path().join("upper.js");
    std::fs::write(&source, "export function map(value) { return value.toUpperCase(); }").expect("write");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("work dir");
    let bytes = build_component(&source, &work, &Export::ALL).expect("build").bytes;
    let sha256 = raftstream_functions::sha256_hex(&bytes);
    let cache = raftstream_functions::CompiledCache::open(&dir.path().join("cache")).expect("cache");

    let first = cache
        .load_or_compile(&host, "upper", &sha256, || Ok(bytes.clone()))
        .expect("compiled");
    assert!(!first.from_cache);
    assert_eq!(host.compiles(), 1);
    let second = cache
        .load_or_compile(&host, "upper", &sha256, || panic!("the bytes are not needed"))
        .expect("cached");
    assert!(second.from_cache);
    assert_eq!(host.compiles(), 1, "the second load compiled nothing");
    let mut function = instance(&host, &second);
    assert_eq!(
        texts(&function.map(&batch(&[event("", "ok", 0)])).expect("map")),
        vec!["OK"]
    );

    // Flip a byte of the compiled code: the checksum catches it and the function is compiled again.
    let file = std::fs::read_dir(dir.path().join("cache"))
        .expect("list")
        .map(|entry| entry.expect("entry").path())
        .find(|path| path.extension().is_some_and(|extension| extension == "cwasm"))
        .expect("a cache file");
    let mut damaged = std::fs::read(&file).expect("read");
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&file, damaged).expect("damage");
    let third = cache
        .load_or_compile(&host, "upper", &sha256, || Ok(bytes.clone()))
        .expect("recompiled");
    assert!(!third.from_cache);
    assert_eq!(host.compiles(), 2);
    let mut function = instance(&host, &third);
    assert_eq!(
        texts(&function.map(&batch(&[event("", "ok", 0)])).expect("map")),
        vec!["OK"]
    );
}
