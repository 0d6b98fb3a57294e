//! One harness per output directory: two runs writing into one directory interleave their
//! histories and clusters, and their report means nothing. The first run holds a lock file with
//! its process id; another run refuses the directory while that process lives, and takes over a
//! lock left by one that died.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The lock file's name inside the output directory.
const LOCK_FILE: &str = "harness.lock";

/// Held for the whole run; the lock file is removed when it is dropped.
#[derive(Debug)]
pub struct OutDirLock {
    path: PathBuf,
}

impl OutDirLock {
    /// Takes `out` for this process, creating it when needed.
    pub fn acquire(out: &Path) -> anyhow::Result<OutDirLock> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let path = out.join(LOCK_FILE);
        // Two attempts: the second after removing a lock whose process is gone.
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    write!(file, "{}", std::process::id()).with_context(|| format!("writing {}", path.display()))?;
                    return Ok(OutDirLock { path });
                }
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    match holder.trim().parse::<u32>() {
                        Ok(pid) if process_lives(pid) => bail!(
                            "{} is in use by another harness (process {pid}): pass another --out",
                            out.display()
                        ),
                        _ => {
                            tracing::warn!(lock = %path.display(), holder = holder.trim(), "taking over the lock of a harness that is gone");
                            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
                        }
                    }
                }
                Err(error) => return Err(error).with_context(|| format!("creating {}", path.display())),
            }
        }
        bail!("{}: could not take the lock file {}", out.display(), path.display())
    }
}

impl Drop for OutDirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a process with this id runs (Linux: its /proc entry exists).
fn process_lives(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_in_use_is_refused_and_a_dead_holders_lock_is_taken_over() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("out");
        let held = OutDirLock::acquire(&out).expect("first");
        let refused = OutDirLock::acquire(&out).expect_err("in use");
        assert!(refused.to_string().contains("in use by another harness"), "{refused}");
        drop(held);
        assert!(!out.join(LOCK_FILE).exists(), "dropping the lock removes its file");
        let again = OutDirLock::acquire(&out).expect("free again");
        drop(again);

        // A lock left by a process that is gone (no pid is this large on Linux).
        std::fs::write(out.join(LOCK_FILE), "4294967295").expect("stale lock");
        let taken = OutDirLock::acquire(&out).expect("a dead holder's lock is taken over");
        assert_eq!(
            std::fs::read_to_string(out.join(LOCK_FILE)).expect("lock"),
            std::process::id().to_string()
        );
        drop(taken);
    }
}
