#!/usr/bin/env bash
# Load runs of the release binary on loopback, bounded in time, beside the references
# measured in the same run: nginx serving the same JWKS bytes as a static file, and (with
# PEER=1) node-oidc-provider from ../shared/bench.
#
# usage: scripts/load.sh [SECONDS]                (default 10 per run)
#   env CONCURRENCY  list for the JWKS and token runs (default "1 16 128")
#   env SERVER_CPU   CPU the servers are pinned to (default 0); wrk runs on the other one
#   env MEMORY_RUN   seconds of an extra token-endpoint run sampling RSS every 5 s (default 0)
#   env PEER=1       also run ../shared/bench/peers/oidc-provider/run.sh (ES256, same seconds)
#   env HSM=1        also the token runs with the keys in a SoftHSM token (PKCS#11), beside
#                    the in-process ones (installs softhsm2 when missing)
# stdout: one JSON line per run, then a summary line; stderr: progress.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"; concs="${CONCURRENCY:-1 16 128}"
server_cpu="${SERVER_CPU:-0}"; wrk_cpu=$(( (server_cpu + 1) % $(nproc) ))
log() { echo "[load] $*" >&2; }

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get -o DPkg::Lock::Timeout=60 update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=60 install -y -qq "${need[@]}" >&2
fi
log "building the release binary"
cargo build --release -q
bin="$PWD/target/release/jwt-issuer"

work="$(mktemp -d)"; pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
# The default log level: every token request is logged, as in production (to a file here).
export JWT_ISSUER_KEYS_DIR="$work/keys" JWT_ISSUER_LOG=info
port=$((38000 + $$ % 900)); nginx_port=$((port + 1))
base="http://127.0.0.1:$port"

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
clk_tck="$(getconf CLK_TCK)"
now_ms() { date +%s%3N; }
wait_ready() {  # url -> ms until 200 (gives up after 20 s)
  local t0; t0="$(now_ms)"
  until curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null; do
    [ $(( $(now_ms) - t0 )) -lt 20000 ] || { echo "no answer from $1" >&2; exit 1; }
    sleep 0.005
  done
  echo $(( $(now_ms) - t0 ))
}

# First start (RSA-2048 generation included), then a warm start with the keys present.
t0="$(now_ms)"
taskset -c "$server_cpu" "$bin" serve --bind "127.0.0.1:$port" --workers 1 2>"$work/first.log" & pid=$!; pids+=("$pid")
first_ms=$(( $(wait_ready "$base/healthz") + 0 )); first_ms=$(( $(now_ms) - t0 ))
kill -TERM "$pid"; wait "$pid" || true
secret="$("$bin" clients add bench --audience api)"
auth="Basic $(printf 'bench:%s' "$secret" | base64 -w0)"
t0="$(now_ms)"
taskset -c "$server_cpu" "$bin" serve --bind "127.0.0.1:$port" --workers 1 2>"$work/serve.log" & pid=$!; pids+=("$pid")
wait_ready "$base/healthz" >/dev/null; warm_ms=$(( $(now_ms) - t0 ))
sleep 1
rss_idle="$(rss_kb "$pid")"
log "first start ${first_ms} ms, warm start ${warm_ms} ms, idle RSS ${rss_idle} kB"

run() {  # name url conc server_pid [lua]
  local name="$1" url="$2" conc="$3" spid="$4" lua=() out t0 t1 before after
  [ $# -ge 5 ] && lua=(-s "$5")
  WRK_AUTH="$auth" taskset -c "$wrk_cpu" wrk -t1 -c"$conc" -d2s "${lua[@]}" "$url" >/dev/null 2>&1 || true
  before="$(rss_kb "$spid")"; t0="$(cpu_ticks "$spid")"
  out="$(WRK_AUTH="$auth" timeout $((secs + 30)) taskset -c "$wrk_cpu" wrk -t1 -c"$conc" -d"${secs}s" --timeout 5s --latency "${lua[@]}" "$url" 2>&1)"
  t1="$(cpu_ticks "$spid")"; after="$(rss_kb "$spid")"
  printf '%s\n' "$out" | awk -v name="$name" -v conc="$conc" -v t0="$t0" -v t1="$t1" -v hz="$clk_tck" -v before="$before" -v after="$after" '
    function ms(v) { if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 } if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 } if (v ~ /s$/) { sub(/s$/, "", v); return v * 1000 } return -1 }
    $1 == "50%" { p50 = ms($2) } $1 == "99%" { p99 = ms($2) }
    /requests in/ { reqs = $1 } /^Requests\/sec:/ { rps = $2 } /Non-2xx or 3xx responses:/ { non2xx = $NF }
    END { printf "{\"run\":\"%s\",\"concurrency\":%d,\"req_per_s\":%.0f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"non_2xx\":%d,\"server_cpu_us_per_req\":%.1f,\"rss_kb_before\":%d,\"rss_kb_after\":%d}\n",
      name, conc, rps, p50, p99, non2xx + 0, (t1 - t0) / hz * 1e6 / (reqs > 0 ? reqs : 1), before, after }'
}

for c in $concs; do run jwt-issuer-jwks "$base/.well-known/jwks.json" "$c" "$pid"; done
for c in $concs; do run jwt-issuer-token "$base/oauth2/token" "$c" "$pid" scripts/token-post.lua; done
rss_after="$(rss_kb "$pid")"

if [ "${HSM:-0}" = 1 ]; then
  # The same server, its keys generated in a SoftHSM token of this run's own: what a
  # signature through PKCS#11 costs beside the in-process one measured above.
  if ! [ -e /usr/lib/softhsm/libsofthsm2.so ]; then
    log "installing softhsm2"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=60 install -y -qq softhsm2 >&2
  fi
  mkdir -p "$work/hsm/tokens"
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$work/hsm/tokens" >"$work/hsm/softhsm2.conf"
  hsm_pin="$(head -c 12 /dev/urandom | base64 | tr -d '/+=')"
  printf '%s\n' "$hsm_pin" >"$work/hsm/pin"; chmod 600 "$work/hsm/pin"
  export SOFTHSM2_CONF="$work/hsm/softhsm2.conf"
  softhsm2-util --init-token --free --label jwt-issuer --so-pin "so-$hsm_pin" --pin "$hsm_pin" >/dev/null
  kill -TERM "$pid"; wait "$pid" || true
  hsm_env=(env JWT_ISSUER_KEYS_DIR="$work/hsm-keys" JWT_ISSUER_PKCS11_MODULE=/usr/lib/softhsm/libsofthsm2.so
    JWT_ISSUER_PKCS11_TOKEN=jwt-issuer JWT_ISSUER_PKCS11_PIN_FILE="$work/hsm/pin")
  "${hsm_env[@]}" "$bin" keys generate --hsm --alg ES256 >/dev/null
  "${hsm_env[@]}" "$bin" keys generate --hsm --alg RS256 >/dev/null
  secret="$("${hsm_env[@]}" "$bin" clients add bench --audience api)"
  auth="Basic $(printf 'bench:%s' "$secret" | base64 -w0)"
  "${hsm_env[@]}" taskset -c "$server_cpu" "$bin" serve --bind "127.0.0.1:$port" --workers 1 2>"$work/serve-hsm.log" & pid=$!; pids+=("$pid")
  wait_ready "$base/healthz" >/dev/null
  for c in $concs; do run jwt-issuer-hsm-token "$base/oauth2/token" "$c" "$pid" scripts/token-post.lua; done
fi

if [ "${MEMORY_RUN:-0}" -gt 0 ]; then
  log "memory run: ${MEMORY_RUN}s of token requests at concurrency 16"
  WRK_AUTH="$auth" taskset -c "$wrk_cpu" wrk -t1 -c16 -d"${MEMORY_RUN}s" -s scripts/token-post.lua "$base/oauth2/token" >/dev/null 2>&1 &
  wrk_pid=$!
  samples=()
  for _ in $(seq 1 $((MEMORY_RUN / 5))); do sleep 5; samples+=("$(rss_kb "$pid")"); done
  wait "$wrk_pid" || true
  echo "{\"run\":\"jwt-issuer-memory\",\"seconds\":$MEMORY_RUN,\"rss_kb_samples\":[$(IFS=,; echo "${samples[*]}")]}"
fi

# Reference: nginx, one worker, serving the same JWKS bytes as a static file.
mkdir -p "$work/nginx/www/.well-known"
curl -fsS "$base/.well-known/jwks.json" >"$work/nginx/www/.well-known/jwks.json"
chmod -R a+rX "$work/nginx/www" && chmod a+x "$work" "$work/nginx"  # nginx workers run as nobody
cat >"$work/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  default_type application/json;
  server { listen 127.0.0.1:$nginx_port; root $work/nginx/www; etag on; }
}
CONF
taskset -c "$server_cpu" nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" 2>"$work/nginx/stderr" & npid=$!; pids+=("$npid")
wait_ready "http://127.0.0.1:$nginx_port/.well-known/jwks.json" >/dev/null
nworker="$(pgrep -P "$npid" | head -1)"
for c in $concs; do run nginx-static-jwks "http://127.0.0.1:$nginx_port/.well-known/jwks.json" "$c" "${nworker:-$npid}"; done

echo "{\"run\":\"jwt-issuer-summary\",\"first_start_ms\":$first_ms,\"warm_start_ms\":$warm_ms,\"rss_kb_idle\":$rss_idle,\"rss_kb_after_load\":$rss_after,\"jwks_bytes\":$(wc -c <"$work/nginx/www/.well-known/jwks.json")}"

if [ "${PEER:-0}" = 1 ]; then
  log "running node-oidc-provider beside it"
  ALG=ES256 THREADS=1 ../shared/bench/peers/oidc-provider/run.sh "$secs" 16 2>/dev/null
fi
