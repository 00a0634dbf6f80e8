#!/usr/bin/env bash
# The web console's trend memory: RSS of the gateway with a full trend window for 100 points,
# sampled every 5 s (examples/web_memory.rs). Not part of `cargo test`; prints, asserts nothing.
# Usage: bash scripts/web-memory.sh [--seconds N] [--debug]
#   --debug: measure the debug build (no release build needed; a larger binary, the same trend).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
args=()
for a in "$@"; do
  if [ "$a" = --debug ]; then profile=debug; else args+=("$a"); fi
done
if [ "$profile" = release ]; then
  cargo build --release --locked -q --bin fieldgate --example web_memory
else
  cargo build --locked -q --bin fieldgate --example web_memory
fi
exec "target/$profile/examples/web_memory" "${args[@]}"
