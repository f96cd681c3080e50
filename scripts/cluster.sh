#!/usr/bin/env bash
# Runs a local deckhand cluster in the background.
#
#   scripts/cluster.sh start  [local-3|local-5|CONFIG_DIR]
#   scripts/cluster.sh stop   [local-3|local-5|CONFIG_DIR]
#   scripts/cluster.sh status [local-3|local-5|CONFIG_DIR]
#
# The argument names a directory under cluster-config/ (default local-3) or
# any directory of node*.toml files. Nodes run from the repository root, so
# relative data_dir values land under data/.
#
# Environment:
#   DECKHAND_BIN        binary to run (default: target/release/deckhand, built if missing or stale)
#   DECKHAND_RUN_DIR    where pid and log files go (default: data/run/<name>)
#   DECKHAND_STORE_URL  overrides store.url of every node (e.g. redis://127.0.0.1:6379/0)
#   START_TIMEOUT       seconds to wait for a leader (default 30)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

cmd=${1:-}
target=${2:-local-3}
case "$cmd" in start|stop|status) ;; *)
  echo "usage: scripts/cluster.sh start|stop|status [local-3|local-5|CONFIG_DIR]" >&2; exit 2;;
esac

if [ -d "cluster-config/$target" ]; then
  config_dir="$root/cluster-config/$target"
elif [ -d "$target" ]; then
  config_dir=$(cd "$target" && pwd)
else
  echo "cluster.sh: no cluster config '$target' (looked in cluster-config/$target and ./$target)" >&2
  exit 2
fi
name=$(basename "$config_dir")
run_dir=${DECKHAND_RUN_DIR:-$root/data/run/$name}
mkdir -p "$run_dir"

shopt -s nullglob
configs=("$config_dir"/node*.toml)
if [ ${#configs[@]} -eq 0 ]; then
  echo "cluster.sh: no node*.toml files in $config_dir" >&2
  exit 2
fi

# The first top-level `key = "value"` of a config file.
config_value() { sed -n "s/^$2 *= *\"\(.*\)\"/\1/p" "$1" | head -n 1; }

binary() {
  if [ -n "${DECKHAND_BIN:-}" ]; then echo "$DECKHAND_BIN"; return; fi
  local bin="$root/target/release/deckhand"
  if [ ! -x "$bin" ] || [ -n "$(find src proto build.rs Cargo.toml Cargo.lock -newer "$bin" 2>/dev/null | head -n 1)" ]; then
    echo "building release binary..." >&2
    cargo build --release --quiet >&2
  fi
  echo "$bin"
}

# Is the pid in $1 alive and a node started from this config directory?
our_process() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF " node --config $config_dir/"
}

# Is the pid in $1, which this run of the script has just started, still
# alive? Not `our_process`: until the forked shell has exec'd nohup, its
# command line is this script's, and a loaded machine can be slow to get
# there. A process that exited and is not reaped yet (a zombie) is not
# alive.
started_alive() {
  local state
  state=$(sed -n 's/.*) \([A-Za-z]\) .*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

node_name() { basename "$1" .toml; }

start() {
  local bin
  bin=$(binary)
  for cfg in "${configs[@]}"; do
    local n pidfile log
    n=$(node_name "$cfg"); pidfile="$run_dir/$n.pid"; log="$run_dir/$n.log"
    if [ -f "$pidfile" ] && our_process "$(cat "$pidfile")"; then
      echo "$n already running (pid $(cat "$pidfile"))"
      continue
    fi
    nohup "$bin" node --config "$cfg" >>"$log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
  done
  local timeout=${START_TIMEOUT:-30} deadline leader=""
  deadline=$(( $(date +%s) + timeout ))
  local first_admin
  first_admin=$(config_value "${configs[0]}" admin_addr)
  while [ "$(date +%s)" -lt "$deadline" ]; do
    for cfg in "${configs[@]}"; do
      local pidfile
      pidfile="$run_dir/$(node_name "$cfg").pid"
      if ! started_alive "$(cat "$pidfile")"; then
        echo "cluster.sh: $(node_name "$cfg") exited during start; last log lines:" >&2
        tail -n 5 "$run_dir/$(node_name "$cfg").log" >&2
        exit 1
      fi
    done
    leader=$("$bin" ctl --addr "$first_admin" status --json 2>/dev/null \
      | sed -n 's/^ *"leader_id": *\([0-9][0-9]*\).*/\1/p' || true)
    [ -n "$leader" ] && break
    sleep 0.2
  done
  if [ -z "$leader" ]; then
    echo "cluster.sh: no leader elected within ${timeout}s; logs are in $run_dir" >&2
    exit 1
  fi
  echo "cluster $name is up: leader is node $leader"
  printf '%-8s %-8s %-18s %-18s %-18s %s\n' NODE PID RAFT ADMIN METRICS LOG
  for cfg in "${configs[@]}"; do
    local n
    n=$(node_name "$cfg")
    printf '%-8s %-8s %-18s %-18s %-18s %s\n' "$n" "$(cat "$run_dir/$n.pid")" \
      "$(config_value "$cfg" raft_addr)" "$(config_value "$cfg" admin_addr)" \
      "$(config_value "$cfg" metrics_addr)" "$run_dir/$n.log"
  done
  echo "try: $bin ctl --addr $first_admin status"
}

stop() {
  local pids=()
  for cfg in "${configs[@]}"; do
    local pidfile pid
    pidfile="$run_dir/$(node_name "$cfg").pid"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if our_process "$pid"; then
      kill -TERM "$pid"
      pids+=("$pid")
    fi
    rm -f "$pidfile"
  done
  local deadline=$(( $(date +%s) + 15 ))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "cluster.sh: pid $pid ignored SIGTERM for 15s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  echo "cluster $name stopped (${#pids[@]} node(s) were running)"
}

status() {
  local bin
  bin=${DECKHAND_BIN:-$root/target/release/deckhand}
  for cfg in "${configs[@]}"; do
    local n pidfile state="stopped"
    n=$(node_name "$cfg"); pidfile="$run_dir/$n.pid"
    if [ -f "$pidfile" ] && our_process "$(cat "$pidfile")"; then state="running (pid $(cat "$pidfile"))"; fi
    echo "$n: $state, admin $(config_value "$cfg" admin_addr), log $run_dir/$n.log"
  done
  "$bin" ctl --addr "$(config_value "${configs[0]}" admin_addr)" status || true
}

"$cmd"
