//! The gRPC API of Raftstream, generated from `proto/raftstream.proto`.
//!
//! Core logic never sees these types: the coordinator converts them into its own at the service
//! edge.

#![allow(clippy::all, missing_docs)]

/// Version 1 of the API.
pub mod v1 {
    tonic::include_proto!("raftstream.v1");
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("raftstream_descriptor");
