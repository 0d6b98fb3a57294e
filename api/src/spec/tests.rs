use super::*;

const WORD_COUNT: &str = include_str!("../../../examples/wordcount.yaml");

fn error_of(text: &str) -> String {
    match parse_job_spec(text) {
        Ok(graph) => panic!("spec was accepted: {graph:?}"),
        Err(error) => error.to_string(),
    }
}

fn word_count_with(from: &str, to: &str) -> String {
    assert!(WORD_COUNT.contains(from), "example spec lacks {from:?}");
    WORD_COUNT.replacen(from, to, 1)
}

#[test]
fn example_word_count_is_valid() {
    let graph = parse_job_spec(WORD_COUNT).expect("example spec is valid");
    assert_eq!(graph.name, "word-count");
    assert_eq!(graph.operators.len(), 5);
    assert_eq!(graph.operator("counts").map(|operator| operator.parallelism), Some(2));
    assert_eq!(graph.operator("lines").map(|operator| operator.parallelism), Some(1));
    assert_eq!(graph.total_subtasks(), 1 + 2 + 2 + 2 + 1);
    assert_eq!(graph.max_parallelism, DEFAULT_MAX_PARALLELISM);
}

#[test]
fn json_and_yaml_give_the_same_graph() {
    let yaml_graph = parse_job_spec(WORD_COUNT).expect("yaml");
    let as_json = serde_json::to_string(&serde_yaml::from_str::<Value>(WORD_COUNT).expect("yaml value")).expect("json");
    assert_eq!(parse_job_spec(&as_json).expect("json"), yaml_graph);
}

#[test]
fn unknown_operator_kind_names_operator_and_kind() {
    let message = error_of(&word_count_with("kind: count", "kind: countt"));
    assert!(
        message.contains("\"counts\"") && message.contains("kind") && message.contains("countt"),
        "{message}"
    );
}

#[test]
fn missing_input_names_operator() {
    let message = error_of(&word_count_with("    inputs: [words]\n", ""));
    assert!(
        message.contains("\"by_word\"") && message.contains("inputs") && message.contains("missing"),
        "{message}"
    );
}

#[test]
fn dangling_input_names_the_unknown_operator() {
    let message = error_of(&word_count_with("inputs: [words]", "inputs: [wordz]"));
    assert!(
        message.contains("\"by_word\"") && message.contains("unknown operator \"wordz\""),
        "{message}"
    );
}

#[test]
fn cycle_is_rejected_with_its_operators() {
    let spec = r#"{"name": "loop", "operators": [
        {"id": "src", "kind": "generator"},
        {"id": "a", "kind": "map", "inputs": ["src", "b"], "params": {"function": "identity"}},
        {"id": "b", "kind": "map", "inputs": ["a"], "params": {"function": "identity"}},
        {"id": "out", "kind": "print", "inputs": ["b"]}]}"#;
    let message = error_of(spec);
    assert!(
        message.contains("cycle") && message.contains("\"a\"") && message.contains("\"b\""),
        "{message}"
    );
}

#[test]
fn duplicate_operator_id_is_rejected() {
    let message = error_of(&word_count_with("id: by_word", "id: words"));
    assert!(
        message.contains("\"words\"") && message.contains("duplicate operator id"),
        "{message}"
    );
}

#[test]
fn parallelism_zero_and_above_maximum_are_rejected() {
    let zero = error_of(&word_count_with(
        "parallelism: 1\n    params: { seed",
        "parallelism: 0\n    params: { seed",
    ));
    assert!(
        zero.contains("\"lines\"") && zero.contains("parallelism") && zero.contains("is 0"),
        "{zero}"
    );
    let above = error_of(&word_count_with(
        "parallelism: 1\n    params: { seed",
        "parallelism: 129\n    params: { seed",
    ));
    assert!(
        above.contains("\"lines\"") && above.contains("between 1 and 128"),
        "{above}"
    );
    let job_level = error_of(&word_count_with("parallelism: 2", "parallelism: 0"));
    assert!(job_level.contains("job spec: parallelism"), "{job_level}");
}

#[test]
fn unknown_parameter_names_operator_and_parameter() {
    let message = error_of(&word_count_with(
        "function: split_words",
        "function: split_words, color: red",
    ));
    assert!(
        message.contains("\"words\"") && message.contains("params.color") && message.contains("unknown parameter"),
        "{message}"
    );
}

#[test]
fn wrong_parameter_value_and_missing_required_parameter() {
    let message = error_of(&word_count_with("function: split_words", "function: juggle"));
    assert!(
        message.contains("params.function") && message.contains("juggle"),
        "{message}"
    );
    let message = error_of(&word_count_with("    params: { path: wordcount-out }\n", ""));
    assert!(
        message.contains("\"out\"") && message.contains("params.path") && message.contains("missing"),
        "{message}"
    );
}

#[test]
fn unknown_fields_are_rejected_at_every_level() {
    let message = error_of(&format!("{WORD_COUNT}\nowner: me\n"));
    assert!(
        message.contains("owner") && message.contains("unknown field"),
        "{message}"
    );
    let message = error_of(&word_count_with(
        "    kind: count\n",
        "    kind: count\n    paralelism: 3\n",
    ));
    assert!(
        message.contains("\"counts\"") && message.contains("paralelism"),
        "{message}"
    );
}

#[test]
fn oversized_spec_is_rejected_before_parsing() {
    let huge = format!("{WORD_COUNT}\n#{}", "x".repeat(MAX_SPEC_BYTES));
    let message = error_of(&huge);
    assert!(message.contains("above the limit"), "{message}");
}

#[test]
fn text_that_is_not_yaml_or_json_is_rejected() {
    let message = error_of("{ this is: [not json");
    assert!(message.contains("neither valid YAML nor JSON"), "{message}");
    let message = error_of("name: [unclosed\n  - x: {");
    assert!(message.contains("neither valid YAML nor JSON"), "{message}");
    let message = error_of("just some words");
    assert!(message.contains("must be a mapping"), "{message}");
    assert_eq!(error_of("  \n"), "job spec is empty");
}

#[test]
fn keyed_operators_need_key_by_and_sinks_have_no_output() {
    let message = error_of(&word_count_with("inputs: [by_word]", "inputs: [words]"));
    assert!(
        message.contains("\"counts\"") && message.contains("key_by"),
        "{message}"
    );
    let spec = r#"{"name": "x", "operators": [
        {"id": "src", "kind": "generator"},
        {"id": "out", "kind": "print", "inputs": ["src"]},
        {"id": "after", "kind": "print", "inputs": ["out"]}]}"#;
    let message = error_of(spec);
    assert!(
        message.contains("\"after\"") && message.contains("is a sink"),
        "{message}"
    );
}

#[test]
fn source_with_inputs_and_job_without_sink_are_rejected() {
    let message = error_of(r#"{"name": "x", "operators": [{"id": "src", "kind": "generator"}]}"#);
    assert!(message.contains("no sink"), "{message}");
    let message = error_of(&word_count_with(
        "kind: generator",
        "kind: generator\n    inputs: [words]",
    ));
    assert!(
        message.contains("\"lines\"") && message.contains("takes no inputs"),
        "{message}"
    );
}

fn one_operator(kind: &str, params: &str) -> String {
    format!(
        r#"{{"name": "typed", "operators": [
            {{"id": "lines", "kind": "generator"}},
            {{"id": "op", "kind": "{kind}", "inputs": ["lines"], "params": {params}}},
            {{"id": "out", "kind": "print", "inputs": ["op"]}}]}}"#
    )
}

#[test]
fn parameters_are_read_once_into_typed_configuration_with_defaults() {
    let graph = parse_job_spec(&one_operator("filter", r#"{"field": "n", "op": "ge", "value": 10}"#)).expect("valid");
    let filter = graph.operator("op").expect("the filter");
    assert_eq!(
        filter.config,
        OperatorConfig::Filter(FilterConfig {
            field: Some("n".into()),
            op: CompareOp::Ge,
            value: "10".into(),
        })
    );
    let source = graph.operator("lines").expect("the source");
    assert_eq!(source.config, OperatorConfig::Generator(GeneratorConfig::default()));
    let graph = parse_job_spec(&one_operator("flat_map", r#"{"function": "split", "delimiter": ";"}"#)).expect("valid");
    assert_eq!(
        graph.operator("op").map(|operator| &operator.config),
        Some(&OperatorConfig::FlatMap(FlatMapFunction::Split {
            delimiter: ";".into()
        }))
    );
}

#[test]
fn a_function_missing_its_fields_is_rejected_at_submit_naming_the_field() {
    let error = error_of(&one_operator("map", r#"{"function": "project"}"#));
    assert!(
        error.contains("\"op\"") && error.contains("params.fields") && error.contains("project needs the list"),
        "{error}"
    );
}

#[test]
fn a_stored_graph_reads_back_with_the_same_configuration() {
    let graph = parse_job_spec(&one_operator(
        "map",
        r#"{"function": "parse_csv", "fields": ["a", "b"]}"#,
    ))
    .expect("valid");
    let stored = serde_json::to_string(&graph).expect("serializes");
    assert!(
        !stored.contains("config"),
        "the stored form is what the user wrote: {stored}"
    );
    let read_back: JobGraph = serde_json::from_str(&stored).expect("reads back");
    assert_eq!(read_back, graph);
    let tampered = stored.replace(r#""function":"parse_csv""#, r#""function":"explode""#);
    let refused = serde_json::from_str::<JobGraph>(&tampered)
        .map(|_| ())
        .expect_err("an unknown function");
    assert!(refused.to_string().contains("params.function"), "{refused}");
}

#[test]
fn rescaling_changes_only_the_named_operators_and_refuses_what_cannot_be() {
    let graph = parse_job_spec(
        r#"{"name": "r", "parallelism": 2, "max_parallelism": 8, "operators": [
            {"id": "src", "kind": "generator"},
            {"id": "keys", "kind": "key_by", "inputs": ["src"]},
            {"id": "counts", "kind": "count", "inputs": ["keys"]},
            {"id": "out", "kind": "print", "inputs": ["counts"], "parallelism": 1}]}"#,
    )
    .expect("valid");
    let counts_at_4 = graph.rescaled(Some("counts"), 4).expect("rescaled");
    let parallelism = |graph: &JobGraph, id: &str| graph.operator(id).map(|operator| operator.parallelism);
    assert_eq!(parallelism(&counts_at_4, "counts"), Some(4));
    assert_eq!(parallelism(&counts_at_4, "src"), Some(2));
    let whole = graph.rescaled(None, 3).expect("rescaled");
    assert!(whole.operators.iter().all(|operator| operator.parallelism == 3));

    assert_eq!(graph.rescaled(None, 0), Err(RescaleError::ZeroParallelism));
    let above = graph.rescaled(Some("counts"), 9).expect_err("above max");
    assert!(above.to_string().contains("max_parallelism of 8"), "{above}");
    let unknown = graph.rescaled(Some("nope"), 2).expect_err("unknown");
    assert!(
        unknown.to_string().contains("\"nope\"") && unknown.to_string().contains("src, keys, counts, out"),
        "{unknown}"
    );
    assert_eq!(
        graph.rescaled(Some("src"), 2),
        Err(RescaleError::Unchanged { parallelism: 2 })
    );

    let files = parse_job_spec(
        r#"{"name": "f", "operators": [
            {"id": "lines", "kind": "file_source", "params": {"path": "in"}},
            {"id": "out", "kind": "print", "inputs": ["lines"]}]}"#,
    )
    .expect("valid");
    assert_eq!(
        parallelism(&files.rescaled(None, 2).expect("rescaled"), "lines"),
        Some(2)
    );
    assert_eq!(
        parallelism(&files.rescaled(Some("out"), 2).expect("rescaled"), "out"),
        Some(2)
    );
}

#[test]
fn automatic_parallelism_is_read_bounded_and_chosen_for_the_free_slots() {
    let graph = parse_job_spec(
        r#"{"name": "a", "parallelism": "auto", "max_parallelism": 16, "autoscale": {"stabilization_ms": 500},
            "operators": [
            {"id": "src", "kind": "generator", "parallelism": 1},
            {"id": "keys", "kind": "key_by", "inputs": ["src"]},
            {"id": "counts", "kind": "count", "inputs": ["keys"], "parallelism": {"min": 2, "max": 4}},
            {"id": "out", "kind": "print", "inputs": ["counts"], "parallelism": 1}]}"#,
    )
    .expect("valid");
    let parallelism = |graph: &JobGraph, id: &str| graph.operator(id).map(|operator| operator.parallelism);
    assert!(graph.is_auto());
    assert_eq!(graph.autoscale.stabilization_ms, 500);
    let auto = |id: &str| graph.operator(id).and_then(|operator| operator.auto);
    assert_eq!(auto("keys"), Some(AutoParallelism { min: 1, max: 16 }));
    assert_eq!(auto("counts"), Some(AutoParallelism { min: 2, max: 4 }));
    assert_eq!(auto("src"), None);
    // Until submitted, an automatic operator is at its minimum.
    assert_eq!(parallelism(&graph, "counts"), Some(2));
    // One sharing group: the job takes max(1, p, clamp(p, 2, 4), 1) slots.
    assert_eq!(graph.auto_parallelism_for(6), Some(6));
    assert_eq!(graph.auto_parallelism_for(9), Some(9));
    assert_eq!(graph.auto_parallelism_for(40), Some(16), "at most max_parallelism");
    assert_eq!(
        graph.auto_parallelism_for(2),
        Some(2),
        "counts at its minimum of 2 sets the need"
    );
    assert_eq!(graph.auto_parallelism_for(1), Some(1), "nothing fits: the lowest");
    // Stored before slot sharing: 2 fixed subtasks, keys at p and counts at clamp(p, 2, 4).
    let mut per_subtask = graph.clone();
    per_subtask.slot_sharing = false;
    assert_eq!(per_subtask.auto_parallelism_for(6), Some(2));
    assert_eq!(per_subtask.auto_parallelism_for(12), Some(6));
    let at_6 = graph.with_auto_parallelism(6);
    assert_eq!(
        (parallelism(&at_6, "keys"), parallelism(&at_6, "counts")),
        (Some(6), Some(4))
    );
    assert_eq!(parallelism(&at_6, "src"), Some(1));
    // Stored and read back as written.
    let stored = serde_json::to_string(&graph).expect("serializes");
    assert_eq!(serde_json::from_str::<JobGraph>(&stored).expect("reads back"), graph);
    let fixed = parse_job_spec(r#"{"name": "f", "operators": [{"id": "src", "kind": "generator"}, {"id": "out", "kind": "print", "inputs": ["src"]}]}"#).expect("valid");
    assert!(!fixed.is_auto() && fixed.auto_parallelism_for(100).is_none());
    assert!(!serde_json::to_string(&fixed).expect("serializes").contains("autoscale"));

    for (spec, expected) in [
        (
            r#"{"name": "x", "parallelism": "many", "operators": [{"id": "s", "kind": "generator"}]}"#,
            "\"many\" is not a parallelism",
        ),
        (
            r#"{"name": "x", "operators": [{"id": "s", "kind": "generator", "parallelism": {"min": 3, "max": 2}}]}"#,
            "operator \"s\": parallelism: min 3 is above max 2",
        ),
        (
            r#"{"name": "x", "operators": [{"id": "s", "kind": "generator", "parallelism": {"least": 3}}]}"#,
            "unknown field \"least\"",
        ),
        (
            r#"{"name": "x", "operators": [{"id": "s", "kind": "generator", "parallelism": {"max": 500}}]}"#,
            "max is 500, must be between 1 and 128",
        ),
        (
            r#"{"name": "x", "autoscale": {"stabilization_ms": -1}, "operators": [{"id": "s", "kind": "generator"}]}"#,
            "autoscale.stabilization_ms",
        ),
        (
            r#"{"name": "x", "autoscale": {"delay": 1}, "operators": [{"id": "s", "kind": "generator"}]}"#,
            "autoscale.delay",
        ),
    ] {
        let error = parse_job_spec(spec).expect_err(spec).to_string();
        assert!(error.contains(expected), "{error}\nexpected: {expected}");
    }
}

fn checkpoint_of(checkpoint: &str) -> Result<CheckpointConfig, String> {
    let spec = format!(
        r#"{{"name": "x", "checkpoint": {checkpoint}, "operators": [
            {{"id": "s", "kind": "generator"}}, {{"id": "o", "kind": "print", "inputs": ["s"]}}]}}"#
    );
    parse_job_spec(&spec)
        .map(|graph| graph.checkpoint)
        .map_err(|error| error.to_string())
}

#[test]
fn checkpoints_may_be_bounded_by_records_and_bytes() {
    let config =
        checkpoint_of(r#"{"interval_ms": 1000, "max_records": 100000, "max_bytes": "64MiB", "min_pause_ms": 100}"#)
            .expect("valid");
    assert_eq!(
        (config.max_records, config.max_bytes, config.min_pause_ms),
        (Some(100_000), Some(64 << 20), 100)
    );
    for (bytes, expected) in [
        ("65536", 65_536),
        (r#""512 KiB""#, 512 << 10),
        (r#""1GB""#, 1_000_000_000),
        (r#""7B""#, 7),
    ] {
        let config = checkpoint_of(&format!(r#"{{"max_bytes": {bytes}}}"#)).expect("valid");
        assert_eq!(config.max_bytes, Some(expected), "{bytes}");
    }
    // Volume alone triggers checkpoints too.
    let volume_only = checkpoint_of(r#"{"interval_ms": 0, "max_records": 10, "retained": 2}"#).expect("valid");
    assert!(volume_only.is_enabled());
    // A config without the new fields is stored as before.
    let plain = checkpoint_of(r#"{"interval_ms": 500}"#).expect("valid");
    assert_eq!(
        serde_json::to_string(&plain).expect("serializes"),
        r#"{"interval_ms":500,"timeout_ms":60000,"retained":3}"#
    );
}

#[test]
fn bad_checkpoint_bounds_name_the_field() {
    for (checkpoint, expected) in [
        (r#"{"max_records": 0}"#, "checkpoint.max_records"),
        (
            r#"{"max_records": "many"}"#,
            "checkpoint.max_records: must be a whole number",
        ),
        (r#"{"max_bytes": 0}"#, "checkpoint.max_bytes"),
        (
            r#"{"max_bytes": "0MiB"}"#,
            "checkpoint.max_bytes: must be at least 1 byte",
        ),
        (r#"{"max_bytes": "64 parsecs"}"#, "unknown unit \"parsecs\""),
        (r#"{"max_bytes": "lots"}"#, "is not a size"),
        (r#"{"max_bytes": true}"#, "checkpoint.max_bytes: must be a size"),
        (
            r#"{"interval_ms": 100, "min_pause_ms": 500}"#,
            "checkpoint.min_pause_ms: 500 is above interval_ms 100",
        ),
        (
            r#"{"interval_ms": 0, "retained": 2}"#,
            "checkpoint.retained: keeps checkpoints, but every trigger is off",
        ),
        (r#"{"max_rows": 5}"#, "max_rows"),
    ] {
        let error = checkpoint_of(checkpoint).expect_err(checkpoint);
        assert!(error.contains(expected), "{checkpoint}: {error}");
    }
}

#[test]
fn exchanges_are_operator_kinds_and_a_salted_key_by_is_read_with_its_salts() {
    for kind in ["rebalance", "rescale", "broadcast"] {
        let graph = parse_job_spec(&one_operator(kind, "{}")).expect("valid");
        assert_eq!(
            graph.operator("op").map(|op| &op.config),
            Some(&OperatorConfig::Exchange)
        );
        let error = error_of(&one_operator(kind, r#"{"field": "user"}"#));
        assert!(error.contains("\"op\"") && error.contains("field"), "{error}");
    }
    let graph = parse_job_spec(&one_operator("key_by", r#"{"hash": "salted", "salts": 4}"#)).expect("valid");
    assert_eq!(
        graph.operator("op").map(|op| &op.config),
        Some(&OperatorConfig::KeyBy {
            field: None,
            hash: KeyHash::Salted { salts: Some(4) }
        })
    );
}

#[test]
fn bad_key_by_hashes_name_the_operator_and_field() {
    let error = error_of(&one_operator("key_by", r#"{"hash": "random"}"#));
    assert!(
        error.contains("\"op\"") && error.contains("hash") && error.contains("random"),
        "{error}"
    );
    let error = error_of(&one_operator("key_by", r#"{"salts": 4}"#));
    assert!(
        error.contains("\"op\"") && error.contains("params.salts") && error.contains("salted"),
        "{error}"
    );
    let error = error_of(&one_operator("key_by", r#"{"hash": "salted", "salts": 1}"#));
    assert!(error.contains("\"op\"") && error.contains("salts"), "{error}");
    // A keyed aggregate behind a salted key_by would count each key in several places.
    let error = error_of(&word_count_with(
        "    inputs: [words]\n",
        "    inputs: [words]\n    params: { hash: salted }\n",
    ));
    assert!(error.contains("\"counts\"") && error.contains("salted"), "{error}");
}

#[test]
fn two_phase_aggregates_are_read_with_their_flush_bounds() {
    let spec = word_count_with(
        "kind: count",
        "kind: count\n    params: { two_phase: true, flush_ms: 50 }",
    );
    let graph = parse_job_spec(&spec).expect("valid");
    assert_eq!(
        graph.operator("counts").and_then(|op| op.config.two_phase()),
        Some(PreAggregation {
            flush_ms: 50,
            flush_records: PreAggregation::DEFAULT_FLUSH_RECORDS
        })
    );
    let window = one_operator(
        "key_by",
        "{}",
    )
    .replace(
        r#"{"id": "out", "kind": "print", "inputs": ["op"]}"#,
        r#"{"id": "w", "kind": "sliding_window", "inputs": ["op"], "params": {"size_ms": 1000, "slide_ms": 250, "aggregate": "sum", "two_phase": true, "flush_records": 7}},
           {"id": "out", "kind": "print", "inputs": ["w"]}"#,
    );
    let graph = parse_job_spec(&window).expect("valid");
    assert_eq!(
        graph
            .operator("w")
            .and_then(|op| op.config.two_phase())
            .map(|pre| pre.flush_records),
        Some(7)
    );
    let one_phase = parse_job_spec(WORD_COUNT).expect("valid");
    assert_eq!(one_phase.operator("counts").and_then(|op| op.config.two_phase()), None);
}

#[test]
fn bad_two_phase_parameters_name_the_operator_and_field() {
    let with = |params: &str| {
        error_of(&word_count_with(
            "kind: count",
            &format!("kind: count\n    params: {params}"),
        ))
    };
    let error = with("{ two_phase: \"yes\" }");
    assert!(
        error.contains("\"counts\"") && error.contains("params.two_phase") && error.contains("\"auto\""),
        "{error}"
    );
    let error = with("{ flush_ms: 10 }");
    assert!(
        error.contains("\"counts\"") && error.contains("params.flush_ms") && error.contains("two_phase"),
        "{error}"
    );
    let error = with("{ two_phase: true, flush_records: 0 }");
    assert!(
        error.contains("\"counts\"") && error.contains("params.flush_records"),
        "{error}"
    );
    let error = error_of(&word_count_with(
        "kind: count",
        "kind: reduce\n    params: { function: concat, two_phase: true }",
    ));
    assert!(
        error.contains("\"counts\"") && error.contains("params.two_phase") && error.contains("concat"),
        "{error}"
    );
}

#[test]
fn two_phase_auto_waits_for_skew_and_switches_for_good() {
    let spec = word_count_with(
        "kind: count",
        "kind: count\n    params: { two_phase: auto, skew_factor: 1.5, flush_ms: 20 }",
    );
    let graph = parse_job_spec(&spec).expect("valid");
    let counts = graph.operator("counts").expect("counts");
    assert_eq!(
        counts.config.two_phase_mode(),
        TwoPhase::Auto {
            pre_aggregation: PreAggregation {
                flush_ms: 20,
                flush_records: PreAggregation::DEFAULT_FLUSH_RECORDS
            },
            skew_percent: 150
        }
    );
    assert_eq!(counts.config.two_phase(), None, "one phase until switched");
    let switched = graph.with_two_phase_on("counts").expect("switches");
    let counts = switched.operator("counts").expect("counts");
    assert_eq!(counts.config.two_phase().map(|pre| pre.flush_ms), Some(20));
    assert_eq!(counts.params.get("two_phase"), Some(&Value::Bool(true)));
    assert!(!counts.params.contains_key("skew_factor"));
    // Once on, or never auto: nothing to switch.
    assert!(switched.with_two_phase_on("counts").is_err());
    assert!(graph.with_two_phase_on("by_word").is_err());
    assert!(graph.with_two_phase_on("nothing").is_err());
    let default_factor = parse_job_spec(&word_count_with(
        "kind: count",
        "kind: count\n    params: { two_phase: auto }",
    ))
    .expect("valid");
    assert!(matches!(
        default_factor.operator("counts").map(|op| op.config.two_phase_mode()),
        Some(TwoPhase::Auto { skew_percent: 200, .. })
    ));
}

#[test]
fn a_skew_factor_needs_two_phase_auto_and_must_exceed_one() {
    let with = |params: &str| {
        error_of(&word_count_with(
            "kind: count",
            &format!("kind: count\n    params: {params}"),
        ))
    };
    let error = with("{ skew_factor: 3 }");
    assert!(
        error.contains("\"counts\"") && error.contains("params.skew_factor") && error.contains("auto"),
        "{error}"
    );
    let error = with("{ two_phase: true, skew_factor: 3 }");
    assert!(error.contains("params.skew_factor"), "{error}");
    let error = with("{ two_phase: auto, skew_factor: 1 }");
    assert!(
        error.contains("params.skew_factor") && error.contains("above 1"),
        "{error}"
    );
    let error = with("{ two_phase: auto, skew_factor: fast }");
    assert!(error.contains("params.skew_factor"), "{error}");
}

#[test]
fn a_hot_word_share_is_a_percentage_of_a_random_stream() {
    let graph = parse_job_spec(&word_count_with(
        "words_per_record: 8 }",
        "words_per_record: 8, hot_word_percent: 90 }",
    ))
    .expect("valid");
    assert!(matches!(
        graph.operator("lines").map(|op| &op.config),
        Some(OperatorConfig::Generator(GeneratorConfig {
            hot_word_percent: 90,
            ..
        }))
    ));
    let error = error_of(&word_count_with(
        "words_per_record: 8 }",
        "words_per_record: 8, hot_word_percent: 101 }",
    ));
    assert!(
        error.contains("\"lines\"") && error.contains("params.hot_word_percent") && error.contains("100"),
        "{error}"
    );
    let error = error_of(&word_count_with(
        "words_per_record: 8 }",
        "words_per_record: 8, hot_word_percent: 50, word_order: sequential }",
    ));
    assert!(
        error.contains("params.hot_word_percent") && error.contains("random"),
        "{error}"
    );
}

const SHA_A: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn udf_spec(functions: &str, operators: &str) -> String {
    format!(
        "name: udf\nfunctions:\n{functions}\noperators:\n  - {{id: src, kind: generator}}\n{operators}  - {{id: out, kind: print, inputs: [last]}}\n"
    )
}

#[test]
fn user_functions_are_named_in_the_spec_and_called_by_operators() {
    let spec = udf_spec(
        &format!("  words: {{sha256: {SHA_A}, size_bytes: 1000, language: javascript, call_timeout_ms: 200}}"),
        "  - {id: split, kind: flat_map, inputs: [src], params: {udf: words}}\n  - {id: keyed, kind: key_by, inputs: [split], params: {udf: words}}\n  - {id: last, kind: reduce, inputs: [keyed], params: {udf: words}}\n",
    );
    let graph = parse_job_spec(&spec).expect("valid");
    let words = &graph.functions["words"];
    assert_eq!(
        (words.size_bytes, words.language.as_str(), words.call_timeout_ms),
        (1000, "javascript", 200)
    );
    assert_eq!(words.memory_limit_bytes, DEFAULT_FUNCTION_MEMORY_MIB << 20);
    let exports: Vec<Option<UdfExport>> = graph
        .operators
        .iter()
        .map(|operator| match &operator.config {
            OperatorConfig::Udf(call) => Some(call.export),
            _ => None,
        })
        .collect();
    assert_eq!(
        exports,
        vec![
            None,
            Some(UdfExport::FlatMap),
            Some(UdfExport::Key),
            Some(UdfExport::Reduce),
            None
        ]
    );
    // The log keeps the graph as JSON: functions round-trip, and a graph without them is
    // written as before.
    let json = serde_json::to_string(&graph).expect("json");
    assert_eq!(serde_json::from_str::<JobGraph>(&json).expect("back"), graph);
    let plain = serde_json::to_string(&parse_job_spec(WORD_COUNT).expect("valid")).expect("json");
    assert!(!plain.contains("functions"), "{plain}");
}

#[test]
fn bad_function_specs_name_the_function_and_the_field() {
    let ok_function = format!("  words: {{sha256: {SHA_A}, size_bytes: 10}}");
    let map = "  - {id: last, kind: map, inputs: [src], params: {udf: words}}\n";
    let cases = [
        (
            udf_spec(
                &ok_function,
                "  - {id: last, kind: map, inputs: [src], params: {udf: nope}}\n",
            ),
            "unknown function \"nope\"; the spec's functions are: words",
        ),
        (
            udf_spec("  words: {source: words.js}", map),
            "functions.words.source: a file on the submitting machine",
        ),
        (
            udf_spec("  words: {sha256: ABC, size_bytes: 10}", map),
            "functions.words.sha256: must be 64 lowercase hex digits",
        ),
        (
            udf_spec(&format!("  words: {{sha256: {SHA_A}, size_bytes: 0}}"), map),
            "functions.words.size_bytes: is 0",
        ),
        (
            udf_spec(
                &format!("  words: {{sha256: {SHA_A}, size_bytes: 10, memory_limit_mib: 99999}}"),
                map,
            ),
            "functions.words.memory_limit_mib: is 99999, must be a whole number from 1 to 4096",
        ),
        (
            udf_spec(
                &format!("  words: {{sha256: {SHA_A}, size_bytes: 10, language: cobol}}"),
                map,
            ),
            "functions.words.language: is \"cobol\"",
        ),
        (
            udf_spec(&format!("  \"no way\": {{sha256: {SHA_A}, size_bytes: 10}}"), map),
            "functions.no way: a function name is",
        ),
        (
            udf_spec(
                &ok_function,
                "  - {id: last, kind: map, inputs: [src], params: {udf: words, function: lowercase}}\n",
            ),
            "params.function: an operator calling a user function (params.udf) takes no other parameter",
        ),
        (
            udf_spec(
                &ok_function,
                "  - {id: last, kind: process, inputs: [src], params: {udf: words}}\n",
            ),
            "\"last\"",
        ),
        (
            udf_spec(&ok_function, "  - {id: last, kind: process, inputs: [src]}\n"),
            "params.udf: missing; process requires it",
        ),
    ];
    for (spec, expected) in cases {
        let message = error_of(&spec);
        assert!(message.contains(expected), "expected {expected:?} in: {message}");
    }
}

#[test]
fn a_user_key_selector_feeds_its_consumer_by_the_hash_of_the_key() {
    let spec = udf_spec(
        &format!("  accounts: {{sha256: {SHA_A}, size_bytes: 10}}"),
        "  - {id: keyed, kind: key_by, inputs: [src], params: {udf: accounts}}\n  - {id: last, kind: reduce, inputs: [keyed], params: {udf: accounts}}\n",
    );
    let graph = parse_job_spec(&spec.replace("name: udf\n", "name: udf\nparallelism: 2\n")).expect("valid");
    let (keyed, last) = (
        graph.operator("keyed").expect("keyed"),
        graph.operator("last").expect("last"),
    );
    assert_eq!(graph.exchange(keyed, last), Exchange::Hash { salts: 1 });
}
