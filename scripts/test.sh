#!/usr/bin/env bash
# Runs silo's whole test suite on this machine, installing what it needs first:
# PostgreSQL server binaries (the tests start their own throwaway servers) and moto.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/ensure-postgres.sh

# moto's AWS server for the `rds` provisioner's tests (a real AWS-protocol peer on
# loopback), in a venv; the tests find it at .venv/bin/python or SILO_MOTO_PYTHON.
if [ -z "${SILO_MOTO_PYTHON:-}" ] && ! .venv/bin/python -c 'import moto.server' 2> /dev/null; then
  echo "installing moto[server] into .venv" >&2
  python3 -m venv .venv
  .venv/bin/pip install -q 'moto[server]'
fi

if cargo nextest --version > /dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
