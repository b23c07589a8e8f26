#!/bin/sh
# Makes sure the sqlite3 CLI that the benchmarks' reference recipes run is installed.
# Sourced by benches/backup.sh and benches/multidb.sh.
if ! command -v sqlite3 >/dev/null 2>&1; then
    echo "installing the sqlite3 CLI for the reference recipe" >&2
    if command -v apt-get >/dev/null 2>&1; then
        apt-get install -y sqlite3
    else
        echo "sqlite3 is missing; install it and run again" >&2
        exit 1
    fi
fi
