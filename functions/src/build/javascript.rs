//! JavaScript: the user's module becomes `user.js` beside the guest library, and componentize-qjs
//! (QuickJS, from npm) builds both into a component without WASI.

use std::path::Path;
use std::process::Command;

use super::{read, run_tool, write, write_wit, BuildError, Language};

const GUEST_LIBRARY: &str = include_str!("../../guests/javascript/raftstream.js");
pub(super) const TOOL: &str = "componentize-qjs";
pub(super) const INSTALL: &str = "npm install -g componentize-qjs@0.4.5";

pub(super) fn build(source: &Path, work_dir: &Path) -> Result<Vec<u8>, BuildError> {
    let wit_dir = write_wit(work_dir)?;
    write(&work_dir.join("user.js"), &read(source)?)?;
    let main = work_dir.join("main.js");
    write(&main, GUEST_LIBRARY.as_bytes())?;
    let output = work_dir.join("function.wasm");
    run_tool(
        Command::new(TOOL)
            .arg("--wit")
            .arg(&wit_dir)
            .arg("--js")
            .arg(&main)
            .arg("--module-root")
            .arg(work_dir)
            .args(["--world", "stream-function", "--stub-wasi", "--sync", "-o"])
            .arg(&output),
        Language::JavaScript,
        TOOL,
        INSTALL,
        source,
    )?;
    read(&output)
}
