#!/bin/sh
# Rotating and compressing a 1 GB log: caretaker (release build) against logrotate itself.
# Installs logrotate with apt-get when it is missing, then runs the benchmark in the same run
# for both tools. LOGROTATE_BENCH_MB=200 makes a quicker, smaller run.
set -eu
cd "$(dirname "$0")/.."

if ! command -v logrotate >/dev/null 2>&1 && [ ! -x /usr/sbin/logrotate ]; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q logrotate
fi
logrotate --version 2>&1 | head -1 || /usr/sbin/logrotate --version 2>&1 | head -1
gzip --version | head -1

exec cargo bench --bench logrotate
