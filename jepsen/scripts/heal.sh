#!/usr/bin/env bash
# Undoes every fault: SIGCONT to every paused process, restarts everything these scripts killed,
# and restores every link of a `raftstream-jepsen --serve` cluster.
source "$(dirname "$0")/common.sh"
port="${RAFTSTREAM_FAULT_PORT:-7199}"
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    "$(dirname "$0")/fault.sh" heal || true
fi
for pid in $(all_pids); do kill -CONT "$pid" 2>/dev/null || true; done
say "resumed every raftstream process"
for saved in "$STATE"/*.cmd; do
    [ -e "$saved" ] || continue
    relaunch "$(basename "$saved" .cmd)"
done
