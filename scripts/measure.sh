#!/usr/bin/env bash
# Measure what matters on a small box: binary size, resident memory and CPU time of a running
# gateway (water-tower mapping, 0.5 s polling, simulator and embedded broker on loopback).
# Usage: bash scripts/measure.sh [SECONDS]   (default 60). Prints figures; asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
cargo build --release --locked --no-default-features -q
cp target/release/fieldgate target/fieldgate-lean
cargo build --release --locked -q
bin=target/release/fieldgate
echo "binary size, lean (--no-default-features): $(stat -c %s target/fieldgate-lean) bytes"
echo "binary size, default (with embedded broker): $(stat -c %s $bin) bytes"

tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
$bin simulate water-tower --listen 127.0.0.1:0 --speed 10 --auto > "$tmp/sim" 2>/dev/null &
$bin broker --listen 127.0.0.1:0 > "$tmp/broker" 2>/dev/null &
for f in sim broker; do
  for _ in $(seq 100); do grep -q "listening on" "$tmp/$f" && break; sleep 0.1; done
done
modbus=$(awk '{print $NF}' "$tmp/sim"); mqtt=$(awk '{print $NF}' "$tmp/broker")
MODBUS_PORT=${modbus##*:} MQTT_PORT=${mqtt##*:} target/fieldgate-lean run -c mappings/water-tower.yaml 2>"$tmp/gw" &
gw=$!
sleep 5
ticks=$(getconf CLK_TCK)
cpu0=$(awk '{print $14+$15}' /proc/$gw/stat)
sleep "$secs"
cpu1=$(awk '{print $14+$15}' /proc/$gw/stat)
echo "gateway (lean) after $((secs + 5)) s: $(grep VmRSS /proc/$gw/status | tr -s ' ') (peak $(grep VmHWM /proc/$gw/status | awk '{print $2, $3}'))"
echo "gateway CPU over $secs s: $(( (cpu1 - cpu0) * 1000 / ticks )) ms ($(awk -v c=$((cpu1 - cpu0)) -v t="$ticks" -v s="$secs" 'BEGIN{printf "%.3f", 100*c/t/s}') % of one core)"
echo "gateway open file descriptors: $(ls /proc/$gw/fd | wc -l)"
