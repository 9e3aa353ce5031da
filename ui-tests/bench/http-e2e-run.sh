#!/usr/bin/env bash
# Runs bench/http-e2e.js against a flowd binary on a fresh database and prints its figures with
# the server's CPU per flow (utime + stime from /proc over the run).
#   bench/http-e2e-run.sh FLOWD_BINARY sqlite|postgres CONCURRENCY FLOWS
# PostgreSQL: a throw-away database next to FLOWD_TEST_POSTGRES_URL (default
# postgres://postgres@127.0.0.1:5432/test), dropped afterwards.
set -euo pipefail
flowd=$(realpath "$1"); db=$2; c=$3; n=$4
here=$(cd "$(dirname "$0")/.." && pwd)
admin=${FLOWD_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
dir=$(mktemp -d); port=$((20000 + RANDOM % 20000)); name=""
if [ "$db" = sqlite ]; then
  url="sqlite://$dir/flowd.db"
else
  name="bench_e2e_$RANDOM$RANDOM"
  psql -q "$admin" -c "CREATE DATABASE $name" >/dev/null
  url="${admin%/*}/$name"
fi
{ printf '[server]\nbind = "127.0.0.1:%s"\n[database]\nurl = "%s"\n[log]\nfilter = "warn"\n' "$port" "$url"
  printf '[[flow_types]]\nname = "e2e_noop"\nversion = 1\n'
  for i in 1 2 3 4 5 6; do printf '[[flow_types.phases]]\nname = "p%s"\nhandler = "noop"\n' "$i"; done; } > "$dir/flowd.toml"
"$flowd" serve --config "$dir/flowd.toml" > "$dir/server.log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  if [ -n "$name" ]; then psql -q "$admin" -c "DROP DATABASE IF EXISTS $name" >/dev/null; fi
  rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
before=$(ticks)
figures=$(cd "$here" && node --experimental-websocket --no-warnings bench/http-e2e.js "http://127.0.0.1:$port" e2e_noop "$c" "$n")
after=$(ticks)
hz=$(getconf CLK_TCK)
echo "$db C=$c $figures server_cpu_ms_per_flow=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$n" 'BEGIN { printf "%.2f", t * 1000 / hz / n }')"
