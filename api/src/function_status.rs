//! A job's user functions as people see them (`job status`, the dashboard): each function's
//! language, hash and size from the job's graph, how long the executors took to compile it, and
//! per export the calls its subtasks reported, summed over the subtasks.

use std::collections::BTreeMap;

use raftstream_proto::v1 as pb;
use serde::Serialize;

/// One function of a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionStatus {
    pub name: String,
    pub language: String,
    pub sha256: String,
    pub size_bytes: u64,
    /// The slowest compile (or disk-cache load) among the executors that report it; `None`
    /// before any subtask runs it.
    pub compile_ms: Option<u64>,
    /// Every reporting executor loaded it from its disk cache.
    pub from_cache: bool,
    pub exports: Vec<ExportCalls>,
}

/// The calls of one export, over the job's subtasks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportCalls {
    pub export: String,
    pub calls: u64,
    pub records: u64,
    pub errors: u64,
    pub call_seconds: f64,
    pub micros_per_call: f64,
}

/// The functions of `job`, with what `metrics` (the job's subtask reports) counted.
pub fn job_functions(job: &pb::Job, metrics: &[pb::SubtaskMetrics]) -> Vec<FunctionStatus> {
    let Ok(graph) = serde_json::from_str::<crate::spec::JobGraph>(&job.graph_json) else {
        return Vec::new();
    };
    graph
        .functions
        .iter()
        .map(|(name, function)| {
            let lines: Vec<&pb::FunctionCalls> = metrics
                .iter()
                .flat_map(|subtask| &subtask.functions)
                .filter(|calls| &calls.function == name)
                .collect();
            let mut exports: BTreeMap<&str, (u64, u64, u64, u64)> = BTreeMap::new();
            for calls in &lines {
                let sums = exports.entry(calls.export.as_str()).or_default();
                sums.0 += calls.calls;
                sums.1 += calls.records;
                sums.2 += calls.errors;
                sums.3 += calls.call_nanos;
            }
            FunctionStatus {
                name: name.clone(),
                language: function.language.clone(),
                sha256: function.sha256.clone(),
                size_bytes: function.size_bytes,
                compile_ms: lines.iter().map(|calls| calls.compile_ms).max(),
                from_cache: !lines.is_empty() && lines.iter().all(|calls| calls.from_cache),
                exports: exports
                    .into_iter()
                    .map(|(export, (calls, records, errors, nanos))| ExportCalls {
                        export: export.to_owned(),
                        calls,
                        records,
                        errors,
                        call_seconds: nanos as f64 / 1e9,
                        micros_per_call: if calls == 0 {
                            0.0
                        } else {
                            nanos as f64 / 1e3 / calls as f64
                        },
                    })
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "3542dcedf90f95a523088847c8d83924be3c90b2f199315e9fc3b8377eaff827";

    fn job() -> pb::Job {
        let spec = format!(
            r#"{{"name": "wc", "functions": {{"wc": {{"sha256": "{SHA}", "size_bytes": 4096, "language": "rust"}}}},
            "operators": [
              {{"id": "lines", "kind": "generator", "params": {{"count": 10}}}},
              {{"id": "words", "kind": "flat_map", "inputs": ["lines"], "params": {{"udf": "wc"}}}},
              {{"id": "by_word", "kind": "key_by", "inputs": ["words"]}},
              {{"id": "counts", "kind": "reduce", "inputs": ["by_word"], "params": {{"udf": "wc"}}}},
              {{"id": "out", "kind": "print", "inputs": ["counts"]}}]}}"#
        );
        let graph = crate::spec::parse_job_spec(&spec).expect("spec");
        pb::Job {
            graph_json: serde_json::to_string(&graph).expect("graph"),
            ..pb::Job::default()
        }
    }

    fn calls(export: &str, calls: u64, nanos: u64, compile_ms: u64) -> pb::FunctionCalls {
        pb::FunctionCalls {
            function: "wc".to_owned(),
            export: export.to_owned(),
            calls,
            records: calls * 10,
            errors: 0,
            call_nanos: nanos,
            compile_ms,
            from_cache: false,
        }
    }

    #[test]
    fn a_functions_calls_are_summed_per_export_over_its_subtasks() {
        let metrics = vec![
            pb::SubtaskMetrics {
                functions: vec![calls("flat-map", 4, 8_000, 120)],
                ..pb::SubtaskMetrics::default()
            },
            pb::SubtaskMetrics {
                functions: vec![calls("reduce", 2, 6_000, 90)],
                ..pb::SubtaskMetrics::default()
            },
            pb::SubtaskMetrics {
                functions: vec![calls("reduce", 2, 2_000, 95)],
                ..pb::SubtaskMetrics::default()
            },
        ];
        let functions = job_functions(&job(), &metrics);
        assert_eq!(functions.len(), 1);
        let wc = &functions[0];
        assert_eq!(
            (wc.name.as_str(), wc.language.as_str(), wc.sha256.as_str()),
            ("wc", "rust", SHA)
        );
        assert_eq!(wc.size_bytes, 4096);
        assert_eq!(wc.compile_ms, Some(120), "the slowest executor's compile");
        assert!(!wc.from_cache);
        let reduce = wc
            .exports
            .iter()
            .find(|export| export.export == "reduce")
            .expect("reduce");
        assert_eq!((reduce.calls, reduce.records), (4, 40));
        assert!(
            (reduce.micros_per_call - 2.0).abs() < 1e-9,
            "{}",
            reduce.micros_per_call
        );

        let idle = job_functions(&job(), &[]);
        assert_eq!(idle[0].compile_ms, None, "no executor reported it yet");
        assert!(idle[0].exports.is_empty());
        assert!(
            job_functions(&pb::Job::default(), &metrics).is_empty(),
            "no graph, no functions"
        );
    }
}
