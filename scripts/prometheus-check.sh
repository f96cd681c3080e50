#!/usr/bin/env bash
# Runs a real Prometheus server (Debian's `prometheus` package) against a
# local 3-node cluster on Redis, under traffic, through a leadership
# transfer and leader kills, then asks Prometheus itself:
#
#   - at every evaluation, at most one `instance` carries queue gauges;
#   - `sum(deckhand_node_is_leader)` is 1 outside the failover windows
#     (WINDOW seconds after each transfer, kill or restart);
#   - the queue gauges are present most of the time.
#
#   scripts/prometheus-check.sh                 # release build
#   DECKHAND_BIN=target/debug/deckhand scripts/prometheus-check.sh
#   PHASE=20 KILLS=2 WINDOW=6 scripts/prometheus-check.sh
#
# Uses the local-3 ports (7101-7103, 7201-7203, 9101-9103): stop a running
# local-3 cluster first. Prometheus scrapes every second and the nodes are
# told so (DECKHAND_METRICS_SCRAPE_INTERVAL=1s). Writes
# bench/prometheus-check.json (or $OUT) and exits non-zero on any violation.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

phase=${PHASE:-20}
kills=${KILLS:-2}
window=${WINDOW:-6}

if ! command -v prometheus >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  else
    echo "prometheus-check.sh: needs Debian's prometheus package (apt-get install prometheus)" >&2
    exit 2
  fi
fi
command -v redis-server >/dev/null || { echo "prometheus-check.sh: needs redis-server" >&2; exit 2; }
if [ -z "${DECKHAND_BIN:-}" ]; then
  cargo build --release --quiet
  export DECKHAND_BIN="$root/target/release/deckhand"
fi
bin=$DECKHAND_BIN

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { python3 -c 'import time; print(f"{time.time():.3f}")'; }

work=$(mktemp -d)
cfg="$work/local-3"
mkdir -p "$cfg" "$work/prom"
for f in cluster-config/local-3/node*.toml; do
  n=$(basename "$f" .toml)
  sed "s|^data_dir = .*|data_dir = \"$work/data/$n\"|" "$f" > "$cfg/$n.toml"
done
export DECKHAND_RUN_DIR="$work/run"
redis_port=$(free_port)
prom_port=$(free_port)
pids=()
cleanup() {
  scripts/cluster.sh stop "$cfg" >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
export DECKHAND_STORE_URL="redis://127.0.0.1:$redis_port/0"
export DECKHAND_METRICS_SCRAPE_INTERVAL=1s
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: deckhand
    static_configs:
      - targets: ["127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103"]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prom" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)

scripts/cluster.sh start "$cfg" >/dev/null
"$bin" load --store "$DECKHAND_STORE_URL" --queues 50 --rate 200 \
  --duration "$(( phase * (2 + 2 * kills) + 30 ))s" --grace 1s --json >"$work/load.json" 2>"$work/load.log" &
pids+=($!)

for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$prom_port/-/ready" >/dev/null && break
  sleep 0.2
done

leader() {
  "$bin" ctl --addr 127.0.0.1:7201 status --json 2>/dev/null \
    | sed -n 's/^ *"leader_id": *\([0-9][0-9]*\).*/\1/p'
}

start=$(now)
events=()
echo "steady for ${phase}s"
sleep "$phase"
l=$(leader); to=$(( l % 3 + 1 ))
events+=("$(now)")
"$bin" ctl --addr 127.0.0.1:7201 transfer-leader "$to" >/dev/null
echo "transferred leadership $l -> $to"
sleep "$phase"
for i in $(seq 1 "$kills"); do
  l=$(leader)
  events+=("$(now)")
  kill -9 "$(cat "$DECKHAND_RUN_DIR/node$l.pid")"
  echo "killed leader $l"
  sleep "$phase"
  events+=("$(now)")
  scripts/cluster.sh start "$cfg" >/dev/null
  echo "restarted node $l"
  sleep "$phase"
done
end=$(now)
sleep 2  # let the last scrape land

python3 - "$prom_port" "$start" "$end" "$window" "${events[@]}" <<'PY'
import json, os, sys, urllib.parse, urllib.request
port, start, end, window = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
events = [float(e) for e in sys.argv[5:]]
def query(q, step="0.5"):
    url = f"http://127.0.0.1:{port}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": q, "start": start, "end": end, "step": step})
    data = json.load(urllib.request.urlopen(url))
    assert data["status"] == "success", data
    out = {}
    for series in data["data"]["result"]:
        for t, v in series["values"]:
            out[float(t)] = out.get(float(t), 0) + float(v)
    return out
steps = [start + 0.5 * i for i in range(int((end - start) / 0.5) + 1)]
instances = query('count(count by (instance) ({__name__=~"deckhand_queue_.*"}))')
leaders = query("sum(deckhand_node_is_leader)")
in_window = lambda t: any(e <= t < e + window for e in events)
multi = [t for t, v in instances.items() if v > 1]
steady = [t for t in steps if not in_window(t) and t > start + window]
bad_leader = [t for t in steady if leaders.get(t) != 1]
with_gauges = sum(1 for t in steps if instances.get(t, 0) == 1)
result = {
    "evaluations": len(steps),
    "evaluations_with_gauges_from_two_or_more_instances": len(multi),
    "evaluations_with_gauges": with_gauges,
    "steady_evaluations": len(steady),
    "steady_evaluations_where_leader_sum_is_not_1": len(bad_leader),
    "events": len(events),
    "window_s": window,
}
print(json.dumps(result, indent=2))
with open(os.environ.get("OUT", "bench/prometheus-check.json"), "w") as f:
    json.dump(result, f, indent=2)
ok = not multi and not bad_leader and with_gauges > len(steps) // 2
print("prometheus-check:", "OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
PY
