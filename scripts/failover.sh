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
# out" warnings, or the "lease acquired" lines (a renewal of a lease that had
# run out), whichever are more, that each survivor's log gains within
# LAPSE_WINDOW_MS of the kill (default 2500; keep it above the lease, 1.5 s
# by default, or later lapses go uncounted). A follower whose lease outlasts the failover has none. Each
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
[[ $kills =~ ^[1-9][0-9]*$ ]] || { echo "failover.sh: KILLS must be a whole number of at least 1, not '$kills'" >&2; exit 1; }
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

status_number() {  # admin address, key -> that number in `ctl status --json`, or empty
  # `|| true`: a node not listening yet is "no answer", not the end of the script.
  "$bin" ctl --addr "$1" status --json 2>/dev/null | sed -n "s/^ *\"$2\": *\([0-9][0-9]*\).*/\1/p" || true
}
leader_seen_by() { status_number "$1" leader_id; }   # leader id or empty
lease_left_ms() { status_number "$1" lease_remaining_ms; }   # this node's lease time left

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

logged() {  # pattern, node id -> lines of its log so far that match
  local n
  n=$(grep -c "$1" "$DECKHAND_RUN_DIR/node$2.log" 2>/dev/null) || true
  echo "${n:-0}"
}
# A lapse shows as a "lease ran out" warning (the runner saw it) and, once a
# leader answers again, as a "lease acquired" (logged exactly when a renewal
# finds the lease run out). Either can be missing: the runner may not wake
# before a renewal that comes within its wake-up delay, and a lease not
# renewed within the window has no "acquired" yet. Per survivor, a kill
# counts the larger of the two.
lapse_signs() {  # node id -> "<ran out> <acquired>" line counts so far
  echo "$(logged 'lease ran out' "$1") $(logged 'lease acquired' "$1")"
}
lapses_since() {  # "<ran out> <acquired>" before, node id -> lapses since
  local b_out b_acq n_out n_acq d_out d_acq
  read -r b_out b_acq <<< "$1"
  read -r n_out n_acq <<< "$(lapse_signs "$2")"
  d_out=$(( n_out - b_out )); d_acq=$(( n_acq - b_acq ))
  echo $(( d_out > d_acq ? d_out : d_acq ))
}

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
  before0=$(lapse_signs "${survivor_ids[0]}"); before1=$(lapse_signs "${survivor_ids[1]}")
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
  lapsed_now=$(( $(lapses_since "$before0" "${survivor_ids[0]}") + $(lapses_since "$before1" "${survivor_ids[1]}") ))
  lapses+=("$lapsed_now")
  echo "kill $i: leader $old killed, node $a leads after ${elapsed} ms; survivors' lease lapses: $lapsed_now"
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
