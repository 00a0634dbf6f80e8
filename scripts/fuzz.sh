#!/usr/bin/env bash
# Fuzz every target for a bounded time: bash scripts/fuzz.sh [SECONDS_PER_TARGET] (default 60).
#
# Needs a nightly toolchain (rustup toolchain install nightly) and cargo-fuzz (installed here
# if missing). Not part of CI's critical path; CI replays the saved inputs instead
# (tests/fuzz_regressions.rs). When a target crashes, its input is in
# fuzz/artifacts/<target>/: fix the bug, then copy the input to fuzz/regressions/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for t in config decode command store sparkplug s7; do
  mkdir -p "fuzz/corpus/$t"
  cp -n fuzz/regressions/"$t"/* "fuzz/corpus/$t/"
  echo "== $t: ${secs}s"
  cargo +nightly fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -max_len=65536 -timeout=10
done
