//! CPU-heavy work inside async tasks without starving the executor's other tasks.

/// Runs `work` (encoding, decoding or checksumming state: a second or more for hundreds of MiB)
/// telling tokio that this worker thread is busy, so the executor's other tasks move to another
/// thread meanwhile. Without it, two subtasks restoring large state held both workers of a 2-core
/// machine, the session missed its heartbeats and the leader declared the executor dead.
pub fn off_the_workers<R>(work: impl FnOnce() -> R) -> R {
    let multi_threaded = tokio::runtime::Handle::try_current()
        .is_ok_and(|runtime| runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_threaded {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}
