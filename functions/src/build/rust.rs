//! Rust: the user's `.rs` file becomes the module `user` of a generated crate, with the guest
//! library (the module `raftstream_guest`) and an `impl Guest` that calls the user's functions
//! for the exports the job uses; cargo builds it for `wasm32-unknown-unknown` and `jco new`
//! wraps the core module into a component. Dependencies come from a cargo-script front matter
//! at the top of the file:
//!
//! ```text
//! ---
//! [dependencies]
//! serde_json = "1"
//! ---
//! ```
//!
//! The target directory is shared between builds (under the user's cache directory), so the
//! standard library, which the Debian toolchain builds from source, is compiled once.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{read, run_tool, write, write_wit, BuildError, Language};
use crate::Export;

const GUEST_LIBRARY: &str = include_str!("../../guests/rust/guest.rs");
const TARGET: &str = "wasm32-unknown-unknown";
/// The bindings generator's version, pinned: the guest and the host agree on the world's types.
const WIT_BINDGEN: &str = "=0.61.0";
pub(super) const JCO: &str = "jco";
pub(super) const JCO_INSTALL: &str = "npm install -g @bytecodealliance/jco@1.35.0";
const TOOLCHAIN: &str = "a Rust toolchain that targets wasm32-unknown-unknown";
const TOOLCHAIN_INSTALL: &str = "rustup target add wasm32-unknown-unknown, or on Debian 12: apt-get install rustc-web cargo-web rust-web-src lld-22";
/// Where Debian's `rust-web-src` puts the standard library's sources.
const DEBIAN_LIBRARY_SOURCES: &str = "/usr/lib/rustlib/src/rust/library/Cargo.lock";

pub(super) fn build(source: &Path, work_dir: &Path, exports: &[Export]) -> Result<Vec<u8>, BuildError> {
    let toolchain = Toolchain::find()?;
    let text = String::from_utf8(read(source)?).map_err(|_| BuildError::ToolFailed {
        tool: "rustc",
        source_path: source.to_owned(),
        output: "the file is not UTF-8".to_owned(),
    })?;
    let (manifest_extra, user_code) = split_front_matter(&text).map_err(|reason| BuildError::ToolFailed {
        tool: "cargo",
        source_path: source.to_owned(),
        output: reason,
    })?;
    let reduce_shape = ReduceShape::of(&user_code).map_err(|reason| BuildError::ToolFailed {
        tool: "rustc",
        source_path: source.to_owned(),
        output: reason,
    })?;
    let library = generated_library(exports, reduce_shape);
    // One package name per content: builds of different functions share the target directory
    // (and its standard library) without overwriting each other's output.
    let content = [
        manifest_extra.as_str(),
        user_code.as_str(),
        library.as_str(),
        GUEST_LIBRARY,
    ]
    .join("\0");
    let package = format!("raftstream_function_{}", &crate::sha256_hex(content.as_bytes())[..16]);

    write_wit(work_dir)?;
    let src = work_dir.join("src");
    std::fs::create_dir_all(&src).map_err(|error| BuildError::Io {
        path: src.clone(),
        error,
    })?;
    write(&src.join("user.rs"), user_code.as_bytes())?;
    write(&src.join("raftstream_guest.rs"), GUEST_LIBRARY.as_bytes())?;
    write(&src.join("lib.rs"), library.as_bytes())?;
    write(
        &work_dir.join("Cargo.toml"),
        manifest(&package, &manifest_extra).as_bytes(),
    )?;

    let target_dir = shared_target_dir();
    let mut cargo = toolchain.cargo_build(work_dir, &target_dir);
    run_tool(&mut cargo, Language::Rust, "cargo", TOOLCHAIN_INSTALL, source)?;
    let core_module = target_dir.join(TARGET).join("release").join(format!("{package}.wasm"));

    let component = work_dir.join("function.wasm");
    let mut jco = Command::new(JCO);
    jco.arg("new").arg(&core_module).arg("-o").arg(&component);
    run_tool(&mut jco, Language::Rust, JCO, JCO_INSTALL, source)?;
    read(&component)
}

/// The cargo and rustc that build for wasm32 here.
struct Toolchain {
    cargo: PathBuf,
    rustc: PathBuf,
    /// The standard library is built from its sources (Debian's toolchain ships none for wasm32).
    build_std: bool,
}

impl Toolchain {
    fn find() -> Result<Toolchain, BuildError> {
        // A toolchain with the target installed (rustup): the one on the PATH.
        if let Some(libdir) = target_libdir(Path::new("rustc")) {
            if has_standard_library(&libdir) {
                return Ok(Toolchain {
                    cargo: PathBuf::from("cargo"),
                    rustc: PathBuf::from("rustc"),
                    build_std: false,
                });
            }
        }
        // Debian's rustc-web with rust-web-src: builds the standard library for the target.
        let debian_rustc = Path::new("/usr/bin/rustc");
        let debian_cargo = Path::new("/usr/bin/cargo");
        if debian_cargo.is_file() && Path::new(DEBIAN_LIBRARY_SOURCES).is_file() {
            if let Some(libdir) = target_libdir(debian_rustc) {
                return Ok(Toolchain {
                    cargo: debian_cargo.to_owned(),
                    rustc: debian_rustc.to_owned(),
                    build_std: !has_standard_library(&libdir),
                });
            }
        }
        Err(BuildError::ToolMissing {
            language: Language::Rust.name(),
            tool: TOOLCHAIN,
            install: TOOLCHAIN_INSTALL,
        })
    }

    fn cargo_build(&self, work_dir: &Path, target_dir: &Path) -> Command {
        let mut command = Command::new(&self.cargo);
        // Nothing of the calling build (a test run under cargo, a user's RUSTFLAGS) may change
        // how the function is built.
        for variable in [
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "CARGO_BUILD_RUSTFLAGS",
            "RUSTDOC",
            "CARGO_MAKEFLAGS",
            "RUSTUP_TOOLCHAIN",
        ] {
            command.env_remove(variable);
        }
        command
            .env("RUSTC", &self.rustc)
            .current_dir(work_dir)
            .args(["build", "--release", "--quiet", "--target", TARGET])
            .arg("--target-dir")
            .arg(target_dir);
        if self.build_std {
            command.env("RUSTC_BOOTSTRAP", "1").arg("-Zbuild-std=std,panic_abort");
        }
        command
    }
}

fn target_libdir(rustc: &Path) -> Option<PathBuf> {
    let output = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}

fn has_standard_library(libdir: &Path) -> bool {
    std::fs::read_dir(libdir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|entry| entry.file_name().to_string_lossy().starts_with("libstd-"))
    })
}

/// Builds share one target directory per user: `$XDG_CACHE_HOME/raftstream/rust-functions`
/// (or `~/.cache/...`), so the second build compiles only the user's crate.
fn shared_target_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|path| path.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("raftstream").join("rust-functions")
}

/// Splits a cargo-script front matter (`---` fenced TOML at the top, after an optional `#!`
/// line) from the code. The code keeps its line numbers: the front matter's lines become empty,
/// so rustc's errors point at the user's lines.
fn split_front_matter(text: &str) -> Result<(String, String), String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut first = 0;
    if lines
        .first()
        .is_some_and(|line| line.starts_with("#!") && !line.starts_with("#!["))
    {
        first = 1;
    }
    while lines.get(first).is_some_and(|line| line.trim().is_empty()) {
        first += 1;
    }
    let opens = lines.get(first).is_some_and(|line| {
        let line = line.trim_end();
        line.starts_with("---") && matches!(line.trim_start_matches('-').trim(), "" | "cargo")
    });
    if !opens {
        return Ok((String::new(), text.to_owned()));
    }
    let Some(close) = (first + 1..lines.len()).find(|&index| lines[index].trim_end().starts_with("---")) else {
        return Err(format!(
            "the front matter opened on line {} is never closed with a line of ---",
            first + 1
        ));
    };
    let manifest = lines[first + 1..close].join("\n");
    let code: String = lines
        .iter()
        .enumerate()
        .map(|(index, line)| if index <= close { "" } else { line })
        .collect::<Vec<_>>()
        .join("\n");
    Ok((manifest, code))
}

fn manifest(package: &str, front_matter: &str) -> String {
    // The user's front matter first: it may hold top-level keys, and its `[dependencies]` table
    // and the `[dependencies.wit-bindgen]` table below combine.
    format!(
        r#"{front_matter}

[package]
name = "{package}"
version = "0.0.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]
path = "src/lib.rs"

[dependencies.wit-bindgen]
version = "{WIT_BINDGEN}"
default-features = false
features = ["macros", "realloc", "std"]

[profile.release]
panic = "abort"
opt-level = 3
debug = false

[workspace]
"#
    )
}

/// Which function a `reduce` export calls: the user's `reduce` (one value at a time) or their
/// `reduce_group` (a key's values at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReduceShape {
    PerValue,
    PerGroup,
}

impl ReduceShape {
    /// The shape the user's code defines (a `reduce` when it defines neither: the build then
    /// names the missing function). Rust cannot ask whether a module has an item, so the
    /// source is read for an `fn reduce_group`.
    fn of(code: &str) -> Result<ReduceShape, String> {
        match (defines_function(code, "reduce"), defines_function(code, "reduce_group")) {
            (true, true) => {
                Err("the file defines both reduce and reduce_group: a reduce runs one of them, keep one".to_owned())
            }
            (_, true) => Ok(ReduceShape::PerGroup),
            _ => Ok(ReduceShape::PerValue),
        }
    }
}

/// Whether `code` has `fn name` followed by its parameters or generics.
fn defines_function(code: &str, name: &str) -> bool {
    code.match_indices("fn ").any(|(at, _)| {
        let before_is_boundary = code[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        let rest = code[at + 3..].trim_start();
        before_is_boundary
            && rest
                .strip_prefix(name)
                .is_some_and(|after| after.trim_start().starts_with(['(', '<']))
    })
}

/// The crate's root: the bindings, the guest library, the user's module, and an `impl Guest`
/// whose exports call the user's function where the job uses it and say which one is missing
/// where it does not.
fn generated_library(exports: &[Export], reduce_shape: ReduceShape) -> String {
    // The helper's call of the user's function, with the closure's parameters and the user's
    // arguments (the helpers pass an output column to the conversions that write into one).
    let call = |export: Export, function: &str, parameters: &str, arguments: &str, conversion: &str| {
        if exports.contains(&export) {
            format!("raftstream_guest::{function}(batch, |{parameters}| user::{function}({arguments}).{conversion})")
        } else {
            format!("raftstream_guest::missing(\"{function}\")")
        }
    };
    let reduce = match reduce_shape {
        ReduceShape::PerValue => call(
            Export::Reduce,
            "reduce",
            "accumulator, value, key",
            "accumulator, value, key",
            "into_value()",
        ),
        ReduceShape::PerGroup => call(
            Export::Reduce,
            "reduce_group",
            "accumulator, values, key",
            "accumulator, values, key",
            "into_value()",
        ),
    };
    format!(
        r#"// Generated by `raftstream job submit` around the user's functions (src/user.rs).
wit_bindgen::generate!({{ path: "wit", world: "stream-function" }});

#[macro_use]
mod raftstream_guest;
#[allow(dead_code)]
mod user;

#[allow(unused_imports)]
use raftstream_guest::{{IntoKeep, IntoProcessed, IntoValue, IntoValues}};

struct Function;

impl Guest for Function {{
    #[allow(unused_variables)]
    fn map(batch: Events) -> Result<Strings, String> {{
        {map}
    }}
    #[allow(unused_variables)]
    fn flat_map(batch: Events) -> Result<FannedOut, String> {{
        {flat_map}
    }}
    #[allow(unused_variables)]
    fn filter(batch: Events) -> Result<Vec<u8>, String> {{
        {filter}
    }}
    #[allow(unused_variables)]
    fn key(batch: Events) -> Result<Strings, String> {{
        {key}
    }}
    #[allow(unused_variables)]
    fn reduce(batch: KeyedValues) -> Result<Strings, String> {{
        {reduce}
    }}
    #[allow(unused_variables)]
    fn process(batch: KeyedEvents) -> Result<Processed, String> {{
        {process}
    }}
}}

export!(Function);
"#,
        map = call(Export::Map, "map", "value, out", "value", "write_value(out)"),
        flat_map = call(Export::FlatMap, "flat_map", "value, out", "value", "write_values(out)"),
        filter = call(Export::Filter, "filter", "value", "value", "into_keep()"),
        key = call(Export::Key, "key", "value, out", "value", "write_value(out)"),
        process = call(
            Export::Process,
            "process",
            "key, state, values, out",
            "key, state, values",
            "write_processed(out)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_is_split_off_and_the_code_keeps_its_lines() {
        let text = "---\n[dependencies]\nserde_json = \"1\"\n---\npub fn map(v: &str) -> String {\n    v.into()\n}\n";
        let (manifest, code) = split_front_matter(text).expect("front matter");
        assert_eq!(manifest, "[dependencies]\nserde_json = \"1\"");
        assert_eq!(code.lines().nth(4), Some("pub fn map(v: &str) -> String {"));

        let plain = "pub fn key(v: &str) -> String { v.into() }\n";
        assert_eq!(
            split_front_matter(plain).expect("none"),
            (String::new(), plain.to_owned())
        );

        let cargo_tagged = "#!/usr/bin/env cargo\n---cargo\n[dependencies]\n---\nfn f() {}";
        assert_eq!(split_front_matter(cargo_tagged).expect("tagged").0, "[dependencies]");

        let unclosed = "---\n[dependencies]\nfn f() {}";
        let error = split_front_matter(unclosed).expect_err("unclosed");
        assert!(error.contains("never closed"), "{error}");
    }

    #[test]
    fn the_generated_crate_calls_only_the_functions_the_job_uses() {
        let library = generated_library(&[Export::FlatMap, Export::Reduce], ReduceShape::PerValue);
        assert!(
            library.contains("raftstream_guest::flat_map(batch, |value, out| user::flat_map(value).write_values(out))")
        );
        assert!(library.contains("user::reduce(accumulator, value, key).into_value()"));
        assert!(library.contains("raftstream_guest::missing(\"map\")"));
        assert!(!library.contains("user::map"));

        let grouped = generated_library(&[Export::Reduce], ReduceShape::PerGroup);
        assert!(
            grouped.contains("raftstream_guest::reduce_group(batch, |accumulator, values, key| user::reduce_group(")
        );
    }

    #[test]
    fn the_reduce_shape_is_the_function_the_file_defines() {
        let per_value = "pub fn reduce(a: Option<&str>, v: &str, k: &str) -> String { v.into() }";
        assert_eq!(ReduceShape::of(per_value), Ok(ReduceShape::PerValue));
        let per_group = "pub fn reduce_group (a: Option<&str>, v: &[&str], k: &str) -> String { k.into() }";
        assert_eq!(ReduceShape::of(per_group), Ok(ReduceShape::PerGroup));
        // Names that only contain it, or other items, do not count.
        assert_eq!(
            ReduceShape::of("fn reduce_groups() {}\nfn my_reduce_group() {}\nconst reduce_group: u8 = 0;"),
            Ok(ReduceShape::PerValue)
        );
        let both = format!("{per_value}\n{per_group}");
        assert!(ReduceShape::of(&both).expect_err("both").contains("keep one"));
    }
}
