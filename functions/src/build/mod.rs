//! Turns a user's source into a component with the tools installed on this machine, each guest
//! library wrapped around the user's plain functions. A `.wasm` is taken as it is.

mod javascript;
mod python;
mod rust;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Export;

/// The language a function is written in, from its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    JavaScript,
    Python,
    Rust,
    /// A component built elsewhere.
    Wasm,
}

impl Language {
    /// The language of `source`, by its extension.
    pub fn of(source: &Path) -> Result<Language, BuildError> {
        match source.extension().and_then(|extension| extension.to_str()) {
            Some("js" | "mjs") => Ok(Language::JavaScript),
            Some("py") => Ok(Language::Python),
            Some("rs") => Ok(Language::Rust),
            Some("wasm") => Ok(Language::Wasm),
            _ => Err(BuildError::UnknownLanguage {
                source_path: source.to_owned(),
            }),
        }
    }

    /// The name the job's status shows.
    pub fn name(self) -> &'static str {
        match self {
            Language::JavaScript => "javascript",
            Language::Python => "python",
            Language::Rust => "rust",
            Language::Wasm => "wasm",
        }
    }
}

/// Why a source could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "{}: cannot tell the language: name a .js, .py, .rs or .wasm file",
        source_path.display()
    )]
    UnknownLanguage { source_path: PathBuf },
    #[error("building {language} functions needs `{tool}`, which is not installed: {install}")]
    ToolMissing {
        language: &'static str,
        tool: &'static str,
        install: &'static str,
    },
    #[error("{tool} failed to build {}: {output}", source_path.display())]
    ToolFailed {
        tool: &'static str,
        source_path: PathBuf,
        output: String,
    },
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
}

/// A built function: the component's bytes and the language it came from.
#[derive(Debug, Clone)]
pub struct BuiltFunction {
    pub language: Language,
    pub bytes: Vec<u8>,
}

/// Builds `source` into a component, using `work_dir` (empty, removed by the caller) for the
/// tools' files.
/// `exports` are the ones the job calls: a Rust function is compiled with calls to exactly those
/// (the interpreted languages look their functions up when called).
pub fn build_component(source: &Path, work_dir: &Path, exports: &[Export]) -> Result<BuiltFunction, BuildError> {
    let language = Language::of(source)?;
    let bytes = match language {
        Language::Wasm => read(source)?,
        Language::JavaScript => javascript::build(source, work_dir)?,
        Language::Python => python::build(source, work_dir)?,
        Language::Rust => rust::build(source, work_dir, exports)?,
    };
    Ok(BuiltFunction { language, bytes })
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|error| BuildError::Io {
        path: path.to_owned(),
        error,
    })
}

fn write(path: &Path, contents: &[u8]) -> Result<(), BuildError> {
    std::fs::write(path, contents).map_err(|error| BuildError::Io {
        path: path.to_owned(),
        error,
    })
}

/// Writes the WIT world into `work_dir/wit/` for a tool that reads it.
fn write_wit(work_dir: &Path) -> Result<PathBuf, BuildError> {
    let wit_dir = work_dir.join("wit");
    std::fs::create_dir_all(&wit_dir).map_err(|error| BuildError::Io {
        path: wit_dir.clone(),
        error,
    })?;
    write(&wit_dir.join("stream-function.wit"), crate::WIT.as_bytes())?;
    Ok(wit_dir)
}

/// Runs a build tool, turning "not found" into [`BuildError::ToolMissing`] and a failure into
/// [`BuildError::ToolFailed`] with what it printed.
fn run_tool(
    command: &mut Command,
    language: Language,
    tool: &'static str,
    install: &'static str,
    source: &Path,
) -> Result<(), BuildError> {
    let output = match command.output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(BuildError::ToolMissing {
                language: language.name(),
                tool,
                install,
            })
        }
        Err(error) => {
            return Err(BuildError::Io {
                path: PathBuf::from(tool),
                error,
            })
        }
    };
    if output.status.success() {
        return Ok(());
    }
    let mut printed = String::from_utf8_lossy(&output.stderr).into_owned();
    printed.push_str(&String::from_utf8_lossy(&output.stdout));
    Err(BuildError::ToolFailed {
        tool,
        source_path: source.to_owned(),
        output: format!("{} ({})", printed.trim(), output.status),
    })
}
