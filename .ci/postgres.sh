#!/usr/bin/env bash
# Start a throwaway PostgreSQL server (Debian packages) and print the URL the tests use.
# Usage: eval "$(bash .ci/postgres.sh)"   → exports GRAFT_TEST_POSTGRES_URL, or prints why not.
# The RAG backend needs pgvector: Debian's postgresql-<ver>-pgvector when the release has it
# (bookworm does not), else the PostgreSQL 16 + pgvector build that the `pgserver` wheel ships on PyPI.
set -u
PORT=${GRAFT_TEST_PG_PORT:-55432}
PGSERVER_VERSION=0.1.4   # PostgreSQL 16.2, pgvector 0.6.2
export DEBIAN_FRONTEND=noninteractive
apt_updated=""
apt_install() {  # apt-get install, running apt-get update once first
  [ -n "$apt_updated" ] || { apt-get update -qq >/dev/null 2>&1; apt_updated=1; }
  apt-get install -y -qq "$@" >/dev/null 2>&1
}
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt_install postgresql \
      || { echo "echo 'PostgreSQL could not be installed; its tests will be skipped' >&2"; exit 0; }
  else
    echo "echo 'no PostgreSQL server and no root to install one; its tests will be skipped' >&2"; exit 0
  fi
fi
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
ver=$(basename "$(dirname "$BIN")")
# pgvector for the RAG backend (best effort: without it only the pgvector tests skip).
if [ ! -f "/usr/share/postgresql/$ver/extension/vector.control" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt_install "postgresql-$ver-pgvector" || true
  fi
fi
if [ ! -f "/usr/share/postgresql/$ver/extension/vector.control" ]; then
  # no Debian pgvector: use a whole PostgreSQL + pgvector build from the pgserver wheel instead
  PGS=${GRAFT_PGSERVER_DIR:-/tmp/graft-pgserver-$PGSERVER_VERSION}
  if [ ! -x "$PGS/pgserver/pginstall/bin/postgres" ]; then
    py=$(command -v python3 || command -v python)
    tmp=$(mktemp -d /tmp/graft-pgserver-dl.XXXXXX)
    if [ -n "$py" ] && "$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
         --python-version 3.11 --platform manylinux2014_x86_64 -d "$tmp" "pgserver==$PGSERVER_VERSION" >&2 \
       && "$py" -c "import sys, zipfile, glob; zipfile.ZipFile(glob.glob(sys.argv[1] + '/pgserver-*.whl')[0]).extractall(sys.argv[2])" \
            "$tmp" "$PGS.part" >&2; then
      chmod -R a+rX,u+w "$PGS.part" && chmod a+x "$PGS.part"/pgserver/pginstall/bin/* && rm -rf "$PGS" && mv "$PGS.part" "$PGS"
    else
      rm -rf "$PGS.part"
    fi
    rm -rf "$tmp"
  fi
  if "$PGS/pgserver/pginstall/bin/postgres" --version >/dev/null 2>&1; then
    BIN="$PGS/pgserver/pginstall/bin"
  else
    echo "echo 'pgvector is not available (no Debian package, pgserver wheel not usable); the pgvector tests will be skipped' >&2"
  fi
fi
DIR=$(mktemp -d /tmp/graft-pg.XXXXXX)
chmod 755 "$DIR"
RUN_AS=""
if [ "$(id -u)" = 0 ]; then chown postgres "$DIR"; RUN_AS="su postgres -s /bin/sh -c"; fi
cmd="$BIN/initdb -D $DIR/data -A trust -U postgres >/dev/null && $BIN/pg_ctl -D $DIR/data -o '-p $PORT -k $DIR -c listen_addresses=127.0.0.1' -l $DIR/log -w start >/dev/null"
if [ -n "$RUN_AS" ]; then $RUN_AS "$cmd" >&2; else sh -c "$cmd" >&2; fi \
  || { echo "echo 'PostgreSQL did not start (see $DIR/log); its tests will be skipped' >&2"; exit 0; }
echo "export GRAFT_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
echo "export GRAFT_TEST_PG_DIR=$DIR"
echo "export GRAFT_TEST_PG_BIN=$BIN"
