#!/usr/bin/env bash
# The benchmark suite: every figure for deckhand and for the baseline
# (Deckard's single housekeeper policy: one process, a fixed 1 s tick, 1000
# per queue and set per run, most recent first), in the same run, on the
# same redis-server, on this machine.
#
#   scripts/bench.sh
#
# 1. idle cost of IDLE_QUEUES (10,000) queues: Redis commands/s, CPU and RSS
#    per process;
# 2. unlock lateness as consumers see it (QUEUES=1000 queues, RATE=1000
#    msgs/s for TRAFFIC_S=20 s, 500 ms locks);
# 3. messages coming back per second while a follower and then the leader
#    are killed and restarted (the baseline process: killed, back after 4 s);
# 4. draining DRAIN_LOCKS (300,000) expired locks over DRAIN_QUEUES (3,000);
# 5. leader failover (scripts/failover.sh) and shard handoff
#    (scripts/handoff.py), KILLS=5 each.
#
# Builds the release binary (or uses DECKHAND_BIN), uses the local-3 ports
# (stop a running local-3 cluster first). Writes bench/results.json,
# bench/lateness.svg, bench/throughput.svg (and failover.json, handoff.json)
# and prints a table. About 6 minutes on 2 cores after the build.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
for tool in redis-server redis-cli python3; do
  command -v "$tool" >/dev/null || { echo "bench.sh: $tool is required" >&2; exit 1; }
done
if [ -z "${DECKHAND_BIN:-}" ]; then
  cargo build --release --quiet
  export DECKHAND_BIN="$root/target/release/deckhand"
fi
exec python3 scripts/bench.py
