#!/bin/sh
# Re-pricing benchmark: caretaker's pricing job against a recalculate_costs.py-style script,
# same machine, same run, gateway-sim writing during each.
# Usage: benches/pricing.sh [rows] [dir]   (defaults: 1000000 rows, the temp directory)
set -eu
cd "$(dirname "$0")/.."
CARETAKER_BENCH_ROWS="${1:-1000000}" CARETAKER_BENCH_DIR="${2:-${TMPDIR:-/tmp}}" \
    cargo bench --bench pricing
