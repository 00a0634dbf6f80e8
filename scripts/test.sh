#!/usr/bin/env bash
# The whole test suite. Installs the real peers the tests need (Debian's mosquitto and its
# clients) when they are missing, then runs every test. A test whose peer is missing fails;
# nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/mosquitto ] || [ -x /usr/bin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null && command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

cargo test --locked --all-targets
