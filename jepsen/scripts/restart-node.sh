#!/usr/bin/env bash
# Starts coordinator N again, as it was started before kill-node.sh / kill-leader.sh killed it.
source "$(dirname "$0")/common.sh"
[ $# -eq 1 ] || die "usage: restart-node.sh NODE_ID"
[ -z "$(node_pid "$1")" ] || die "node $1 is already running"
relaunch "node-$1"
