#!/usr/bin/env bash
# Make a PostgreSQL server available to the tests and benchmarks.
#
#   . .ci/start-postgres.sh            find (or apt-get install) the server binaries and
#                                      export BATCHSCORE_TEST_PG_BIN; the tests start their
#                                      own throw-away server with them (tests/pg.py)
#   .ci/start-postgres.sh --serve DIR  also start a server in DIR (initdb + pg_ctl, unix
#                                      socket in DIR, loopback port 54329 or $PGPORT) and
#                                      print its URL, e.g. for benchmarks/bench_postgres.py --url
#
# As root the server runs as the `postgres` user (runuser -u postgres). With CI set,
# tests/pg.py fails (instead of skipping) when no server can be started.
set -euo pipefail

find_bindir() {
  local d
  if [[ -n "${BATCHSCORE_TEST_PG_BIN:-}" && -x "$BATCHSCORE_TEST_PG_BIN/initdb" ]]; then
    echo "$BATCHSCORE_TEST_PG_BIN"; return 0
  fi
  if command -v pg_config >/dev/null 2>&1; then
    d="$(pg_config --bindir)"
    if [[ -x "$d/initdb" ]]; then echo "$d"; return 0; fi
  fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -n -r); do
    if [[ -x "$d/initdb" ]]; then echo "$d"; return 0; fi
  done
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return 0; fi
  return 1
}

bindir="$(find_bindir || true)"
if [[ -z "$bindir" ]]; then
  if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
    echo "start-postgres: installing the PostgreSQL server (apt-get)" >&2
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
    bindir="$(find_bindir)"
  else
    echo "start-postgres: no PostgreSQL server binaries (initdb, pg_ctl, postgres) and cannot install them" >&2
    return 1 2>/dev/null || exit 1
  fi
fi
export BATCHSCORE_TEST_PG_BIN="$bindir"
echo "start-postgres: using $bindir" >&2

if [[ "${1:-}" == "--serve" ]]; then
  dir="$(realpath -m "${2:?--serve needs a directory}")"
  port="${PGPORT:-54329}"
  mkdir -p "$dir"
  as=()
  if [[ "$(id -u)" == 0 ]]; then
    chown postgres "$dir"
    as=(runuser -u postgres --)
  fi
  if [[ ! -f "$dir/data/PG_VERSION" ]]; then
    "${as[@]}" "$bindir/initdb" -D "$dir/data" -U postgres -A trust --no-sync >/dev/null
  fi
  "${as[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-k $dir -p $port -c listen_addresses=127.0.0.1" start >/dev/null
  echo "postgresql://postgres@/postgres?host=$dir&port=$port"
fi
