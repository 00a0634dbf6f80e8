#!/usr/bin/env bash
# End-to-end benchmark: the release gateway between fast Modbus TCP slaves and mosquitto, with
# a subscriber counting what arrives (examples/bench_e2e.rs). Not part of `cargo test`.
# Usage: bash scripts/bench-e2e.sh [--seconds N] [--qos 0|1]... [--scenario NAME]... [--broker sink]
#                                   [--broker-nodelay true|false] [--durable]
#   --broker sink: a minimal MQTT server in the benchmark instead of mosquitto (read -> broker latency).
#   --broker-nodelay: mosquitto's set_tcp_nodelay (default true: latency; false: throughput).
#   --durable: the gateway's buffer on disk (mqtt.buffer.path), as under systemd; default in memory.
#   scenarios: 10@1 1000@1 1000@0.1 10x1000@1 10x1000@0.1 2000@0.1 link ceiling (all by default);
#   both QoS by default. ceiling: mosquitto alone, fed flat out, with both set_tcp_nodelay settings.
# Needs mosquitto (Debian: apt-get install -y mosquitto; the system service is not used).
# Prints figures; asserts nothing. Run it on an otherwise idle machine: the gateway, the
# broker, the slaves and the subscriber share its cores.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! [ -x /usr/sbin/mosquitto ] && ! [ -x /usr/bin/mosquitto ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y mosquitto >/dev/null
  else
    echo "mosquitto is not installed: sudo apt-get install -y mosquitto" >&2
    exit 1
  fi
fi
cargo build --release --locked -q --bin fieldgate --example bench_e2e
exec target/release/examples/bench_e2e "$@"
