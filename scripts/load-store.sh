#!/usr/bin/env bash
# The PostgreSQL store against the keys dir, in one run on loopback: server CPU per token at
# the token endpoint (the hot path is the same snapshot either way, so these should match),
# and how long a key change takes to reach three replicas.
#
# usage: scripts/load-store.sh [SECONDS]         (default 10 per token run)
#   env DATABASE_URL  a PostgreSQL server to create a scratch database on; without it a
#                     throwaway cluster is started (.ci/postgres.sh) and stopped at the end
#   env ROUNDS        token runs per store, alternating which goes first (default 4)
#   env CHANGES       key changes timed across the replicas (default 10)
# stdout: one JSON line per run, then a summary line; stderr: progress.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"; rounds="${ROUNDS:-4}"; changes="${CHANGES:-10}"
log() { echo "[load-store] $*" >&2; }
command -v wrk >/dev/null || { log "installing wrk"; apt-get install -y -qq wrk >&2; }
[ -n "${DATABASE_URL:-}" ] || source .ci/postgres.sh >&2
log "building the release binary"
cargo build --release -q
bin="$PWD/target/release/jwt-issuer"
work="$(mktemp -d)"; pids=()
db="jwt_issuer_load_$$"
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
admin_url="$DATABASE_URL"
trap cleanup EXIT
psql "$admin_url" -qc "CREATE DATABASE $db" >/dev/null
store_url="$(python3 -c 'import sys,urllib.parse as u; p=u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/"+sys.argv[2])))' "$DATABASE_URL" "$db")"
head -c 32 /dev/urandom | base64 >"$work/kek"; chmod 600 "$work/kek"
export JWT_ISSUER_LOG=info JWT_ISSUER_KEYS_DIR="$work/keys"
unset DATABASE_URL JWT_ISSUER_STORE
on_pg() { JWT_ISSUER_STORE="$store_url" JWT_ISSUER_KEK_FILE="$work/kek" "$@"; }
"$bin" keys generate --alg ES256 >/dev/null
file_secret="$("$bin" clients add bench --audience api)"
on_pg "$bin" keys generate --alg ES256 >/dev/null
pg_secret="$(on_pg "$bin" clients add bench --audience api)"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz="$(getconf CLK_TCK)"
wait_ready() { for _ in $(seq 400); do curl -fs -o /dev/null "$1" && return 0; sleep 0.05; done; log "no answer from $1"; exit 1; }
start() {  # port [env...] -> pid
  local port="$1"; shift
  env "$@" taskset -c 0 "$bin" serve --bind "127.0.0.1:$port" --workers 1 >/dev/null 2>>"$work/serve-$port.log" &
  pids+=("$!"); echo "$!"
}
token_run() {  # name port pid secret
  local out t0 t1
  WRK_AUTH="Basic $(printf 'bench:%s' "$4" | base64 -w0)" taskset -c 1 wrk -t1 -c16 -d2s -s scripts/token-post.lua "http://127.0.0.1:$2/oauth2/token" >/dev/null 2>&1 || true
  t0="$(cpu_ticks "$3")"
  out="$(WRK_AUTH="Basic $(printf 'bench:%s' "$4" | base64 -w0)" taskset -c 1 wrk -t1 -c16 -d"${secs}s" -s scripts/token-post.lua "http://127.0.0.1:$2/oauth2/token" 2>&1)"
  t1="$(cpu_ticks "$3")"
  printf '%s\n' "$out" | awk -v name="$1" -v t0="$t0" -v t1="$t1" -v hz="$hz" '
    /requests in/ { reqs = $1 } /^Requests\/sec:/ { rps = $2 } /Non-2xx or 3xx responses:/ { bad = $NF }
    END { printf "{\"run\":\"%s\",\"req_per_s\":%.0f,\"non_2xx\":%d,\"server_cpu_us_per_token\":%.1f}\n", name, rps, bad + 0, (t1 - t0) / hz * 1e6 / (reqs > 0 ? reqs : 1) }'
}

log "token endpoint, 16 connections, ${secs}s per run, ${rounds} rounds per store"
file_pid="$(start 38601)"; pg_pid="$(start 38602 JWT_ISSUER_STORE="$store_url" JWT_ISSUER_KEK_FILE="$work/kek")"
wait_ready http://127.0.0.1:38601/healthz; wait_ready http://127.0.0.1:38602/healthz
# Alternating which store goes first, so that neither always runs on a machine the other
# just warmed (or disturbed).
for round in $(seq "$rounds"); do
  if [ $((round % 2)) -eq 1 ]; then
    token_run keys-dir 38601 "$file_pid" "$file_secret"
    token_run postgres 38602 "$pg_pid" "$pg_secret"
  else
    token_run postgres 38602 "$pg_pid" "$pg_secret"
    token_run keys-dir 38601 "$file_pid" "$file_secret"
  fi
done | tee "$work/tokens.jsonl"
kill "$file_pid" "$pg_pid"

log "a key change reaching three replicas, ${changes} times"
ports=(38611 38612 38613)
for p in "${ports[@]}"; do start "$p" JWT_ISSUER_STORE="$store_url" JWT_ISSUER_KEK_FILE="$work/kek" >/dev/null; done
for p in "${ports[@]}"; do wait_ready "http://127.0.0.1:$p/healthz"; done
etag() { curl -fsS -D- -o /dev/null "http://127.0.0.1:$1/.well-known/jwks.json" | awk 'tolower($1)=="etag:" {print $2}' | tr -d '\r'; }
for i in $(seq "$changes"); do
  before=(); for p in "${ports[@]}"; do before+=("$(etag "$p")"); done
  t0="$(date +%s%N)"
  on_pg "$bin" keys generate --alg ES256 >/dev/null
  t1="$(date +%s%N)"
  for k in 0 1 2; do until [ "$(etag "${ports[$k]}")" != "${before[$k]}" ]; do :; done; done
  t2="$(date +%s%N)"
  echo "{\"run\":\"propagation\",\"change\":$i,\"command_ms\":$(( (t1 - t0) / 1000000 )),\"all_replicas_ms_after_commit\":$(( (t2 - t1) / 1000000 ))}"
done | tee "$work/propagation.jsonl"

python3 - "$work/tokens.jsonl" "$work/propagation.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
prop = [json.loads(l) for l in open(sys.argv[2])]
cpu = {s: [r["server_cpu_us_per_token"] for r in runs if r["run"] == s] for s in ("keys-dir", "postgres")}
after = sorted(p["all_replicas_ms_after_commit"] for p in prop)
print(json.dumps({"run": "store-summary",
  "keys_dir_cpu_us_per_token": cpu["keys-dir"], "postgres_cpu_us_per_token": cpu["postgres"],
  "postgres_over_keys_dir": round(statistics.median(cpu["postgres"]) / statistics.median(cpu["keys-dir"]), 3),
  "non_2xx": sum(r["non_2xx"] for r in runs),
  "propagation_ms_median": statistics.median(after), "propagation_ms_max": after[-1]}))
PY
