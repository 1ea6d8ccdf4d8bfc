#!/usr/bin/env bash
# The whole test suite, from a fresh clone: builds what it needs (etcd/etcdctl/etcdutl v3.5.17 from
# the Go module proxy, cached under ~/.cache/rusd; rusd in release), then runs
#   1. cargo test (unit, model-based, proto wire-compat, and integration tests that drive the
#      real binary with etcdctl and a Rust gRPC client),
#   2. etcd's robustness suite (v3.6.16) against rusd: Kill on 1 member, each traffic profile,
#   3. etcd v3.5.17's own e2e tests listed in tests/e2e-expected-pass.txt.
# One cargo profile (release) for everything, so the server is compiled once.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
ulimit -l unlimited 2>/dev/null || ulimit -l 65536 2>/dev/null || true

echo "== building etcd, etcdctl, etcdutl and etcd-dump-logs v3.5.17 (cached)"
# The reference etcd server is needed by the round trips of tests/etcd_formats.rs, and
# etcd-dump-logs by its check that etcd's own tool decodes rusd's WAL.
bin_dir="$(scripts/etcd-ref-tools.sh etcd etcdctl etcdutl etcd-dump-logs | tail -n 1)"
export ETCDCTL="$bin_dir/etcdctl" ETCDUTL="$bin_dir/etcdutl" ETCD_BIN="$bin_dir/etcd"
export ETCD_DUMP_LOGS="$bin_dir/etcd-dump-logs"

echo "== cargo test (release)"
cargo test --release --workspace

echo "== etcd robustness suite (v3.6.16): Kill on 1 and on 3 members, every traffic profile"
cargo build --release --bin rusd
# The stock validation: linearizability with porcupine, and the watch and serializable-read
# checks against the persisted requests read from each member's member/wal (docs/robustness.md).
# One retry, printed as FLAKY: the suite itself fails a run whose load generator fell below its
# minimal QPS on a busy machine, and porcupine can time out (inconclusive); both were seen
# about once in 200 runs (docs/robustness.md).
robustness() {
  scripts/etcd-robustness.sh --no-build --binary "$CARGO_TARGET_DIR/release/rusd" \
    --out "$1" --cluster-size "$2" --failpoint Kill --profile all --count 1
}
for size in 1 3; do
  if ! robustness "$repo/.robustness-out/$size" "$size"; then
    echo "== robustness ($size members): retrying once"
    robustness "$repo/.robustness-out/$size/retry" "$size"
    echo "FLAKY (robustness, $size members, failed once, passed on the retry): see $repo/.robustness-out/$size"
  fi
done

echo "== etcd e2e: expected-to-pass list"
out="$repo/.e2e-out"
if scripts/etcd-e2e-compat.sh --no-build --binary "$CARGO_TARGET_DIR/release/rusd" \
  --out "$out" --expected tests/e2e-expected-pass.txt; then
  exit 0
fi
# A listed test that failed gets exactly one more run, alone. Known cause of one-off failures
# on a loaded 2-core machine: rare request stalls (docs/e2e.md, "Flaky"). A test that fails
# twice fails CI; one that passes on the retry is printed as FLAKY so it is never hidden.
failed="$(python3 - "$out/rusd-expected.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("\n".join(t["name"] for t in r["tests"] if t.get("top_level") and t["status"] != "pass"))
PY
)"
[ -n "$failed" ] || { echo "e2e: the expected-pass run failed without a failed test"; exit 1; }
echo "== e2e: retrying once, alone: $(echo $failed)"
printf '%s\n' $failed > "$out/retry-list.txt"
scripts/etcd-e2e-compat.sh --no-build --binary "$CARGO_TARGET_DIR/release/rusd" \
  --out "$out/retry" --expected "$out/retry-list.txt"
echo "FLAKY (failed once, passed on the retry): $(echo $failed)"
