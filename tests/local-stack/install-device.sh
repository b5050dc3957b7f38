#!/usr/bin/env bash
# Installs, idempotently, the system packages the device client's tests need:
#   softhsm2    a software PKCS#11 token (module /usr/lib/softhsm/libsofthsm2.so)
#   libssl-dev  OpenSSL's libcrypto headers, for the stand-in Zymkey library the tests compile
#   gcc         to compile that stand-in
#   openssl     the independent verifier of CSRs in the tests
#   faketime    libfaketime, to run the client with its clock set back (a board without an RTC)
# apt-get update runs only when something is missing.
set -euo pipefail

need=()
for pkg in softhsm2 libssl-dev gcc openssl faketime; do
  if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
    need+=("$pkg")
  fi
done
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "install-device: missing ${need[*]} (install them, or run as root)" >&2
  exit 1
fi
echo "install-device: installing ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
