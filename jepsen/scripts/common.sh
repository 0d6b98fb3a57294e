# Shared by the fault scripts: find Raftstream processes on this machine, remember how they were
# started (so they can be started again after a kill -9), and say what was done.
set -euo pipefail

RAFTSTREAM="${RAFTSTREAM:-}"
if [ -z "$RAFTSTREAM" ]; then
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    if [ -x "$here/target/debug/raftstream" ]; then RAFTSTREAM="$here/target/debug/raftstream"; else RAFTSTREAM=raftstream; fi
fi
# Where killed processes' command lines are kept for a restart.
STATE="${RAFTSTREAM_FAULT_STATE:-${TMPDIR:-/tmp}/raftstream-faults}"
mkdir -p "$STATE"

say() { echo "[$(date +%H:%M:%S.%3N)] $*"; }
die() { echo "error: $*" >&2; exit 1; }

node_pid() { pgrep -f "raftstream coordinator --config .*node-$1/config.yaml" | head -n1 || true; }
executor_pid() { pgrep -f "raftstream executor .*--id $1( |$)" | head -n1 || true; }
all_pids() { pgrep -f "raftstream (coordinator|executor) " || true; }

leader_id() {
    "$RAFTSTREAM" cluster status --output json --retry-secs 5 ${COORDINATORS:+--coordinators "$COORDINATORS"} \
        | grep -o '"leader_id":[0-9]*' | cut -d: -f2
}

# Saves how process $2 was started under the name $1: command line, working directory, log.
remember() {
    local name="$1" pid="$2"
    tr '\0' '\n' < "/proc/$pid/cmdline" > "$STATE/$name.cmd"
    readlink "/proc/$pid/cwd" > "$STATE/$name.cwd"
    readlink "/proc/$pid/fd/1" > "$STATE/$name.log" || echo /dev/null > "$STATE/$name.log"
}

# kill -9 of process $2, remembered as $1.
kill_hard() {
    remember "$1" "$2"
    kill -9 "$2"
    say "kill -9 $1 (pid $2)"
}

# Starts again what was remembered as $1.
relaunch() {
    local name="$1"
    [ -f "$STATE/$name.cmd" ] || die "nothing remembered for $name: was it stopped by these scripts?"
    local -a command
    mapfile -t command < "$STATE/$name.cmd"
    local log directory
    log="$(cat "$STATE/$name.log")"
    directory="$(cat "$STATE/$name.cwd")"
    (cd "$directory" && exec setsid nohup "${command[@]}" >> "$log" 2>&1 < /dev/null) &
    rm -f "$STATE/$name.cmd" "$STATE/$name.cwd" "$STATE/$name.log"
    say "restarted $name"
}

# SIGSTOP of process $2, named $1 in messages; with seconds $3, SIGCONT after them.
pause_for() {
    local name="$1" pid="$2"
    kill -STOP "$pid"
    say "paused $name (pid $pid)"
    if [ -n "${3:-}" ]; then
        sleep "$3"
        kill -CONT "$pid"
        say "resumed $name after $3 s"
    fi
}
