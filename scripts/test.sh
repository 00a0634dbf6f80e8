#!/usr/bin/env bash
# The whole test suite. Installs the real peers the tests need when they are missing:
# Debian's mosquitto and its clients, socat (virtual serial ports), mbpoll (an independent
# Modbus master), systemd-analyze (to verify the unit), openssl (certs/gen.sh makes the test
# certificates), the system CA store, and in target/peers-venv pymodbus (an independent Modbus
# slave), jinja2 (Home Assistant's template engine, to render our availability templates) and
# pysparkplug (an independent Sparkplug B host) and python-snap7 (an independent S7 server and
# client), and for the web console's browser test Debian's chromium and chromium-driver with
# selenium in the venv. Then runs
# every test. A test whose peer is missing fails; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Rust toolchain: Cargo.toml's rust-version is the oldest that builds fieldgate.
want=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
if ! command -v cargo >/dev/null; then
  echo "cargo is not installed: install Rust $want or newer (https://rustup.rs: rustup toolchain install stable)" >&2
  exit 1
fi
have=$(cargo --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n1)" != "$want" ]; then
  echo "Rust $have is too old: fieldgate needs $want or newer (rustup update stable)" >&2
  exit 1
fi

need=()
[ -x /usr/sbin/mosquitto ] || [ -x /usr/bin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null && command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
command -v socat >/dev/null || need+=(socat)
command -v mbpoll >/dev/null || need+=(mbpoll)
command -v python3 >/dev/null || need+=(python3)
# Debian's python3 has no venv module without python3-venv.
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v openssl >/dev/null || need+=(openssl)
[ -d /etc/ssl/certs ] && ls /etc/ssl/certs/*.pem >/dev/null 2>&1 || need+=(ca-certificates)
# The web console's browser test (tests/web.rs): headless Chromium driven through chromedriver.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

venv=target/peers-venv
if ! "$venv/bin/python" -c 'import pymodbus, serial' 2>/dev/null; then
  echo "installing pymodbus into $venv"
  mkdir -p target
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "pymodbus[serial]==3.16.1"
fi
if ! "$venv/bin/python" -c 'import jinja2' 2>/dev/null; then
  echo "installing jinja2 into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "jinja2==3.1.6"
fi
# pysparkplug: the independent Sparkplug B host application of tests/sparkplug.rs.
if ! "$venv/bin/python" -c 'import pysparkplug, sys; sys.exit(pysparkplug.__version__ != "0.6.1")' 2>/dev/null; then
  echo "installing pysparkplug into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "pysparkplug==0.6.1"
fi
# python-snap7: the independent S7 server (a DB with a REAL, an INT, a BOOL and a STRING) and S7
# client (reading back our writes) of tests/s7.rs. 3.x is pure Python (no libsnap7 needed).
if ! "$venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("python-snap7") != "3.3.0")' 2>/dev/null; then
  echo "installing python-snap7 into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "python-snap7==3.3.0"
fi

# selenium: drives Chromium in tests/web.rs (tests/browser/console.py).
if ! "$venv/bin/python" -c 'import selenium, sys; sys.exit(selenium.__version__ != "4.38.0")' 2>/dev/null; then
  echo "installing selenium into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "selenium==4.38.0"
fi

cargo test --locked --all-targets
