#!/usr/bin/env bash
# The router next to PostgreSQL straight and PgBouncer, every party its own process
# (tests/benches/router_process): installs PgBouncer and h2load from Debian when they are
# missing, builds the release binaries, runs the bench, and checks that it left nothing
# behind. SILO_BENCH_SECONDS sets each run's measuring window (default 4).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/ensure-postgres.sh

missing=()
command -v pgbouncer > /dev/null || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
command -v h2load > /dev/null || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" > /dev/null
fi

cargo build --release -p silo-control-plane -p silo-router --bins
cargo bench -p silo-tests --bench router_process --no-run

# Every temporary file of the bench goes into one directory of its own, which must be
# empty when it ends. PostgreSQL and PgBouncer run as `postgres` when this runs as root:
# they must be able to reach their files in it.
shm_before=$(ls -A /dev/shm 2> /dev/null | grep '^silo-' || true)
bench_tmp=$(mktemp -d "${TMPDIR:-/tmp}/silo-bench-router.XXXXXX")
trap 'rm -rf "$bench_tmp"' EXIT
chmod 0755 "$bench_tmp"
TMPDIR="$bench_tmp" cargo bench -q -p silo-tests --bench router_process
left=$(ls -A "$bench_tmp")
if [ -n "$left" ]; then
  echo "the bench left files behind in $bench_tmp: $left" >&2
  exit 1
fi
shm_left=$(comm -13 <(echo "$shm_before") <(ls -A /dev/shm 2> /dev/null | grep '^silo-' || true))
if [ -n "$shm_left" ]; then
  echo "the bench left files behind in /dev/shm: $shm_left" >&2
  exit 1
fi
echo "nothing left behind in the bench's temporary directory or /dev/shm"
