//! The gRPC metadata keys Raftstream's processes and clients set and read.

/// Carries the address of the leader when a node cannot serve a request.
pub const LEADER_HINT_METADATA: &str = "x-raftstream-leader";

/// Set on a request a follower forwards, so the leader never forwards it again.
pub const FORWARDED_METADATA: &str = "x-raftstream-forwarded";
