#!/usr/bin/env bash
# Every test: unit tests, property tests, openraft's storage suite and the cluster tests (real
# coordinator processes, kill -9). Fails when any test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-build-deps.sh
cargo test --locked --workspace --all-targets "$@"
