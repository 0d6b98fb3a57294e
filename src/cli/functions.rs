//! `job submit` with user functions: each `functions:` entry that names a `source` is built into a
//! component with the installed tool (or read, for a `.wasm`), checked here in the same sandbox the
//! executors use (a component of the world, with every export the job's operators call), uploaded
//! once under its SHA-256, and replaced in the spec by that hash, its size and its language.

use std::path::Path;

use anyhow::{bail, Context};
use raftstream_api::client::ClusterClient;
use raftstream_api::spec::{OperatorKind, UdfExport, DEFAULT_FUNCTION_MEMORY_MIB, MAX_FUNCTION_BYTES};
use raftstream_functions::build::build_component;
use raftstream_functions::{Export, FunctionHost, FunctionInstance, FunctionLimits};
use serde_json::Value;

/// The spec text to submit: `spec` itself when no function has a `source`, else the spec as JSON
/// with each such function built, checked, uploaded and named by its hash.
pub(crate) async fn prepare_functions(spec: &str, spec_path: &Path, client: &ClusterClient) -> anyhow::Result<String> {
    let mut document: Value = if spec.trim_start().starts_with('{') {
        serde_json::from_str(spec).context("reading the job spec as JSON")?
    } else {
        serde_yaml::from_str(spec).context("reading the job spec as YAML")?
    };
    let needs_build = document
        .get("functions")
        .and_then(Value::as_object)
        .is_some_and(|functions| functions.values().any(|function| function.get("source").is_some()));
    if !needs_build {
        return Ok(spec.to_owned());
    }
    let exports_by_function = exports_called(&document);
    let base = spec_path.parent().unwrap_or(Path::new("."));
    let host = FunctionHost::new()?;
    let Some(Value::Object(functions)) = document.get_mut("functions") else {
        return Ok(spec.to_owned());
    };
    for (name, entry) in functions.iter_mut() {
        let Some(source) = entry.get("source") else { continue };
        let Some(source) = source.as_str() else {
            bail!("job spec: functions.{name}.source: must be a path (a .js, .py, .rs or .wasm file)");
        };
        let path = base.join(source);
        let work = tempfile::tempdir().context("a temporary directory to build in")?;
        let exports: Vec<Export> = exports_by_function
            .iter()
            .filter(|(function, _)| function == name)
            .map(|(_, export)| *export)
            .collect();
        let built = build_component(&path, work.path(), &exports).with_context(|| format!("function {name}"))?;
        if built.bytes.len() as u64 > MAX_FUNCTION_BYTES {
            bail!(
                "function {name} ({}): {} bytes, above the limit of {MAX_FUNCTION_BYTES}",
                path.display(),
                built.bytes.len()
            );
        }
        let memory_mib = entry
            .get("memory_limit_mib")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_FUNCTION_MEMORY_MIB);
        let compiled = host.compile(name, &built.bytes)?;
        let mut instance = FunctionInstance::new(
            &host,
            &compiled,
            FunctionLimits {
                memory_bytes: usize::try_from(memory_mib << 20).unwrap_or(usize::MAX),
                ..FunctionLimits::default()
            },
        )?;
        for export in exports {
            instance.check_export(export)?;
        }
        let uploaded = client
            .upload_function(&compiled.sha256, &built.bytes)
            .await
            .with_context(|| format!("uploading function {name}"))?;
        tracing::info!(function = %name, sha256 = %uploaded.sha256, stored_by = %uploaded.stored_by, "function uploaded");
        if let Value::Object(fields) = entry {
            fields.remove("source");
            fields.insert("sha256".to_owned(), Value::String(uploaded.sha256));
            fields.insert("size_bytes".to_owned(), Value::from(uploaded.size_bytes));
            fields.insert("language".to_owned(), Value::String(built.language.name().to_owned()));
        }
    }
    Ok(serde_json::to_string(&document)?)
}

/// (function, export) for every operator that calls a user function.
fn exports_called(document: &Value) -> Vec<(String, Export)> {
    let operators = document.get("operators").and_then(Value::as_array);
    operators
        .into_iter()
        .flatten()
        .filter_map(|operator| {
            let function = operator.get("params")?.get("udf")?.as_str()?;
            let kind = OperatorKind::from_name(operator.get("kind")?.as_str()?)?;
            let export = Export::from_wit_name(UdfExport::of(kind)?.wit_name())?;
            Some((function.to_owned(), export))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_export_the_job_model_names_is_one_the_host_knows() {
        let named: Vec<&str> = OperatorKind::ALL
            .into_iter()
            .filter_map(UdfExport::of)
            .map(UdfExport::wit_name)
            .collect();
        assert_eq!(named.len(), Export::ALL.len());
        for name in named {
            let export = Export::from_wit_name(name).unwrap_or_else(|| panic!("the host has no export {name}"));
            assert_eq!(export.wit_name(), name);
        }
    }
}
