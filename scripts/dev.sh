#!/usr/bin/env bash
# The main job: a local PostgreSQL server, the control plane, the router and demo tenants,
# until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-postgres.sh
exec cargo run --quiet -p silo --bin silo -- dev "$@"
