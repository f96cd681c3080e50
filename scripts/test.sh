#!/usr/bin/env bash
# The single test command (README, CI): installs what the tests need, then
# builds and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tests run the real binary through scripts/cluster.sh, which needs these.
for tool in sed grep nohup; do
  command -v "$tool" >/dev/null || { echo "test.sh: $tool is required" >&2; exit 1; }
done

# The Redis tests start their own redis-server on a free port; the Redis
# Cluster tests form a cluster of them with redis-cli (package redis-tools,
# which redis-server depends on).
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "test.sh: installing redis-server from Debian's packages" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
  # The package may start a system instance; the tests do not use it.
  $sudo systemctl stop redis-server 2>/dev/null || true
fi
redis-server --version
redis-cli --version

# scripts/prometheus-check.sh runs a real Prometheus; promtool checks metric names.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "test.sh: installing prometheus from Debian's packages" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq prometheus >/dev/null
  $sudo systemctl stop prometheus prometheus-node-exporter 2>/dev/null || true
fi

# scripts/chaos.sh partitions nodes with network namespaces (iproute2) and
# scrapes their metrics with curl.
for pkg_tool in iproute2:ip curl:curl python3:python3; do
  if [ "$(id -u)" -eq 0 ] && ! command -v "${pkg_tool#*:}" >/dev/null; then
    echo "test.sh: installing ${pkg_tool%%:*} from Debian's packages" >&2
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${pkg_tool%%:*}" >/dev/null
  fi
done

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
cargo build --locked --all-targets
cargo test --locked --all-targets "$@"

# Prometheus itself through a transfer and a leader kill (debug binary,
# short phases; the documented run uses the defaults). Needs the local-3
# ports, so it runs after the tests. SKIP_PROMETHEUS=1 skips it.
if [ "${SKIP_PROMETHEUS:-0}" != 1 ] && [ $# -eq 0 ]; then
  DECKHAND_BIN=target/debug/deckhand PHASE=12 KILLS=1 OUT=target/prometheus-check.json \
    scripts/prometheus-check.sh
fi

# Faults on real processes (SIGSTOP, kill -9, partitions, Redis restarts)
# with the check of every message: the short pass (debug binary, one round;
# docs/operations.md gives the long one). Network namespaces need root.
# SKIP_CHAOS=1 skips it.
if [ "${SKIP_CHAOS:-0}" != 1 ] && [ $# -eq 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    DECKHAND_BIN=target/debug/deckhand OUT=target/chaos.json scripts/chaos.sh --short
  else
    # Not silently: a CI that lost root must not pass without its chaos pass.
    echo "test.sh: scripts/chaos.sh needs root (network namespaces): run scripts/test.sh as root, or set SKIP_CHAOS=1 to skip the pass on purpose" >&2
    exit 1
  fi
fi
