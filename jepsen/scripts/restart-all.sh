#!/usr/bin/env bash
# kill -9 every coordinator and executor on this machine, then start them all again.
source "$(dirname "$0")/common.sh"
pids="$(all_pids)"
[ -n "$pids" ] || die "no raftstream coordinator or executor is running"
names=()
for pid in $pids; do
    name="process-$pid"
    kill_hard "$name" "$pid"
    names+=("$name")
done
sleep "${1:-1}"
for name in "${names[@]}"; do relaunch "$name"; done
say "restarted ${#names[@]} processes"
