#!/usr/bin/env bash
# Measures deckhand on a local Redis Cluster of three masters (no replicas:
# this machine's two cores are shared by the masters, the nodes and the load
# generator already), then on one Redis in the same run (scripts/redis-bench.sh
# with the same inputs), so the two compare:
#   1. consumer-observed unlock lateness at QUEUES queues with Deckard-like
#      traffic (RATE msgs/s for DURATION, locks uniform LOCK_MS..LOCK_MS_MAX,
#      NEW_PCT % of the queues created during the run, no warm-up);
#   2. time to drain EXPIRED already-expired locks over DRAIN_QUEUES queues;
#   3. what the masters sustain for the same moves (deckhand load --cluster
#      --redis-limit): per core of server time, every master on its own core,
#      and on this machine's wall clock.
# Writes bench/cluster-lateness.json, bench/cluster-drain.json,
# bench/cluster-redis-limit.json and, for one Redis,
# bench/cluster-bench-single-*.json, then prints one table.
#
#   scripts/cluster-bench.sh
#   QUEUES=200 DURATION=10s EXPIRED=100000 DRAIN_QUEUES=1000 scripts/cluster-bench.sh   # quicker
#   SKIP_SINGLE=1 scripts/cluster-bench.sh                                             # the cluster only
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

export QUEUES=${QUEUES:-1000}
export RATE=${RATE:-400}
export DURATION=${DURATION:-30s}
export LOCK_MS=${LOCK_MS:-100}
export LOCK_MS_MAX=${LOCK_MS_MAX:-2000}
export NEW_PCT=${NEW_PCT:-20}
export EXPIRED=${EXPIRED:-1000000}
export DRAIN_QUEUES=${DRAIN_QUEUES:-10000}

# The caller's store settings must not reach the nodes or the load runs of
# either half, nor redis-bench.sh's step switches the single-Redis half.
unset DECKHAND_STORE_URL DECKHAND_STORE_CLUSTER SKIP_LATENESS SKIP_DRAIN
for tool in redis-server redis-cli python3; do
  command -v "$tool" >/dev/null || { echo "cluster-bench.sh: $tool is required" >&2; exit 1; }
done
if [ -z "${DECKHAND_BIN:-}" ]; then
  cargo build --release --quiet
  export DECKHAND_BIN="$root/target/release/deckhand"
fi
bin=$DECKHAND_BIN

work=$(mktemp -d)
cfg="$work/local-3"; mkdir -p "$cfg"
export DECKHAND_RUN_DIR="$work/run"
cleanup() {
  scripts/cluster.sh stop "$cfg" >/dev/null 2>&1 || true
  for i in 1 2 3; do
    [ -f "$work/redis-$i/redis.pid" ] && kill "$(cat "$work/redis-$i/redis.pid")" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
# A free port whose cluster bus port (+10000) is free too: at most 55535.
free_port() {
  python3 - <<'PY'
import random, socket
while True:
    port = random.randint(20000, 55535)
    try:
        for p in (port, port + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", p)); s.close()
        print(port)
        break
    except OSError:
        pass
PY
}
ports=()
for i in 1 2 3; do
  port=$(free_port)
  ports+=("$port")
  mkdir -p "$work/redis-$i"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work/redis-$i" \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 15000 \
    --notify-keyspace-events Kz \
    --daemonize yes --pidfile "$work/redis-$i/redis.pid" --logfile "$work/redis-$i/redis.log"
done
for port in "${ports[@]}"; do
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
for _ in $(seq 300); do
  ok=0
  for port in "${ports[@]}"; do
    redis-cli -p "$port" cluster info | grep -q 'cluster_state:ok' && ok=$((ok + 1))
  done
  [ "$ok" = 3 ] && break
  sleep 0.1
done
[ "$ok" = 3 ] || { echo "cluster-bench.sh: the Redis Cluster did not become ok" >&2; exit 1; }
url="redis://127.0.0.1:${ports[0]}?addr=127.0.0.1:${ports[1]}&addr=127.0.0.1:${ports[2]}"
flush_all() { for port in "${ports[@]}"; do redis-cli -p "$port" flushall >/dev/null; done; }

for f in cluster-config/local-3/node*.toml; do
  n=$(basename "$f" .toml)
  sed "s|^data_dir = .*|data_dir = \"$work/data/$n\"|" "$f" > "$cfg/$n.toml"
done
(
  # Only the nodes get the cluster store: redis-bench.sh below sets its own.
  export DECKHAND_STORE_URL="$url" DECKHAND_STORE_CLUSTER=true
  scripts/cluster.sh start "$cfg" >/dev/null
)
mkdir -p bench

echo "cluster 1. unlock lateness: $QUEUES queues, $RATE msgs/s for $DURATION, locks of $LOCK_MS-$LOCK_MS_MAX ms" >&2
"$bin" load --store "$url" --cluster --queues "$QUEUES" --rate "$RATE" --duration "$DURATION" \
  --lock-ms "$LOCK_MS" --lock-ms-max "$LOCK_MS_MAX" --new-queues-pct "$NEW_PCT" \
  --warmup 0s --json | tee bench/cluster-lateness.json

echo "cluster 2. drain: $EXPIRED expired locks over $DRAIN_QUEUES queues" >&2
flush_all
"$bin" load --store "$url" --cluster --queues "$DRAIN_QUEUES" --expired-locks "$EXPIRED" \
  --admin 127.0.0.1:7201 --json | tee bench/cluster-drain.json

echo "cluster 3. the masters alone, same moves" >&2
scripts/cluster.sh stop "$cfg" >/dev/null
flush_all
"$bin" load --store "$url" --cluster --queues "$DRAIN_QUEUES" --redis-limit "$EXPIRED" --json \
  | tee bench/cluster-redis-limit.json
cleanup
trap - EXIT

if [ -z "${SKIP_SINGLE:-}" ]; then
  echo "one Redis, same inputs (scripts/redis-bench.sh)" >&2
  env -u NOTIFY OUT_PREFIX=cluster-bench-single- scripts/redis-bench.sh
fi

python3 - "${SKIP_SINGLE:-}" <<'PY'
import json, sys
def load(name):
    try:
        with open(f"bench/{name}.json") as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except FileNotFoundError:
        return None
rows = [("3-master cluster", load("cluster-lateness"), load("cluster-drain"), load("cluster-redis-limit"))]
if not sys.argv[1]:
    rows.append(("one Redis", load("cluster-bench-single-lateness"),
                 load("cluster-bench-single-drain"), load("cluster-bench-single-redis-limit")))
# The server-time limit: one Redis's, or the cluster's were every master on
# its own core (what a real deployment has); the wall-clock limit: what this
# machine did, the driver and every master sharing its cores, as the
# cluster's own drain did.
print("| store | lateness p50 / p99 / max | drain | limit: per core of server time | limit: every master on its own core | limit: this machine's wall clock | drain / server-time limit (own core each) | drain / wall-clock limit |")
print("|---|---|---|---|---|---|---|---|")
pct = lambda a, b: f"{100 * a / b:.1f} %" if b else "-"
for name, lat, drain, limit in rows:
    if not (lat and drain and limit):
        print(f"| {name} | (a result file is missing) |")
        continue
    l = lat["unlock_lateness_ms"]
    parallel = limit.get("parallel_elements_per_s") or limit["elements_per_s"]
    d = drain["drain_per_s"]
    print(f"| {name} | {l['p50']} / {l['p99']} / {l['max']} ms | {d:,.0f}/s "
          f"| {limit['elements_per_s']:,.0f}/s | {parallel:,.0f}/s | {limit['wall_elements_per_s']:,.0f}/s "
          f"| {pct(d, parallel)} | {pct(d, limit['wall_elements_per_s'])} |")
PY
