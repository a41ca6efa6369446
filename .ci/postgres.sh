# PostgreSQL for the Postgres store's tests, SOURCED by .ci/run (bash, set -euo pipefail)
# before `cargo test`: those tests fail, never skip, without a server, so CI always has one.
#
# - DATABASE_URL set: used as is, once it answers.
# - Otherwise: a throwaway cluster in a fresh temp dir on a free 127.0.0.1 port, stopped and
#   removed when the sourcing shell exits (postgres_stop, on the EXIT trap).
# Either way the server binaries are found (or Debian's postgresql installed) and exported
# as JWT_ISSUER_TEST_PG_BIN, with JWT_ISSUER_TEST_PG_USER (the OS user that runs them when we
# are root; empty otherwise), for the tests that start and stop private clusters.

_pg_started=${EPOCHREALTIME/[.,]/}

# The newest Debian server first (/usr/lib/postgresql/<major>/bin), then pg_config's.
_pg_find_bin() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5 -rV) \
    "$(pg_config --bindir 2>/dev/null || true)"; do
    if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

if ! JWT_ISSUER_TEST_PG_BIN=$(_pg_find_bin); then
  echo "postgres.sh: no PostgreSQL server binaries; installing Debian's postgresql"
  _pg_sudo=""
  [ "$(id -u)" -eq 0 ] || _pg_sudo="sudo"
  $_pg_sudo apt-get update -qq
  $_pg_sudo apt-get install -y -qq postgresql >/dev/null
  JWT_ISSUER_TEST_PG_BIN=$(_pg_find_bin) || {
    echo "postgres.sh: installed postgresql, yet no initdb/pg_ctl under /usr/lib/postgresql/*/bin" >&2
    return 1
  }
fi
# initdb and postgres refuse to run as root: as root, everything runs as the package's user.
JWT_ISSUER_TEST_PG_USER=""
if [ "$(id -u)" -eq 0 ]; then
  JWT_ISSUER_TEST_PG_USER=postgres
  id -u "$JWT_ISSUER_TEST_PG_USER" >/dev/null 2>&1 || {
    echo "postgres.sh: running as root and there is no 'postgres' user to run PostgreSQL as" >&2
    return 1
  }
fi
export JWT_ISSUER_TEST_PG_BIN JWT_ISSUER_TEST_PG_USER
_pg_version=$("$JWT_ISSUER_TEST_PG_BIN/postgres" --version)

# Runs a server binary as the unprivileged user, from a directory that user can read.
_pg_as_owner() {
  if [ -n "$JWT_ISSUER_TEST_PG_USER" ]; then
    (cd "$_pg_dir" && runuser -u "$JWT_ISSUER_TEST_PG_USER" -- "$@")
  else
    (cd "$_pg_dir" && "$@")
  fi
}

if [ -n "${DATABASE_URL:-}" ]; then
  # A URL the caller chose (a CI service, a developer's server): not ours to start or stop,
  # and not printed (it may hold a password).
  if ! _pg_server=$(PGCONNECT_TIMEOUT=5 "$JWT_ISSUER_TEST_PG_BIN/psql" -X -A -t \
    -c 'select version()' "$DATABASE_URL"); then
    echo "postgres.sh: DATABASE_URL is set but does not answer (psql's error above)" >&2
    return 1
  fi
  echo "postgres.sh: using the server at DATABASE_URL, ${_pg_server%% on *}; checked in $(((${EPOCHREALTIME/[.,]/} - _pg_started) / 1000)) ms"
else
  _pg_dir=$(mktemp -d)
  [ -z "$JWT_ISSUER_TEST_PG_USER" ] || chown "$JWT_ISSUER_TEST_PG_USER:" "$_pg_dir"

  postgres_stop() {
    # Immediate: the data is thrown away, so no shutdown checkpoint is worth waiting for.
    _pg_as_owner "$JWT_ISSUER_TEST_PG_BIN/pg_ctl" -D "$_pg_dir/data" -m immediate -w stop \
      >/dev/null 2>&1 || true
    rm -rf "$_pg_dir" || true
  }
  # Then whatever EXIT trap the sourcing shell already had: `trap -p` prints it quoted as
  # `trap -- 'CMD' EXIT`, and a function's third argument unquotes it without touching "$@".
  _pg_trap_cmd() { _pg_prev_trap=${3:-}; }
  _pg_prev_trap=$(trap -p EXIT)
  eval "_pg_trap_cmd $_pg_prev_trap"
  trap "postgres_stop; $_pg_prev_trap" EXIT

  # Throwaway data: no durability (fsync, synchronous commit, full pages); 400 connections
  # for tests that each own a pool; TCP on loopback only, the socket inside our temp dir.
  _pg_as_owner "$JWT_ISSUER_TEST_PG_BIN/initdb" -D "$_pg_dir/data" -U postgres --auth=trust \
    --no-sync -E UTF8 --locale=C >"$_pg_dir/initdb.log" 2>&1 || {
    cat "$_pg_dir/initdb.log" >&2
    echo "postgres.sh: initdb failed" >&2
    return 1
  }
  cat >>"$_pg_dir/data/postgresql.conf" <<EOF
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 400
listen_addresses = '127.0.0.1'
unix_socket_directories = '$_pg_dir'
EOF
  # The port is picked free, then bound by postgres a moment later: something else may take
  # it in between, so a failed start tries another.
  for _pg_attempt in 1 2 3; do
    _pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if _pg_as_owner "$JWT_ISSUER_TEST_PG_BIN/pg_ctl" -D "$_pg_dir/data" -l "$_pg_dir/log" \
      -o "-p $_pg_port" -w start >/dev/null; then
      break
    fi
    if [ "$_pg_attempt" -eq 3 ]; then
      tail -n 20 "$_pg_dir/log" >&2 || true
      echo "postgres.sh: the throwaway cluster did not start (log above)" >&2
      return 1
    fi
  done
  export DATABASE_URL="postgres://postgres@127.0.0.1:$_pg_port/postgres"
  echo "postgres.sh: throwaway cluster, $_pg_version ($JWT_ISSUER_TEST_PG_BIN), at $DATABASE_URL; ready in $(((${EPOCHREALTIME/[.,]/} - _pg_started) / 1000)) ms"
fi
