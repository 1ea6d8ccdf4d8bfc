#!/usr/bin/env bash
# Run etcd's robustness suite (go.etcd.io/etcd/tests/v3/robustness at v3.6.16: random etcd and
# Kubernetes client traffic under faults, every history checked for linearizability with
# porcupine, every watch stream for etcd's watch guarantees) against rusd or the reference
# etcd v3.5.17. See docs/robustness.md.
#
# Usage: scripts/etcd-robustness.sh [options]
#   --against-etcd       run the reference etcd v3.5.17 instead of rusd
#   --binary PATH        rusd binary (default: cargo build --release [--features failpoints],
#                        then ${CARGO_TARGET_DIR:-<repo>/target}/release/rusd)
#   --no-build           with the default binary: do not run cargo, use what is there
#   --profile NAME       traffic profile: EtcdHighTraffic, EtcdTrafficDeleteLeases,
#                        KubernetesHighTraffic, KubernetesLowTraffic, or all (default all)
#   --cluster-size N     1 or 3 (default 1)
#   --failpoint LIST     comma-separated failpoints as the suite names them (Kill,
#                        raftBeforeSave=panic, BlackholePeerNetwork, ...); default: Kill.
#                        A name with '=' is a gofail failpoint: rusd needs the failpoints build
#                        (the default build does it), the reference etcd has none.
#   --count N            runs of each selected scenario (default 1)
#   --seed S             seed of the suite's random choices (default: random; printed)
#   --wal-validation on|off
#                        on: the stock validation, which reads each member's member/wal in
#                        etcd's format. off: linearizability only, failed writes patched by
#                        what the watches saw (watch and serializable checks skipped).
#                        Default: on (rusd's member/wal is etcd's format).
#   --out DIR            output dir (default <repo>/.robustness-out): log, summary.json, and
#                        results/ (porcupine's history.html, member data, client operations)
#                        for every failed run
#   --timeout DUR        go test -timeout (default 60m)
#   -h, --help
# The suite binds fixed ports (20000+, 12381+): run it in a network namespace of your own
# when others may run e2e tests (see docs/e2e.md), with E2E_LOCK set to your own lock file.
# Exit: 0 when every run passed, 1 when one failed, 2 on usage or setup errors.
set -euo pipefail
{
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
SUITE_VERSION=v3.6.16
CACHE_ROOT="${RUSD_CACHE:-$HOME/.cache/rusd}"
BASE="$CACHE_ROOT/robustness-$SUITE_VERSION"
PATCH="$SCRIPT_DIR/etcd-robustness.patch"
PROFILES=(EtcdHighTraffic EtcdTrafficDeleteLeases KubernetesHighTraffic KubernetesLowTraffic)

die() { echo "etcd-robustness: $*" >&2; exit 2; }
usage() { sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; }

against_etcd=0; binary=""; no_build=0; profile=all; cluster_size=1; failpoints=Kill
count=1; seed=""; wal_validation=""; out_dir="$REPO_ROOT/.robustness-out"; timeout=60m
while [ $# -gt 0 ]; do
  case "$1" in
    --against-etcd) against_etcd=1 ;;
    --binary) [ $# -ge 2 ] || die "--binary needs a value"; binary="$2"; shift ;;
    --no-build) no_build=1 ;;
    --profile) [ $# -ge 2 ] || die "--profile needs a value"; profile="$2"; shift ;;
    --cluster-size) [ $# -ge 2 ] || die "--cluster-size needs a value"; cluster_size="$2"; shift ;;
    --failpoint) [ $# -ge 2 ] || die "--failpoint needs a value"; failpoints="$2"; shift ;;
    --count) [ $# -ge 2 ] || die "--count needs a value"; count="$2"; shift ;;
    --seed) [ $# -ge 2 ] || die "--seed needs a value"; seed="$2"; shift ;;
    --wal-validation) [ $# -ge 2 ] || die "--wal-validation needs a value"; wal_validation="$2"; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a value"; out_dir="$2"; shift ;;
    --timeout) [ $# -ge 2 ] || die "--timeout needs a value"; timeout="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done
[[ "$cluster_size" =~ ^[13]$ ]] || die "--cluster-size must be 1 or 3"
[[ "$count" =~ ^[1-9][0-9]*$ ]] || die "--count must be a positive integer"
[ -z "$seed" ] || [[ "$seed" =~ ^[0-9]+$ ]] || die "--seed must be a non-negative integer"
[ -n "$binary" ] && [ "$against_etcd" = 1 ] && die "--binary and --against-etcd are exclusive"
if [ "$profile" = all ]; then
  profile_re="$(IFS='|'; echo "${PROFILES[*]}")"
else
  printf '%s\n' "${PROFILES[@]}" | grep -qx -- "$profile" || die "unknown profile '$profile' (${PROFILES[*]} or all)"
  profile_re="$profile"
fi
target=rusd; [ "$against_etcd" = 1 ] && target=etcd
[ -z "$wal_validation" ] && wal_validation=on
[[ "$wal_validation" =~ ^(on|off)$ ]] || die "--wal-validation must be on or off"
gofail=0
case ",$failpoints," in *=*) gofail=1 ;; esac
[ "$gofail" = 1 ] && [ "$target" = etcd ] && die "the reference etcd is built without gofail: only Kill and network failpoints run against it"
[ -z "$seed" ] && seed=$(( (RANDOM << 15 | RANDOM) ))
command -v go >/dev/null 2>&1 || die "'go' not found in PATH"
command -v python3 >/dev/null 2>&1 || die "'python3' not found in PATH"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

# ---------------------------------------------------------------- the suite, patched, compiled
# A writable copy of the module with scripts/etcd-robustness.patch applied, compiled through a
# wrapper module (the module's own go.mod replaces its siblings with ../api etc., which only
# resolve inside etcd's repository).
SRC="$BASE/src"
stamp="$SUITE_VERSION $(sha256sum "$PATCH" | cut -c1-16)"
if [ "$(cat "$SRC/.stamp" 2>/dev/null || true)" != "$stamp" ]; then
  echo "etcd-robustness: preparing go.etcd.io/etcd/tests/v3@$SUITE_VERSION in $SRC ..." >&2
  dl="$(cd / && GOFLAGS= go mod download -json "go.etcd.io/etcd/tests/v3@$SUITE_VERSION")" \
    || die "go mod download of the etcd test module failed"
  tests_dir="$(printf '%s\n' "$dl" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' | head -1)"
  [ -d "$tests_dir/robustness" ] || die "cannot locate the downloaded module ($tests_dir)"
  rm -rf "$SRC"; mkdir -p "$SRC"
  cp -r "$tests_dir" "$SRC/tests"
  chmod -R u+w "$SRC"
  patch -s -p1 -d "$SRC/tests" < "$PATCH" || die "cannot apply $PATCH"
  echo "$stamp" > "$SRC/.stamp"
fi
MOD="$BASE/mod"
mkdir -p "$MOD"
cat > "$MOD/go.mod" <<EOF
module rusd.local/etcd-robustness

go 1.26.0

require go.etcd.io/etcd/tests/v3 $SUITE_VERSION

replace go.etcd.io/etcd/tests/v3 => ../src/tests
EOF
cat > "$MOD/tools.go" <<'EOF'
//go:build tools

package tools

import _ "go.etcd.io/etcd/tests/v3/robustness"
EOF
TEST_BIN="$BASE/robustness.test"
echo "etcd-robustness: compiling the robustness suite ..." >&2
( cd "$MOD" && GOFLAGS=-mod=mod go test -c -o "$TEST_BIN.tmp.$$" go.etcd.io/etcd/tests/v3/robustness ) \
  > "$BASE/compile.log" 2>&1 || { cat "$BASE/compile.log" >&2; die "cannot compile the robustness suite"; }
mv -f "$TEST_BIN.tmp.$$" "$TEST_BIN"

# ---------------------------------------------------------------- binaries
REF_BIN="$("$SCRIPT_DIR/etcd-ref-tools.sh" $( [ "$target" = etcd ] && echo etcd ) etcdctl etcdutl | tail -n 1)"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
[ -f "$out_dir/.gitignore" ] || echo '*' > "$out_dir/.gitignore"
bin_dir="$out_dir/bin-$target"
rm -rf "$bin_dir"; mkdir -p "$bin_dir"
if [ "$target" = etcd ]; then
  ln -s "$REF_BIN/etcd" "$bin_dir/etcd"
else
  if [ -z "$binary" ]; then
    tdir="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
    case "$tdir" in /*) ;; *) tdir="$REPO_ROOT/$tdir" ;; esac
    if [ "$no_build" = 0 ]; then
      features=(); [ "$gofail" = 1 ] && features=(--features failpoints)
      echo "etcd-robustness: cargo build --release ${features[*]} --bin rusd ..." >&2
      ( cd "$REPO_ROOT" && cargo build --release "${features[@]}" --bin rusd ) >&2 || die "cargo build failed"
    fi
    binary="$tdir/release/rusd"
  fi
  [ -x "$binary" ] || die "rusd binary not found: $binary"
  # A copy: others may rebuild target/ while the run goes on.
  cp -p "$binary" "$bin_dir/etcd"
fi
ln -s "$REF_BIN/etcdctl" "$bin_dir/etcdctl"
ln -s "$REF_BIN/etcdutl" "$bin_dir/etcdutl"

# ---------------------------------------------------------------- run (one run at a time)
lock="${E2E_LOCK:-$CACHE_ROOT/e2e.lock}"   # the same ports as the e2e suite: the same lock
exec 9>"$lock"
flock -w 7200 9 || die "gave up waiting for $lock"
ulimit -l unlimited 2>/dev/null || ulimit -l 65536 2>/dev/null || true

log="$out_dir/$target.log"
results="$out_dir/results"
mkdir -p "$results"
env_vars=(RESULTS_DIR="$results" ROBUSTNESS_SEED="$seed" GODEBUG=randseednop=0
          ROBUSTNESS_FAILPOINTS="$failpoints")
[ "$gofail" = 0 ] && env_vars+=(ROBUSTNESS_NO_GOFAIL=1)
[ "$wal_validation" = off ] && env_vars+=(ROBUSTNESS_WITHOUT_WAL=1)
run_re="^TestRobustnessExploratory\$/^($profile_re)\$/^ClusterOfSize$cluster_size\$"
echo "etcd-robustness: $target, profiles $profile, cluster size $cluster_size, failpoints $failpoints, count $count, seed $seed, WAL validation $wal_validation" >&2
echo "etcd-robustness: log $log" >&2
set +e
( cd "$SRC/tests/robustness" && env "${env_vars[@]}" "$TEST_BIN" -test.v -test.timeout "$timeout" \
    -test.count "$count" -test.run "$run_re" -bin-dir="$bin_dir" ) > "$log" 2>&1
rc=$?
set -e

python3 - "$log" "$out_dir/summary.json" "$target" "$seed" "$failpoints" "$wal_validation" "$rc" <<'PY'
import json, re, sys
log, out, target, seed, failpoints, wal, rc = sys.argv[1:]
runs = []
text = open(log, errors="replace").read()
for m in re.finditer(r"^\s*--- (PASS|FAIL|SKIP): TestRobustnessExploratory/(\S+)/ClusterOfSize(\d)/(\S+) \(([\d.]+)s\)", text, re.M):
    runs.append({"profile": m.group(2), "cluster_size": int(m.group(3)), "failpoint": m.group(4),
                 "status": m.group(1).lower(), "seconds": float(m.group(5))})
count = lambda s: sum(1 for r in runs if r["status"] == s)
summary = {
    "target": target, "seed": int(seed), "failpoints": failpoints, "wal_validation": wal,
    "runs": len(runs), "passed": count("pass"), "failed": count("fail"), "skipped": count("skip"),
    "faults_injected": len(re.findall(r'Finished triggering failpoint', text)),
    "linearization_success": len(re.findall(r"Linearization success", text)),
    # porcupine's verdicts: Illegal (a real violation) and timed out (inconclusive).
    "linearization_failed": len(re.findall(r"Linearization failed", text)),
    "linearization_timed_out": len(re.findall(r"Linearization has timed out", text)),
    "watch_validation_failed": len(re.findall(r"Failed validating watch history", text)),
    "serializable_validation_failed": len(re.findall(r"Failed validating serializable operations", text)),
    "results_saved": sorted(set(re.findall(r'Saving robustness test report\s+\{"path": "([^"]+)"', text))),
    "go_test_exit": int(rc),
    "details": runs,
}
json.dump(summary, open(out, "w"), indent=1)
print(f"etcd-robustness: {summary['runs']} runs: {summary['passed']} passed, {summary['failed']} failed, "
      f"{summary['skipped']} skipped; {summary['faults_injected']} faults injected; linearizable "
      f"{summary['linearization_success']}, not {summary['linearization_failed']}, timed out "
      f"{summary['linearization_timed_out']}; watch validation "
      f"failures {summary['watch_validation_failed']} (WAL validation {wal})")
for p in summary["results_saved"]:
    print(f"etcd-robustness: results of a failed run: {p}")
if summary["runs"] == 0:
    print("etcd-robustness: NO RUN: no scenario matched or the suite did not start; see the log")
PY
[ "$rc" = 0 ] && grep -q -- '--- PASS: TestRobustnessExploratory/' "$log" || {
  echo "etcd-robustness: FAILED (go test exit $rc); log: $log" >&2; exit 1; }
exit 0
}
