//! `promtool check metrics` (Debian's `prometheus` package) on an exposition, for the tests that
//! lint what `/metrics` serves; `scripts/ensure-build-deps.sh --test` installs it.

use std::io::Write;
use std::process::{Command, Stdio};

/// promtool's verdict on `text` (its complaints as the error), or `None` when promtool is not
/// installed or could not be run.
pub fn check(text: &str) -> Option<Result<(), String>> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(text.as_bytes()).ok()?;
    let output = child.wait_with_output().ok()?;
    Some(if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    })
}
