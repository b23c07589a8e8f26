#!/bin/sh
# Runs the backup benchmark (benches/backup.rs) in release mode, with the sqlite3 CLI it compares against.
# Usage: benches/backup.sh   (CARETAKER_BENCH_ROWS, CARETAKER_BENCH_DIR, CARETAKER_BENCH_RATE, CARETAKER_BENCH_TIMEOUT as in the bench)
set -eu
cd "$(dirname "$0")/.."
. benches/need-sqlite3.sh
exec cargo bench --bench backup
