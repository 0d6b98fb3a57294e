//! Python: the user's module becomes `user.py` beside the guest library, and componentize-py
//! (CPython in a component, from PyPI) builds both with trapping stubs for WASI.

use std::path::Path;
use std::process::Command;

use super::{read, run_tool, write, write_wit, BuildError, Language};

const GUEST_LIBRARY: &str = include_str!("../../guests/python/raftstream_app.py");
pub(super) const TOOL: &str = "componentize-py";
pub(super) const INSTALL: &str = "python3 -m pip install componentize-py==0.25.1";

pub(super) fn build(source: &Path, work_dir: &Path) -> Result<Vec<u8>, BuildError> {
    let wit_dir = write_wit(work_dir)?;
    write(&work_dir.join("user.py"), &read(source)?)?;
    write(&work_dir.join("raftstream_app.py"), GUEST_LIBRARY.as_bytes())?;
    let output = work_dir.join("function.wasm");
    let mut command = Command::new(TOOL);
    command
        .arg("-d")
        .arg(&wit_dir)
        .args(["-w", "stream-function", "componentize", "--stub-wasi", "-p"])
        .arg(work_dir);
    // The user's own modules beside the source import as they do at home.
    if let Some(parent) = source.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        command.arg("-p").arg(parent);
    }
    command.args(["raftstream_app", "-o"]).arg(&output);
    run_tool(&mut command, Language::Python, TOOL, INSTALL, source)?;
    read(&output)
}
