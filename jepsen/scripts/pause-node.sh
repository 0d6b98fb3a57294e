#!/usr/bin/env bash
# SIGSTOP coordinator N (a node that stops answering without dying); with SECONDS, SIGCONT after.
source "$(dirname "$0")/common.sh"
[ $# -ge 1 ] || die "usage: pause-node.sh NODE_ID [SECONDS]"
pid="$(node_pid "$1")"
[ -n "$pid" ] || die "node $1 is not running"
pause_for "node $1" "$pid" "${2:-}"
