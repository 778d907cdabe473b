#!/usr/bin/env bash
# Runs silo's whole test suite on this machine, installing what it needs first:
# PostgreSQL server binaries (the tests start their own throwaway servers).
set -euo pipefail
cd "$(dirname "$0")/.."

have_postgres() {
  [ -n "${SILO_PG_BIN:-}" ] && [ -x "${SILO_PG_BIN}/initdb" ] && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null
}

if ! have_postgres; then
  echo "installing PostgreSQL server binaries" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql > /dev/null
fi
if [ "$(id -u)" -eq 0 ] && ! id postgres > /dev/null 2>&1; then
  # PostgreSQL refuses to run as root; the harness runs it as this user.
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

if cargo nextest --version > /dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
