#!/usr/bin/env bash
# The main job: a local PostgreSQL server, the control plane, the router and demo tenants,
# until Ctrl-C. The first build shows cargo's progress (about 5 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-postgres.sh
binary="${CARGO_TARGET_DIR:-target}/debug/silo"
if [ -x "$binary" ]; then
  cargo build --quiet -p silo --bin silo
else
  echo "building silo (the first build takes about 5 minutes on 2 cores)" >&2
  cargo build -p silo --bin silo
fi
exec "$binary" dev "$@"
