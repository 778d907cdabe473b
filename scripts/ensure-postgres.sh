# Sourced by the scripts: installs the PostgreSQL server binaries when they are missing and
# makes sure the unprivileged `postgres` user exists (PostgreSQL refuses to run as root).
if ! { [ -n "${SILO_PG_BIN:-}" ] && [ -x "${SILO_PG_BIN}/initdb" ]; } \
   && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null; then
  echo "installing PostgreSQL server binaries" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql > /dev/null
fi
if [ "$(id -u)" -eq 0 ] && ! id postgres > /dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi
