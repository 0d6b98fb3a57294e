#!/usr/bin/env bash
# The main job on a fresh machine: build, then run `raftstream demo` (a local three-coordinator
# cluster, a job submitted, the leader killed with kill -9, nothing lost).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-build-deps.sh
cargo run --locked --bin raftstream -- demo "$@"
