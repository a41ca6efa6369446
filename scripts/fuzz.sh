#!/usr/bin/env bash
# The fuzz targets and properties of tests/integration/fuzz.rs, optimized, for $1 seconds
# per fuzz target (default 60), then the executions per target. Replay a failure with the
# seed it prints: JWT_ISSUER_FUZZ_SEED=<seed> scripts/fuzz.sh <seconds>.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
JWT_ISSUER_FUZZ_SECONDS="$seconds" cargo test --release --test integration fuzz -- --nocapture \
    2>&1 | tee "$log" || status=$?
echo
echo "executions per target (${seconds} s each):"
grep -E '^(fuzz target|property) ' "$log" || echo "(none: the tests did not run)"
exit "$status"
