#!/bin/sh
# Runs the backup benchmark (benches/backup.rs) in release mode, with the sqlite3 CLI it compares against.
# Usage: benches/backup.sh   (CARETAKER_BENCH_ROWS, CARETAKER_BENCH_DIR, CARETAKER_BENCH_RATE, CARETAKER_BENCH_TIMEOUT as in the bench)
set -eu
cd "$(dirname "$0")/.."
if ! command -v sqlite3 >/dev/null 2>&1; then
    echo "installing the sqlite3 CLI for the reference recipe" >&2
    if command -v apt-get >/dev/null 2>&1; then
        apt-get install -y sqlite3
    else
        echo "sqlite3 is missing; install it and run again" >&2
        exit 1
    fi
fi
exec cargo bench --bench backup
