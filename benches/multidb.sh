#!/bin/sh
# Runs the many-databases benchmark (benches/multidb.rs) in release mode, with the sqlite3 CLI its recipe uses.
# Usage: benches/multidb.sh   (CARETAKER_BENCH_DATABASES, CARETAKER_BENCH_MB, CARETAKER_BENCH_DIR as in the bench)
set -eu
cd "$(dirname "$0")/.."
. benches/need-sqlite3.sh
exec cargo bench --bench multidb
