#!/usr/bin/env bash
# Starts executor ID again, as it was started before kill-executor.sh killed it.
source "$(dirname "$0")/common.sh"
[ $# -eq 1 ] || die "usage: restart-executor.sh EXECUTOR_ID"
[ -z "$(executor_pid "$1")" ] || die "executor $1 is already running"
relaunch "executor-$1"
