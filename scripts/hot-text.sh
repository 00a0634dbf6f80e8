#!/usr/bin/env bash
# Regenerate build/hot-text.ld, the list of functions the running gateway executes, which the
# release build places together at the start of its code (build.rs says why).
#
# It builds the `profiling` binary (release code with symbols) and the end-to-end benchmark,
# runs workloads under an LD_PRELOAD probe (scripts/hot-text/probe.c) that, once start-up is
# over, makes every code page its own mapping and drops them all, so that the pages that come
# back are exactly those the steady state runs; then maps those pages to functions and writes
# the script (scripts/hot-text/layout.py). Needs gcc, mosquitto (some workloads go through it)
# and Linux. Takes about 2.5 minutes after the build. Run it after changes that move a lot of the
# hot path, then compare RSS with `bash scripts/bench-e2e.sh` (and FIELDGATE_HOT_TEXT=0 builds
# for the baseline). Measurement only: nothing here runs in the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --profile profiling --bin fieldgate --example bench_e2e
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -O2 -Wall -shared -fPIC -o "$work/probe.so" scripts/hot-text/probe.c -lpthread
exe=$(realpath target/profiling/fieldgate)
bench=target/profiling/examples/bench_e2e

# One workload: a name and a command whose process (or child) runs $exe.
run() {
    local name=$1
    shift
    HOT_PROBE_AFTER=4 HOT_PROBE_EXE=$exe LD_PRELOAD=$work/probe.so "$@" >"$work/$name.log" 2>&1 &
    local runner=$!
    python3 scripts/hot-text/layout.py watch --exe "$exe" --after 4.5 --out "$work/$name.pages"
    wait "$runner" || true
}

run sink-1000-qos1 "$bench" --gateway "$exe" --seconds 12 --broker sink --scenario 1000@1 --qos 1
run sink-1000-qos0 "$bench" --gateway "$exe" --seconds 12 --broker sink --scenario 1000@1 --qos 0
run sink-10x1000-qos0 "$bench" --gateway "$exe" --seconds 12 --broker sink --scenario 10x1000@0.1 --qos 0
run sink-10x1000-qos1 "$bench" --gateway "$exe" --seconds 12 --broker sink --scenario 10x1000@0.1 --qos 1
run mosquitto-1000-qos1 "$bench" --gateway "$exe" --seconds 12 --scenario 1000@1 --qos 1
run mosquitto-fast-qos0 "$bench" --gateway "$exe" --seconds 12 --scenario 1000@0.1 --qos 0
run sink-durable-qos1 "$bench" --gateway "$exe" --seconds 12 --broker sink --scenario 1000@1 --qos 1 --durable
run sink-10-qos1 "$bench" --gateway "$exe" --seconds 12 --broker sink --scenario 10@1 --qos 1

python3 scripts/hot-text/layout.py generate --exe "$exe" --out build/hot-text.ld "$work"/*.pages
