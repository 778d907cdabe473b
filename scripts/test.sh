#!/usr/bin/env bash
# Runs silo's whole test suite on this machine, installing what it needs first:
# PostgreSQL server binaries (the tests start their own throwaway servers).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/ensure-postgres.sh

if cargo nextest --version > /dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
