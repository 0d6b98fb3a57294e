#!/usr/bin/env bash
# kill -9 executor ID (as given to --id). Restart it with restart-executor.sh ID.
source "$(dirname "$0")/common.sh"
[ $# -eq 1 ] || die "usage: kill-executor.sh EXECUTOR_ID"
pid="$(executor_pid "$1")"
[ -n "$pid" ] || die "executor $1 is not running"
kill_hard "executor-$1" "$pid"
say "its subtasks restart from the last checkpoint once its lease (1.5 s) expires"
