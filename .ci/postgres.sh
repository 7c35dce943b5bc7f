#!/usr/bin/env bash
# Start a throwaway PostgreSQL server (Debian packages) and print the URL the tests use.
# Usage: eval "$(bash .ci/postgres.sh)"   → exports GRAFT_TEST_POSTGRES_URL, or prints why not.
set -u
PORT=${GRAFT_TEST_PG_PORT:-55432}
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } >&2 \
      || { echo "echo 'PostgreSQL could not be installed; its tests will be skipped' >&2"; exit 0; }
  else
    echo "echo 'no PostgreSQL server and no root to install one; its tests will be skipped' >&2"; exit 0
  fi
fi
# pgvector for the RAG backend, when Debian has it (best effort).
if [ "$(id -u)" = 0 ] && ! ls /usr/share/postgresql/*/extension/vector.control >/dev/null 2>&1; then
  ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-$ver-pgvector" >/dev/null 2>&1 || true
fi
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
DIR=$(mktemp -d /tmp/graft-pg.XXXXXX)
RUN_AS=""
if [ "$(id -u)" = 0 ]; then chown postgres "$DIR"; RUN_AS="su postgres -s /bin/sh -c"; fi
cmd="$BIN/initdb -D $DIR/data -A trust -U postgres >/dev/null && $BIN/pg_ctl -D $DIR/data -o '-p $PORT -k $DIR -c listen_addresses=127.0.0.1' -l $DIR/log -w start >/dev/null"
if [ -n "$RUN_AS" ]; then $RUN_AS "$cmd" >&2; else sh -c "$cmd" >&2; fi \
  || { echo "echo 'PostgreSQL did not start (see $DIR/log); its tests will be skipped' >&2"; exit 0; }
echo "export GRAFT_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
echo "export GRAFT_TEST_PG_DIR=$DIR"
