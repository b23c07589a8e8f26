#!/bin/sh
# Runs the many-databases benchmark (benches/multidb.rs) in release mode, with the sqlite3 CLI its recipe uses.
# Usage: benches/multidb.sh   (CARETAKER_BENCH_DATABASES, CARETAKER_BENCH_MB, CARETAKER_BENCH_DIR as in the bench)
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
exec cargo bench --bench multidb
