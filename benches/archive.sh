#!/bin/sh
# Archive-then-purge benchmark: caretaker against the seed recipe, same machine, same run.
# Usage: benches/archive.sh [rows] [dir]   (defaults: 1000000 rows, the temp directory)
set -eu
cd "$(dirname "$0")/.."
CARETAKER_BENCH_ROWS="${1:-1000000}" CARETAKER_BENCH_DIR="${2:-${TMPDIR:-/tmp}}" \
    cargo bench --bench archive
