#!/usr/bin/env bash
# SIGSTOP executor ID (a zombie once its lease expires); with SECONDS, SIGCONT after.
source "$(dirname "$0")/common.sh"
[ $# -ge 1 ] || die "usage: pause-executor.sh EXECUTOR_ID [SECONDS]"
pid="$(executor_pid "$1")"
[ -n "$pid" ] || die "executor $1 is not running"
pause_for "executor $1" "$pid" "${2:-}"
