#!/usr/bin/env bash
# Soak run of the release binary on loopback, bounded in time: token requests from
# registered clients and JWKS fetches with If-None-Match (scripts/soak-driver.py), a caching
# verifier (PyJWT's PyJWKClient) checking every token when issued and again 10 s later,
# `keys rotate` every few seconds, a new client now and then, and one restart of the server
# midway (SIGTERM, then a start on the same keys dir and port).
#
# usage: scripts/soak.sh [SECONDS]           (default 300, or env SOAK_SECONDS)
#   env SOAK_THREADS       threads of the driver, each its own caching verifier (default 4)
#   env SOAK_ROTATE_EVERY  seconds between `keys rotate` runs (default SECONDS/10, 8 to 60)
#   env SOAK_CLIENT_EVERY  seconds between `clients add` runs (default SECONDS/5, 5 to 60)
#   env SOAK_PROFILE       release (default) or dev: the debug binary `cargo test` built,
#                          for a short correctness pass in CI without a release build
# stdout: the figures, then one JSON line; stderr: progress. Exits 1 when a token failed to
# verify, a request got a 5xx or another unexpected answer (304 is expected), a request was
# refused outside the restart, a rotation or a new client failed, the server logged an
# ERROR, or it did not stop with exit 0.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-${SOAK_SECONDS:-300}}"
threads="${SOAK_THREADS:-4}"
clamp() { local v="$1"; [ "$v" -lt "$2" ] && v="$2"; [ "$v" -gt "$3" ] && v="$3"; echo "$v"; }
rotate_every="${SOAK_ROTATE_EVERY:-$(clamp $((secs / 10)) 8 60)}"
client_every="${SOAK_CLIENT_EVERY:-$(clamp $((secs / 5)) 5 60)}"
log() { echo "[soak] $*" >&2; }
now_ms() { date +%s%3N; }

py=target/interop-venv/bin/python
if [ ! -x "$py" ]; then
  log "creating $py with PyJWT (as .ci/run does)"
  python3 -m venv target/interop-venv
  "$py" -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
fi
profile="${SOAK_PROFILE:-release}"
case "$profile" in
  release) log "building the release binary"; cargo build --release -q; built="${CARGO_TARGET_DIR:-target}/release/jwt-issuer" ;;
  # `--tests`: the binary `cargo test` built (features unified with the dev-dependencies),
  # not a second build of every dependency with the plain build's features (a minute in CI).
  dev) log "building the debug binary"; cargo build -q --tests; built="${CARGO_TARGET_DIR:-target}/debug/jwt-issuer" ;;
  *) echo "SOAK_PROFILE must be release or dev, not $profile" >&2; exit 2 ;;
esac

work="$(mktemp -d)"; pids=()
cleanup() {
  touch "$work/stop" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# A copy: the shared target dir may be rebuilt by someone else while this runs.
bin="$work/jwt-issuer"; cp "$built" "$bin"
# Short lifecycle timing, the same for the server and every CLI call: a next key may sign
# 7 s after publication, a retired key stays 67 s.
export JWT_ISSUER_KEYS_DIR="$work/keys" JWT_ISSUER_LOG=info JWT_ISSUER_JWKS_MAX_AGE=5 \
  JWT_ISSUER_ROTATION_LEEWAY=2s JWT_ISSUER_MAX_TOKEN_TTL=60s
touch "$work/clients" "$work/restarts" "$work/rotations.log" "$work/clients.log"

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
serve() {  # bind -> starts the server, sets $pid and $port
  "$bin" serve --bind "$1" --token-ttl 30s 2>>"$work/serve.log" & pid=$!; pids+=("$pid")
  local t0; t0="$(now_ms)"
  until port="$(grep -o 'listening url=http://127.0.0.1:[0-9]*' "$work/serve.log" 2>/dev/null | tail -1 | sed 's/.*://')" \
      && [ -n "$port" ] && [ "$(grep -c 'listening url=' "$work/serve.log")" -ge "$2" ]; do
    kill -0 "$pid" 2>/dev/null || { cat "$work/serve.log" >&2; echo "the server did not start" >&2; exit 1; }
    [ $(( $(now_ms) - t0 )) -lt 20000 ] || { echo "the server did not start in 20 s" >&2; exit 1; }
    sleep 0.05
  done
}
token_status() {  # id secret -> HTTP status of a token request
  curl -s -o /dev/null -w '%{http_code}' -u "$1:$2" -d grant_type=client_credentials \
    --max-time 5 "http://127.0.0.1:$port/oauth2/token" || true
}
register() {  # id alg -> registers, waits until the server serves the client, lists it
  local secret t0 status
  secret="$("$bin" clients add "$1" --alg "$2" --audience api)" || { echo "error $1: clients add failed" >>"$work/clients.log"; return; }
  t0="$(now_ms)"
  until status="$(token_status "$1" "$secret")"; [ "$status" = 200 ]; do
    if [ $(( $(now_ms) - t0 )) -gt 15000 ]; then echo "invisible $1 (last status $status)" >>"$work/clients.log"; return; fi
    sleep 0.05
  done
  echo "$1 $secret" >>"$work/clients"
  echo "ok $1 $(( $(now_ms) - t0 ))" >>"$work/clients.log"
}
nap() {  # seconds -> sleeps, or returns 1 at once when the run is over
  local until_ms=$(( $(now_ms) + $1 * 1000 ))
  while [ "$(now_ms)" -lt "$until_ms" ]; do [ -e "$work/stop" ] && return 1; sleep 0.2; done
  [ ! -e "$work/stop" ]
}

serve 127.0.0.1:0 1
log "serving on port $port (pid $pid), keys in $work/keys; $secs s, $threads driver threads, rotate every $rotate_every s, a new client every $client_every s"
until curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz"; do sleep 0.05; done
register soak-es ES256
register soak-rs RS256
[ "$(wc -l <"$work/clients")" -eq 2 ] || { cat "$work/clients.log" >&2; exit 1; }
sleep 1; rss_start="$(rss_kb "$pid")"

"$py" scripts/soak-driver.py "http://127.0.0.1:$port" "$secs" "$work/clients" "$work/restarts" "$threads" \
  >"$work/driver.json" & driver=$!; pids+=("$driver")
(  # `keys rotate`: the first run publishes a next key and explains (exit 1); later runs rotate.
  while nap "$rotate_every"; do
    if out="$("$bin" keys rotate 2>&1)"; then echo ok >>"$work/rotations.log"
    elif grep -qE 'no next .* key was published|may sign only after' <<<"$out"; then echo refused >>"$work/rotations.log"
    else echo "error: $out" >>"$work/rotations.log"; fi
  done
) & rotator=$!; pids+=("$rotator")
(  # A new client now and then, alternating algorithms; none while the server restarts.
  n=0
  while nap "$client_every"; do
    while [ -e "$work/restarting" ]; do sleep 0.1; done
    n=$((n + 1)); if [ $((n % 2)) -eq 0 ]; then alg=ES256; else alg=RS256; fi
    register "soak-$n" "$alg"
  done
) & adder=$!; pids+=("$adder")

sleep $((secs / 2))
log "restart: SIGTERM to $pid"
rss_before_restart="$(rss_kb "$pid")"
touch "$work/restarting"; down_from="$(now_ms)"
kill -TERM "$pid"; restart_exit=0; wait "$pid" || restart_exit=$?
serve "127.0.0.1:$port" 2
until curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz"; do sleep 0.02; done
down_to="$(now_ms)"; echo "$down_from $down_to" >>"$work/restarts"; rm "$work/restarting"
log "restarted as pid $pid after $((down_to - down_from)) ms (the first exited $restart_exit)"
sleep 1; rss_after_restart="$(rss_kb "$pid")"

wait "$driver"
# The loops finish what they started (a new client waits to be served) before the stop.
touch "$work/stop"; wait "$rotator" "$adder"
rss_end="$(rss_kb "$pid")"
kill -TERM "$pid"; final_exit=0; wait "$pid" || final_exit=$?

SECS="$secs" THREADS="$threads" ROTATE_EVERY="$rotate_every" CLIENT_EVERY="$client_every" \
RSS_START="$rss_start" RSS_BEFORE_RESTART="$rss_before_restart" RSS_AFTER_RESTART="$rss_after_restart" \
RSS_END="$rss_end" RESTART_EXIT="$restart_exit" FINAL_EXIT="$final_exit" DOWN_MS="$((down_to - down_from))" \
WORK="$work" "$py" - <<'PY'
import json, os, re, sys

e, w = os.environ, os.environ["WORK"]
d = json.load(open(f"{w}/driver.json"))
rot = open(f"{w}/rotations.log").read().splitlines()
cl = open(f"{w}/clients.log").read().splitlines()
errors = [l for l in open(f"{w}/serve.log") if re.search(r"\sERROR\s", l)]
st = d["statuses"]
by_kind = lambda kind: {k.split()[1]: v for k, v in st.items() if k.startswith(kind + " ")}
five = sum(v for k, v in st.items() if k.split()[1].startswith("5"))
unexpected = {k: v for k, v in st.items() if k.split()[1] not in ("200", "304") or k == "token 304"}
added = [l for l in cl if l.startswith("ok ")]
visible_ms = [int(l.split()[2]) for l in added]
rot_errors = [l for l in rot if l.startswith("error")]
cl_errors = [l for l in cl if not l.startswith("ok ")]
failures = d["verify_failures"] + sum(unexpected.values()) + d["refused_otherwise"] + len(rot_errors) + len(cl_errors) + len(errors) + len(d["driver_errors"])
stopped = e["RESTART_EXIT"] == "0" and e["FINAL_EXIT"] == "0"
print(f"soak: {e['SECS']} s, {e['THREADS']} driver threads, `keys rotate` every {e['ROTATE_EVERY']} s, a new client every {e['CLIENT_EVERY']} s, one restart midway")
print(f"requests: token {d['requests'].get('token', 0)} {by_kind('token')}, jwks {d['requests'].get('jwks', 0)} {by_kind('jwks')}")
print(f"verified: {d['verified']} when issued, {d['reverified']} again {10} s later; verification failures: {d['verify_failures']}")
for s in d["verify_failure_samples"]:
    print(f"  {s}")
print(f"5xx: {five}; non-2xx other than the expected 304s: {sum(unexpected.values())} {unexpected or ''}")
print(f"refused: {d['refused_during_restart']} during the restart (expected), {d['refused_otherwise']} otherwise; JWKS fetches refused during the restart: {d['verify_fetch_refused_during_restart']}")
print(f"rotations: {rot.count('ok')} done, {rot.count('refused')} refused (next key too young), {len(rot_errors)} errors; keys that signed verified tokens: {d['kids_signed']}")
for l in rot_errors:
    print(f"  {l}")
print(f"clients added: {len(added)} (served after at most {max(visible_ms, default=0)} ms), {len(cl_errors)} failed")
for l in cl_errors:
    print(f"  {l}")
print(f"restart: SIGTERM exit {e['RESTART_EXIT']}, down {e['DOWN_MS']} ms; final SIGTERM exit {e['FINAL_EXIT']}")
print(f"RSS kB: start {e['RSS_START']}, before the restart {e['RSS_BEFORE_RESTART']}, after it {e['RSS_AFTER_RESTART']}, end {e['RSS_END']}")
for err in d["driver_errors"]:
    print(f"driver thread died: {err}")
print(f"server ERROR lines: {len(errors)}")
for l in errors[:10]:
    print(f"  {l.rstrip()}")
summary = {
    "run": "soak", "seconds": int(e["SECS"]), "requests": d["requests"], "statuses": st,
    "verified": d["verified"], "reverified": d["reverified"], "verify_failures": d["verify_failures"],
    "five_xx": five, "unexpected": sum(unexpected.values()), "refused_during_restart": d["refused_during_restart"],
    "refused_otherwise": d["refused_otherwise"], "rotations": rot.count("ok"), "clients_added": len(added),
    "restart_down_ms": int(e["DOWN_MS"]), "rss_kb": [int(e[k]) for k in ("RSS_START", "RSS_BEFORE_RESTART", "RSS_AFTER_RESTART", "RSS_END")],
    "server_errors": len(errors), "exit_codes": [int(e["RESTART_EXIT"]), int(e["FINAL_EXIT"])],
}
print(json.dumps(summary))
ok = failures == 0 and five == 0 and stopped and d["verified"] > 0
print("soak: PASS" if ok else "soak: FAIL")
sys.exit(0 if ok else 1)
PY
