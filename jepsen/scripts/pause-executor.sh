#!/usr/bin/env bash
# SIGSTOP executor ID (a zombie once its lease expires); with SECONDS, SIGCONT after.
source "$(dirname "$0")/common.sh"
[ $# -ge 1 ] || die "usage: pause-executor.sh EXECUTOR_ID [SECONDS]"
pid="$(executor_pid "$1")"
[ -n "$pid" ] || die "executor $1 is not running"
kill -STOP "$pid"
say "paused executor $1 (pid $pid)"
if [ $# -ge 2 ]; then
    sleep "$2"
    kill -CONT "$pid"
    say "resumed executor $1 after $2 s"
fi
