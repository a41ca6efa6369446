# SoftHSM (a PKCS#11 token in files) and OpenSC's pkcs11-tool for the HSM tests, SOURCED by
# .ci/run (bash, set -euo pipefail) before `cargo test`: those tests fail, never skip,
# without them. Each test initialises its own token in a temporary directory; nothing is
# set up here but the packages and JWT_ISSUER_TEST_PKCS11_MODULE.

_hsm_module() {
  local m
  for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so; do
    if [ -e "$m" ]; then
      echo "$m"
      return 0
    fi
  done
  return 1
}

if ! _hsm_module >/dev/null || ! command -v softhsm2-util >/dev/null || ! command -v pkcs11-tool >/dev/null; then
  echo "softhsm.sh: installing Debian's softhsm2 and opensc"
  _hsm_sudo=""
  [ "$(id -u)" -eq 0 ] || _hsm_sudo="sudo"
  $_hsm_sudo apt-get update -qq
  $_hsm_sudo apt-get install -y -qq softhsm2 opensc >/dev/null
fi
JWT_ISSUER_TEST_PKCS11_MODULE=$(_hsm_module) || {
  echo "softhsm.sh: installed softhsm2, yet no libsofthsm2.so" >&2
  return 1
}
export JWT_ISSUER_TEST_PKCS11_MODULE
echo "softhsm.sh: PKCS#11 module $JWT_ISSUER_TEST_PKCS11_MODULE"
