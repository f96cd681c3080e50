#!/usr/bin/env bash
# Measures leader failover: kill -9 the leader of a local 3-node cluster and
# time until both survivors report the same new leader. Repeats KILLS times
# (default 10), restarting the killed node in between, and prints the median
# and max. Uses the local-3 ports (7101-7103, 7201-7203) with data in a fresh
# temporary directory, so stop a running local-3 cluster first.
#
#   scripts/failover.sh            # release build, 10 kills
#   KILLS=20 scripts/failover.sh
#   DECKHAND_BIN=target/debug/deckhand scripts/failover.sh
#
# After each kill it also counts the survivors' lease lapses: the "lease ran
# out" warnings their logs gain within LAPSE_WINDOW_MS of the kill (default
# 2500; keep it above the lease, 1.5 s by default, or later lapses go
# uncounted). A follower whose lease outlasts the failover has none. Each
# kill waits until both survivors hold a lease (`ctl status`), so each could
# lapse. The count needs a binary that logs lapses and info-level logs (every
# node must log "lease acquired" once it has a lease); the script stops
# otherwise, rather than report 0.
#
# Output: one line per kill, then a summary line, and JSON in OUT (default
# bench/failover.json; a relative path is taken from the repository root).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

kills=${KILLS:-10}
lapse_window_ms=${LAPSE_WINDOW_MS:-2500}
out=${OUT:-bench/failover.json}
[ "$kills" -ge 1 ] 2>/dev/null || { echo "failover.sh: KILLS must be a whole number of at least 1, not '$kills'" >&2; exit 1; }
if [ -z "${DECKHAND_BIN:-}" ]; then
  cargo build --release --quiet
  export DECKHAND_BIN="$root/target/release/deckhand"
fi
bin=$DECKHAND_BIN
grep -aq 'lease ran out' "$bin" || {
  echo "failover.sh: $bin does not log lease lapses (built before 972de02?): cannot count them" >&2
  exit 1
}

work=$(mktemp -d)
cfg="$work/local-3"
mkdir -p "$cfg"
for f in cluster-config/local-3/node*.toml; do
  n=$(basename "$f" .toml)
  sed "s|^data_dir = .*|data_dir = \"$work/data/$n\"|" "$f" > "$cfg/$n.toml"
done
export DECKHAND_RUN_DIR="$work/run"
cleanup() { scripts/cluster.sh stop "$cfg" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

admins=(127.0.0.1:7201 127.0.0.1:7202 127.0.0.1:7203)

leader_seen_by() {  # admin address -> leader id or empty
  "$bin" ctl --addr "$1" status --json 2>/dev/null | sed -n 's/^ *"leader_id": *\([0-9][0-9]*\).*/\1/p'
}

lease_left_ms() {  # admin address -> this node's lease time left in ms, or empty
  "$bin" ctl --addr "$1" status --json 2>/dev/null | sed -n 's/^ *"lease_remaining_ms": *\([0-9][0-9]*\).*/\1/p'
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

logged() {  # pattern, node id -> lines of its log so far that match
  local n
  n=$(grep -c "$1" "$DECKHAND_RUN_DIR/node$2.log" 2>/dev/null) || true
  echo "${n:-0}"
}
lapses_logged() { logged 'lease ran out' "$1"; }

scripts/cluster.sh start "$cfg" >/dev/null
times=()
lapses=()
for i in $(seq 1 "$kills"); do
  # Settle: all three nodes agree on one leader.
  deadline=$(( $(now_ms) + 30000 ))
  while :; do
    l1=$(leader_seen_by "${admins[0]}"); l2=$(leader_seen_by "${admins[1]}"); l3=$(leader_seen_by "${admins[2]}")
    if [ -n "$l1" ] && [ "$l1" = "$l2" ] && [ "$l2" = "$l3" ]; then break; fi
    [ "$(now_ms)" -lt "$deadline" ] || { echo "failover.sh: cluster did not settle" >&2; exit 1; }
    sleep 0.05
  done
  old=$l1
  survivor_ids=()
  for n in 1 2 3; do [ "$n" = "$old" ] || survivor_ids+=("$n"); done
  # Both survivors hold a lease (a restarted node may not yet), and have
  # logged getting one: the log level shows lapses.
  for n in "${survivor_ids[@]}"; do
    while :; do
      left=$(lease_left_ms "127.0.0.1:720$n")
      [ -n "$left" ] && [ "$left" -gt 0 ] && break
      [ "$(now_ms)" -lt "$deadline" ] || { echo "failover.sh: node $n holds no lease" >&2; exit 1; }
      sleep 0.05
    done
    [ "$(logged 'lease acquired' "$n")" -gt 0 ] || {
      echo "failover.sh: node $n holds a lease but never logged 'lease acquired' (log level above info?): lapses would go unseen" >&2
      exit 1
    }
  done
  before=$(( $(lapses_logged "${survivor_ids[0]}") + $(lapses_logged "${survivor_ids[1]}") ))
  pid=$(cat "$DECKHAND_RUN_DIR/node$old.pid")
  kill -9 "$pid"
  start=$(now_ms)
  survivors=()
  for a in "${admins[@]}"; do [ "$a" = "127.0.0.1:720$old" ] || survivors+=("$a"); done
  deadline=$(( start + 30000 ))
  while :; do
    a=$(leader_seen_by "${survivors[0]}"); b=$(leader_seen_by "${survivors[1]}")
    if [ -n "$a" ] && [ "$a" != "$old" ] && [ "$a" = "$b" ]; then break; fi
    [ "$(now_ms)" -lt "$deadline" ] || { echo "failover.sh: no new leader within 30 s" >&2; exit 1; }
  done
  elapsed=$(( $(now_ms) - start ))
  times+=("$elapsed")
  # A lapse shows within the lease of the kill: wait out the window.
  while [ "$(now_ms)" -lt $(( start + lapse_window_ms )) ]; do sleep 0.05; done
  after=$(( $(lapses_logged "${survivor_ids[0]}") + $(lapses_logged "${survivor_ids[1]}") ))
  lapses+=("$(( after - before ))")
  echo "kill $i: leader $old killed, node $a leads after ${elapsed} ms; survivors' lease lapses: $(( after - before ))"
  scripts/cluster.sh start "$cfg" >/dev/null   # restarts the killed node
done

sorted=($(printf '%s\n' "${times[@]}" | sort -n))
count=${#sorted[@]}
if [ $((count % 2)) -eq 1 ]; then
  median=${sorted[$((count / 2))]}
else
  median=$(( (sorted[count / 2 - 1] + sorted[count / 2]) / 2 ))
fi
max=${sorted[$((count - 1))]}
lapsed=0
for l in "${lapses[@]}"; do lapsed=$(( lapsed + l )); done
echo "leader failover after kill -9 over $count kills: median ${median} ms, max ${max} ms; survivors' lease lapses: $lapsed"
mkdir -p "$(dirname "$out")"
printf '{"kills": %d, "median_ms": %d, "max_ms": %d, "samples_ms": [%s], "lease_lapses": %d, "lapse_window_ms": %d}\n' \
  "$count" "$median" "$max" "$(IFS=,; echo "${times[*]}")" "$lapsed" "$lapse_window_ms" > "$out"
