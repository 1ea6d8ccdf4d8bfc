#!/usr/bin/env bash
# The deterministic cluster simulation (tests/simulation.rs) over many seeds. CI runs the
# default 200 seeds inside `cargo test`; this is for long runs and for replaying one seed.
#   scripts/simulate.sh --seeds 5000          # seeds 1..5000
#   scripts/simulate.sh --first 7000 --seeds 1000
#   scripts/simulate.sh --seed 1234 --verbose # one seed, with its event trace
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
ulimit -l unlimited 2>/dev/null || ulimit -l 65536 2>/dev/null || true
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) export SIM_SEEDS="$2"; shift 2 ;;
    --first) export SIM_FIRST_SEED="$2"; shift 2 ;;
    --seed) export SIM_SEED="$2"; shift 2 ;;
    --verbose) export SIM_VERBOSE=1; shift ;;
    *) echo "usage: $0 [--seeds N] [--first S] [--seed S] [--verbose]" >&2; exit 2 ;;
  esac
done
exec cargo test --release --test simulation -- --nocapture
