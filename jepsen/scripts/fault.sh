#!/usr/bin/env bash
# Sends one fault command to a cluster started with `raftstream-jepsen --serve PORT` (every link
# through the fault proxy) and prints its answer. Examples:
#   fault.sh partition leader | partition minority | partition bridge 1 | partition executor 0
#   fault.sh delay 15 | kill leader | pause follower 1 | kill executor 0 | restart-all
#   fault.sh heal | status
source "$(dirname "$0")/common.sh"
[ $# -ge 1 ] || die "usage: fault.sh COMMAND... (see the comment at the top of this script)"
port="${RAFTSTREAM_FAULT_PORT:-7199}"
exec 3<>"/dev/tcp/127.0.0.1/$port" || die "no raftstream-jepsen --serve $port on this machine"
echo "$*" >&3
read -r answer <&3
say "$* -> $answer"
[[ "$answer" == ok* ]]
