#!/usr/bin/env bash
# The whole test suite, from a fresh clone: builds what it needs (etcdctl/etcdutl v3.5.17 from
# the Go module proxy, cached under ~/.cache/rusd; rusd in release), then runs
#   1. cargo test (unit, model-based, proto wire-compat, and integration tests that drive the
#      real binary with etcdctl and a Rust gRPC client),
#   2. etcd v3.5.17's own e2e tests listed in tests/e2e-expected-pass.txt.
# One cargo profile (release) for everything, so the server is compiled once.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
ulimit -l unlimited 2>/dev/null || ulimit -l 65536 2>/dev/null || true

echo "== building etcdctl and etcdutl v3.5.17 (cached)"
bin_dir="$(scripts/etcd-ref-tools.sh etcdctl etcdutl | tail -n 1)"
export ETCDCTL="$bin_dir/etcdctl" ETCDUTL="$bin_dir/etcdutl"

echo "== cargo test (release)"
cargo test --release --workspace

echo "== etcd e2e: expected-to-pass list"
cargo build --release --bin rusd
scripts/etcd-e2e-compat.sh --no-build --binary "$CARGO_TARGET_DIR/release/rusd" \
  --expected tests/e2e-expected-pass.txt
