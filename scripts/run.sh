#!/usr/bin/env bash
# Build rusd (release) and start it. With no arguments: a single member on
# http://localhost:2379 with data in ./default.etcd, exactly like running `etcd`.
# Any etcd v3.5 server flag may be passed: scripts/run.sh --name n1 --data-dir /tmp/n1 ...
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
(cd "$repo" && cargo build --release --bin rusd)
# glommio's io_uring rings need locked memory; rusd raises the soft limit itself when the hard
# limit allows, and this covers shells whose hard limit is low but raisable.
ulimit -l unlimited 2>/dev/null || ulimit -l 65536 2>/dev/null || true
exec "$target/release/rusd" "$@"
