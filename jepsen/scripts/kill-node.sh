#!/usr/bin/env bash
# kill -9 coordinator N. Restart it with restart-node.sh N.
source "$(dirname "$0")/common.sh"
[ $# -eq 1 ] || die "usage: kill-node.sh NODE_ID"
pid="$(node_pid "$1")"
[ -n "$pid" ] || die "node $1 is not running"
kill_hard "node-$1" "$pid"
