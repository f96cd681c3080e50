#!/usr/bin/env bash
# The single test command (README, CI): installs what the tests need, then
# builds and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tests run the real binary through scripts/cluster.sh, which needs these.
for tool in sed grep nohup; do
  command -v "$tool" >/dev/null || { echo "test.sh: $tool is required" >&2; exit 1; }
done

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
cargo build --locked --all-targets
cargo test --locked --all-targets "$@"
