//! The Raftstream executor: runs stream tasks for the coordinators.
//!
//! Nothing lives here yet. The session with the coordinator leader, the streaming runtime and
//! checkpointing arrive with issue 3; the messages they use are already defined in
//! `proto/raftstream.proto` (`ExecutorService`).
