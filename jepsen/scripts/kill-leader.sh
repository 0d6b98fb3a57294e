#!/usr/bin/env bash
# kill -9 the coordinator leader of the running local cluster. Restart it with restart-node.sh N.
source "$(dirname "$0")/common.sh"
leader="$(leader_id)" || true
[ -n "${leader:-}" ] || die "no leader: is the cluster up?"
pid="$(node_pid "$leader")"
[ -n "$pid" ] || die "leader node $leader has no process on this machine"
kill_hard "node-$leader" "$pid"
say "the leader was node $leader; a new one is elected within about a second (raftstream cluster status)"
