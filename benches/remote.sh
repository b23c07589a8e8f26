#!/bin/sh
# Uploading a 1 GB archive to a local S3 server (moto): caretaker's client (release build)
# against `aws s3 cp`, in the same run. Installs moto and awscli from PyPI when missing.
# REMOTE_BENCH_MB=200 makes a quicker, smaller run.
set -eu
cd "$(dirname "$0")/.."

if ! command -v moto_server >/dev/null 2>&1 || ! command -v aws >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'moto[server]' awscli
fi
aws --version

exec cargo bench --bench remote
