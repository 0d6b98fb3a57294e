#!/usr/bin/env bash
# Undoes every fault: SIGCONT to every paused process, restarts everything these scripts killed.
source "$(dirname "$0")/common.sh"
for pid in $(all_pids); do kill -CONT "$pid" 2>/dev/null || true; done
say "resumed every raftstream process"
for saved in "$STATE"/*.cmd; do
    [ -e "$saved" ] || continue
    relaunch "$(basename "$saved" .cmd)"
done
