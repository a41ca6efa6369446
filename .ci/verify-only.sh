#!/usr/bin/env bash
# A downstream service that depends on the verifier alone
# (`default-features = false, features = ["verify"]`) builds it without the issuing side:
# lint that build, and fail if its dependency tree pulls a server, CLI, metrics or
# key-generation crate.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo clippy --lib --no-default-features --features verify -- -D warnings

forbidden='actix-server actix-web clap prometheus rsa p256 tempfile tracing-subscriber jsonwebtoken'
tree=$(cargo tree -e normal --no-default-features --features verify --prefix none --format '{p}' | awk '{print $1}' | sort -u)
found=0
for crate in $forbidden; do
  if grep -qx "$crate" <<<"$tree"; then
    echo "verify-only build pulls $crate:" >&2
    cargo tree -e normal --no-default-features --features verify -i "$crate" >&2 || true
    found=1
  fi
done
if [ "$found" -ne 0 ]; then
  exit 1
fi
echo "verify-only build: $(wc -l <<<"$tree") crates, none of: $forbidden"
