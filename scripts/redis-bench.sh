#!/usr/bin/env bash
# Measures deckhand on Redis (local 3-node cluster, one redis-server, loopback):
#   1. consumer-observed unlock lateness at QUEUES (default 1000) queues with
#      Deckard-like traffic (deckhand load: RATE msgs/s for DURATION, locks
#      uniform from LOCK_MS to LOCK_MS_MAX, NEW_PCT % of the queues created
#      during the run, no warm-up);
#   2. time to drain EXPIRED (default 1,000,000) already-expired locks spread
#      over DRAIN_QUEUES (default 10,000) queues;
#   3. what one Redis sustains for the same moves: server time per element from
#      INFO commandstats while a pipelined loop runs the housekeeping script.
# Writes bench/${OUT_PREFIX}lateness.json, bench/${OUT_PREFIX}drain.json and
# bench/${OUT_PREFIX}redis-limit.json (OUT_PREFIX is empty by default).
#
#   scripts/redis-bench.sh
#   QUEUES=200 DURATION=10s EXPIRED=100000 DRAIN_QUEUES=1000 scripts/redis-bench.sh   # quicker
#   SKIP_LATENESS=1 scripts/redis-bench.sh                                             # drain and limit only
#   SKIP_DRAIN=1 scripts/redis-bench.sh                                                # lateness only
#   NOTIFY= SKIP_DRAIN=1 scripts/redis-bench.sh        # Redis without keyspace events: the polling fallback
# Redis runs with notify-keyspace-events Kz (NOTIFY) so the nodes use lock events.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

QUEUES=${QUEUES:-1000}
RATE=${RATE:-400}
DURATION=${DURATION:-30s}
LOCK_MS=${LOCK_MS:-100}
LOCK_MS_MAX=${LOCK_MS_MAX:-2000}
NEW_PCT=${NEW_PCT:-20}
EXPIRED=${EXPIRED:-1000000}
DRAIN_QUEUES=${DRAIN_QUEUES:-10000}

command -v redis-server >/dev/null || { echo "redis-bench.sh: redis-server is required (apt-get install redis-server)" >&2; exit 1; }
if [ -z "${DECKHAND_BIN:-}" ]; then
  cargo build --release --quiet
  export DECKHAND_BIN="$root/target/release/deckhand"
fi
bin=$DECKHAND_BIN

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
  --notify-keyspace-events "${NOTIFY-Kz}" \
  --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log"
url="redis://127.0.0.1:$port/0"
cfg="$work/local-3"; mkdir -p "$cfg"
for f in cluster-config/local-3/node*.toml; do
  n=$(basename "$f" .toml)
  sed "s|^data_dir = .*|data_dir = \"$work/data/$n\"|" "$f" > "$cfg/$n.toml"
done
export DECKHAND_RUN_DIR="$work/run" DECKHAND_STORE_URL="$url"
cleanup() {
  scripts/cluster.sh stop "$cfg" >/dev/null 2>&1 || true
  [ -f "$work/redis.pid" ] && kill "$(cat "$work/redis.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
scripts/cluster.sh start "$cfg" >/dev/null
mkdir -p bench

if [ -z "${SKIP_LATENESS:-}" ]; then
  echo "1. unlock lateness: $QUEUES queues, $RATE msgs/s for $DURATION, locks of $LOCK_MS-$LOCK_MS_MAX ms" >&2
  "$bin" load --store "$url" --queues "$QUEUES" --rate "$RATE" --duration "$DURATION" \
    --lock-ms "$LOCK_MS" --lock-ms-max "$LOCK_MS_MAX" --new-queues-pct "$NEW_PCT" \
    --warmup 0s --json | tee "bench/${OUT_PREFIX:-}lateness.json"
fi

if [ -z "${SKIP_DRAIN:-}" ]; then
  echo "2. drain: $EXPIRED expired locks over $DRAIN_QUEUES queues" >&2
  redis-cli -p "$port" flushdb >/dev/null
  "$bin" load --store "$url" --queues "$DRAIN_QUEUES" --expired-locks "$EXPIRED" \
    --admin 127.0.0.1:7201 --json | tee "bench/${OUT_PREFIX:-}drain.json"

  echo "3. Redis alone, same moves" >&2
  scripts/cluster.sh stop "$cfg" >/dev/null
  redis-cli -p "$port" flushdb >/dev/null
  "$bin" load --store "$url" --queues "$DRAIN_QUEUES" --redis-limit "$EXPIRED" --json | tee "bench/${OUT_PREFIX:-}redis-limit.json"
fi
