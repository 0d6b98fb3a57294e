//! Cluster-level tests: real coordinator and executor processes of the built binary, real gRPC on
//! loopback, real RocksDB files and `kill -9`. One test binary keeps CI's link time and disk use down
//! (every binary carries RocksDB).

mod common;

mod checkpoint_progress;
mod cli;
mod dashboard;
mod death_detection;
mod exactly_once;
mod exchanges;
mod executors;
mod failover;
mod functions;
mod membership;
mod observability;
mod operators;
mod replication;
mod restarts;
mod restore_races;
mod s3_peer;
mod savepoints;
mod slots;
mod snapshot_catchup;
mod two_phase;
mod volume_checkpoints;
mod zombie_executor;
