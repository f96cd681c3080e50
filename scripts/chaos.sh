#!/usr/bin/env bash
# Faults on real processes: a 3-node cluster of deckhand binaries, each in its
# own network namespace, on a real Redis, under Deckard-like traffic
# (`deckhand load --check`), through:
#
#   - SIGSTOP of a shard owner for longer than lease + margin, then SIGCONT;
#   - kill -9 of the leader, and of a follower, each restarted;
#   - a network partition of a follower, and of the leader, from the other
#     nodes (Redis stays reachable: the dangerous case for a stale owner);
#   - kill -9 of Redis with persistence (AOF, appendfsync always), restarted;
#   - then Redis restarted without persistence (every key gone) and a second
#     run of traffic, which must work as well.
#
# Each traffic run ends with the integrity check of every message (`load
# --check`: each message in exactly one of Deckard's sets or removed, none
# back early, none missing). The script prints unlock lateness through the
# faults and the fenced writes counted, writes JSON to $OUT (default
# bench/chaos.json) and exits 1 if any check fails.
#
#   scripts/chaos.sh                  # the long pass: 3 rounds of every fault
#   scripts/chaos.sh --short          # CI: one round, short holds
#   DECKHAND_BIN=target/debug/deckhand scripts/chaos.sh --short
#
# Needs root, iproute2 (`ip netns`), redis-server, curl and python3. One run
# at a time: the bridge, namespaces and addresses have fixed names. The partition is real:
# each node has its own namespace on a bridge, and a partition adds
# blackhole routes between the node and its peers in both directions.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

short=0
[ "${1:-}" = "--short" ] && short=1
rounds=${CHAOS_ROUNDS:-$([ $short = 1 ] && echo 1 || echo 3)}
out=${OUT:-bench/chaos.json}

fail() { echo "chaos.sh: $*" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || fail "needs root (network namespaces for the partition)"
command -v ip >/dev/null || fail "needs iproute2 (ip)"
command -v redis-server >/dev/null || fail "needs redis-server (apt-get install redis-server)"
command -v python3 >/dev/null || fail "needs python3 (reads the JSON results)"

if [ -z "${DECKHAND_BIN:-}" ]; then
  cargo build --release --quiet
  DECKHAND_BIN="$root/target/release/deckhand"
fi
bin=$(realpath "$DECKHAND_BIN")

# Names of everything this script creates, so a rerun cleans up a crashed run.
br=dhchaos0
net=10.77.0
redis_ip=$net.254
redis_port=6390
ns() { echo "dhchaos-n$1"; }
work=$(mktemp -d /tmp/deckhand-chaos.XXXXXX)
declare -A pids
redis_pid=""
load_pid=""

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
log() { printf '%6s ms  %s\n' $(( $(now_ms) - t0 )) "$*"; }

teardown_net() {
  for n in 1 2 3; do ip netns del "$(ns $n)" 2>/dev/null || true; done
  ip link del "$br" 2>/dev/null || true
}
cleanup() {
  set +e
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null
  for n in "${!pids[@]}"; do kill -CONT "${pids[$n]}" 2>/dev/null; kill -9 "${pids[$n]}" 2>/dev/null; done
  [ -n "$redis_pid" ] && kill -9 "$redis_pid" 2>/dev/null
  wait 2>/dev/null
  teardown_net
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# --- network: one bridge, one namespace per node -----------------------------
teardown_net
ip link add "$br" type bridge
ip addr add "$redis_ip/24" dev "$br"
ip link set "$br" up
for n in 1 2 3; do
  ip netns add "$(ns $n)"
  ip link add "dhchaos-v$n" type veth peer name eth0 netns "$(ns $n)"
  ip link set "dhchaos-v$n" master "$br" up
  ip -n "$(ns $n)" addr add "$net.$n/24" dev eth0
  ip -n "$(ns $n)" link set eth0 up
  ip -n "$(ns $n)" link set lo up
done

partition() {  # node: cut it from its peers both ways (not from Redis)
  local p=$1
  for m in 1 2 3; do
    [ "$m" = "$p" ] && continue
    ip -n "$(ns $p)" route replace blackhole "$net.$m/32"
    ip -n "$(ns $m)" route replace blackhole "$net.$p/32"
  done
}
heal() {
  local p=$1
  for m in 1 2 3; do
    [ "$m" = "$p" ] && continue
    ip -n "$(ns $p)" route del blackhole "$net.$m/32" 2>/dev/null || true
    ip -n "$(ns $m)" route del blackhole "$net.$p/32" 2>/dev/null || true
  done
}

# --- Redis --------------------------------------------------------------------
start_redis() {  # persist: yes|no
  if redis-cli -h "$redis_ip" -p "$redis_port" ping >/dev/null 2>&1; then
    fail "a Redis already answers on $redis_ip:$redis_port (left by a killed run?): stop it first"
  fi
  mkdir -p "$work/redis"
  redis-server --bind "$redis_ip" --port "$redis_port" --dir "$work/redis" \
    --appendonly "$1" --appendfsync always --save "" \
    --notify-keyspace-events Kz --protected-mode no \
    >>"$work/redis.log" 2>&1 &
  redis_pid=$!
  local deadline=$(( $(now_ms) + 10000 ))
  until redis-cli -h "$redis_ip" -p "$redis_port" ping >/dev/null 2>&1; do
    [ "$(now_ms)" -lt "$deadline" ] || fail "redis-server did not start (see $work/redis.log)"
    sleep 0.05
  done
  local serving
  serving=$(redis-cli -h "$redis_ip" -p "$redis_port" info server | tr -d '\r' | sed -n 's/^process_id://p')
  [ "$serving" = "$redis_pid" ] || fail "the Redis answering is pid $serving, not the one started ($redis_pid)"
}

# --- nodes --------------------------------------------------------------------
write_config() {
  local n=$1
  cat >"$work/node$n.toml" <<EOF
node_id = $n
data_dir = "$work/data/node$n"
raft_addr = "$net.$n:7101"
admin_addr = "$net.$n:7201"
metrics_addr = "$net.$n:9101"
[cluster]
name = "chaos"
shards = 64
[[cluster.members]]
id = 1
raft_addr = "$net.1:7101"
admin_addr = "$net.1:7201"
[[cluster.members]]
id = 2
raft_addr = "$net.2:7101"
admin_addr = "$net.2:7201"
[[cluster.members]]
id = 3
raft_addr = "$net.3:7101"
admin_addr = "$net.3:7201"
[store]
url = "redis://$redis_ip:$redis_port/0"
EOF
}
start_node() {
  local n=$1
  ip netns exec "$(ns $n)" "$bin" node --config "$work/node$n.toml" \
    >>"$work/node$n.log" 2>&1 </dev/null &
  pids[$n]=$!
}
leader_seen_by() {
  "$bin" ctl --addr "$net.$1:7201" status --json 2>/dev/null \
    | sed -n 's/^ *"leader_id": *\([0-9][0-9]*\).*/\1/p'
}
wait_for_leader() {  # every node agrees on one leader; prints it
  local deadline=$(( $(now_ms) + 30000 )) a b c
  while :; do
    a=$(leader_seen_by 1); b=$(leader_seen_by 2); c=$(leader_seen_by 3)
    if [ -n "$a" ] && [ "$a" = "$b" ] && [ "$b" = "$c" ]; then echo "$a"; return; fi
    [ "$(now_ms)" -lt "$deadline" ] || fail "the nodes did not agree on a leader within 30 s"
    sleep 0.1
  done
}
a_follower() {  # of leader $1
  local n
  for n in 1 2 3; do [ "$n" != "$1" ] && { echo "$n"; return; }; done
}
fenced_of() {  # node: deckhand_fenced_writes_total of its current process (0 if unreachable)
  local v
  v=$(curl -s --max-time 2 "http://$net.$1:9101/metrics" 2>/dev/null \
    | sed -n 's/^deckhand_fenced_writes_total \([0-9.e+]*\)$/\1/p')
  python3 -c "print(int(float('${v:-0}')))"
}
fenced_writes() {  # summed over the nodes' current processes
  echo $(( $(fenced_of 1) + $(fenced_of 2) + $(fenced_of 3) ))
}

hold() { [ $short = 1 ] && echo "$1" || echo "$2"; }

kill_and_restart() {  # node: kill -9, keep its fenced-write count, restart it
  local n=$1
  fenced_before=$(( fenced_before + $(fenced_of "$n") ))   # its counter dies with it
  kill -9 "${pids[$n]}"; wait "${pids[$n]}" 2>/dev/null || true
  # Past lease + margin (1.9 s by default), so its shards move before it is back.
  sleep "$(hold 2.5 3)"; start_node "$n"
}

t0=$(now_ms)
start_redis yes
for n in 1 2 3; do write_config "$n"; start_node "$n"; done
leader=$(wait_for_leader)
log "cluster up, node $leader leads"

traffic() {  # seconds json
  "$bin" load --store "redis://$redis_ip:$redis_port/0" --queues 200 --rate 200 \
    --duration "$1s" --lock-ms 100 --lock-ms-max 2000 --timeout-ms 1500 \
    --warmup 3s --grace 30s --check --json >"$2" 2>"$2.err" &
  load_pid=$!
}

# --- run 1: every fault under traffic -----------------------------------------
# Traffic for as long as the faults take (one round: about 26 s short, 34 s
# long, measured when the short holds of a round were 2.5 s shorter in all:
# two kills 1 s each, the stop 0.5 s), so the figures are not diluted by a
# quiet tail.
per_round=$(hold 29 35)
run1=$(( rounds * per_round + 5 ))
traffic "$run1" "$work/load1.json"
sleep 5   # warmup (3 s) plus a little traffic before the first fault
fenced_before=0
for round in $(seq 1 "$rounds"); do
  leader=$(wait_for_leader)
  f=$(a_follower "$leader")
  log "round $round: SIGSTOP node $f (an owner) past lease + margin"
  kill -STOP "${pids[$f]}"; sleep "$(hold 3 4)"; kill -CONT "${pids[$f]}"
  sleep 2

  leader=$(wait_for_leader)
  log "round $round: kill -9 leader $leader"
  kill_and_restart "$leader"
  sleep 2

  leader=$(wait_for_leader)
  f=$(a_follower "$leader")
  log "round $round: kill -9 follower $f"
  kill_and_restart "$f"
  sleep 2

  leader=$(wait_for_leader)
  f=$(a_follower "$leader")
  log "round $round: partition follower $f from its peers"
  partition "$f"; sleep "$(hold 3 5)"; heal "$f"
  sleep 2

  leader=$(wait_for_leader)
  log "round $round: partition leader $leader from its peers"
  partition "$leader"; sleep "$(hold 3 5)"; heal "$leader"
  sleep 2

  leader=$(wait_for_leader)
  log "round $round: kill -9 Redis (AOF, fsync always) and restart it"
  kill -9 "$redis_pid"; wait "$redis_pid" 2>/dev/null || true
  sleep 1; start_redis yes
  sleep 2
done
log "faults over; waiting for the traffic run to end and check every message"
wait "$load_pid" || true
load_pid=""
fenced=$(( fenced_before + $(fenced_writes) ))

# --- run 2: Redis loses everything; deckhand must carry on ---------------------
log "restarting Redis without persistence: every key is gone"
kill -9 "$redis_pid"; wait "$redis_pid" 2>/dev/null || true
rm -rf "$work/redis"; start_redis no
traffic "$(hold 10 20)" "$work/load2.json"
wait "$load_pid" || true
load_pid=""
log "done"

for n in 1 2 3; do
  kill -0 "${pids[$n]}" 2>/dev/null || fail "node $n exited during the run (see its log: KEEP=1)"
done

mkdir -p "$(dirname "$out")"
python3 - "$work/load1.json" "$work/load2.json" "$fenced" "$rounds" "$short" "$out" <<'EOF'
import json, sys
l1, l2, fenced, rounds, short, out = sys.argv[1:7]
def read(path):
    try:
        with open(path) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except Exception as e:
        err = open(path + ".err").read()[-2000:] if __import__("os").path.exists(path + ".err") else ""
        sys.exit(f"chaos.sh: no result in {path}: {e}\n{err}")
runs = {"faults": read(l1), "after_redis_wipe": read(l2)}
ok = True
for name, r in runs.items():
    c = r.get("census") or {}
    good = (c.get("duplicated", 1) == 0 and c.get("lost", 1) == 0
            and c.get("resurrected", 1) == 0 and c.get("unreadable", 1) == 0
            and r["early"] == 0 and r["missing"] == 0)
    ok &= good
    u = r["unlock_lateness_ms"]
    t = r["timeout_lateness_ms"]
    print(f"{name}: {r['added']} messages, {r['ack_locks'] + r['nack_locks']} locks, "
          f"{r['timeouts']} left to time out; store errors seen by the client {r['errors']}")
    print(f"  unlock lateness p50 {u['p50']} ms, p90 {u['p90']} ms, p99 {u['p99']} ms, max {u['max']} ms; "
          f"timeout lateness p99 {t['p99']} ms, max {t['max']} ms")
    print(f"  check: {c.get('present', 0)} in exactly one set, {c.get('removed', 0)} removed and gone, "
          f"{c.get('duplicated')} duplicated, {c.get('lost')} lost, {c.get('resurrected')} resurrected, "
          f"{c.get('uncertain')} uncertain; early {r['early']}, missing {r['missing']}: "
          f"{'OK' if good else 'FAILED'}")
    for p in c.get("problems", []):
        print("   ", p)
print(f"fenced writes counted (stale owners stopped by the store): {fenced}")
json.dump({"rounds": int(rounds), "short": short == "1", "fenced_writes": int(fenced),
           "ok": bool(ok), **runs}, open(out, "w"), indent=1)
print(f"wrote {out}")
sys.exit(0 if ok else 1)
EOF
