#!/usr/bin/env bash
# Run etcd v3.5.17's own e2e test suite (go.etcd.io/etcd/tests/v3/e2e) against rusd, or against
# the reference etcd, and write a JSON report plus the raw log. See docs/e2e.md.
#
# Usage: scripts/etcd-e2e-compat.sh [options]
#   --tier N[,M...]   tier(s) to run, 1-6 (repeatable). Default: 6 (the whole suite).
#                       1 smoke      TestCtlV3PutNoTLS, TestCtlV3GetNoTLS
#                       2 core KV    TestCtlV3Put*, TestCtlV3Get*, TestCtlV3Del* (26 tests)
#                       3 watch/lease/auth  TestCtlV3{Watch,Lease,Auth,User,Role,Txn,Elect,Lock}*
#                       4 cluster    TestCtlV3{Member,Endpoint,MoveLeader}*
#                       5 maint.     TestCtlV3{Compact,Defrag,Snapshot,Alarm}*
#                       6 full       every test of the package
#   --run REGEX       go test -run regex (overrides the tier regex; anchor it yourself)
#   --expected FILE   check mode: run exactly the tests listed in FILE (one top-level test
#                     name per line, '#' comments); exit 1 if any of them does not pass
#   --against-etcd    run against the reference etcd v3.5.17 instead of rusd
#   --binary PATH     rusd binary (default: cargo build --release --bin rusd, then
#                     ${CARGO_TARGET_DIR:-<repo>/target}/release/rusd)
#   --no-build        with the default binary: do not run cargo, use what is there
#   --out DIR         output dir (default <repo>/.e2e-out)
#   --timeout DUR     time budget of the run (default: per tier, summed; see TIER_TIMEOUT):
#                     no test is started after it (they count as not run); with
#                     --single-process it is go test's -timeout
#   --test-timeout D  per top-level test timeout (-test.timeout of its process; default 10m)
#   --single-process  run all selected tests in ONE test process (`go test -json`), as etcd's
#                     CI does. Default: one test process per top-level test, because in one
#                     process a single hung or timed-out test leaks goroutines and the
#                     framework's leak check then SKIPS every later test.
#   --stall-limit S   kill this run's server, etcdctl and etcdutl processes when no test or
#                     subtest has started or finished for S seconds (default 60; 0 = off).
#                     The framework waits for "ready to serve client requests" (and for
#                     etcdctl output) without any timeout: a server that never gets ready
#                     would otherwise stall the test until its -test.timeout.
#   --lock-wait S     wait at most S seconds for another e2e run to finish (default 7200;
#                     lock file ${E2E_LOCK:-$RUSD_CACHE/e2e.lock})
#   --list            print the selected test names (go test -list) and exit
#   -h, --help
# Exit: 0 when go test passed (or, with --expected, when every listed test passed);
#       1 on test failures; 2 on usage/setup errors.
set -euo pipefail
# The whole body is one brace group: bash parses it completely before running it, so editing
# this file while a (long) run is going on cannot break that run.
{
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
ETCD_VERSION="${ETCD_VERSION:-v3.5.17}"
CACHE_ROOT="${RUSD_CACHE:-$HOME/.cache/rusd}"
BASE="$CACHE_ROOT/etcd-$ETCD_VERSION"
E2E_MOD="$BASE/e2e"
E2E_PKG="go.etcd.io/etcd/tests/v3/e2e"

TIER_NAME=([1]="smoke" [2]="core KV" [3]="watch/lease/auth/txn" [4]="cluster/member"
           [5]="maintenance" [6]="full suite")
# Anchored by the caller as ^(...)$; go test matches -run per name level, so subtests run too.
TIER_RE=(
  [1]='TestCtlV3PutNoTLS|TestCtlV3GetNoTLS'
  [2]='TestCtlV3Put.*|TestCtlV3Get.*|TestCtlV3Del.*'
  [3]='TestCtlV3(Watch|Lease|Auth|User|Role|Txn|Elect|Lock).*'
  [4]='TestCtlV3(Member|Endpoint|MoveLeader).*'
  [5]='TestCtlV3(Compact|Defrag|Snapshot|Alarm).*'
  [6]='.*'
)
TIER_TIMEOUT=([1]=10 [2]=15 [3]=25 [4]=25 [5]=25 [6]=90)   # minutes

tiers=()
run_re=""
expected=""
against_etcd=0
binary=""
no_build=0
out_dir="$REPO_ROOT/.e2e-out"
timeout=""
stall_limit=60
single=0
test_timeout=10m
lock_wait=7200
list_only=0

die() { echo "etcd-e2e-compat: $*" >&2; exit 2; }
usage() { sed -n '2,39p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --tier) [ $# -ge 2 ] || die "--tier needs a value"
            IFS=',' read -r -a ts <<< "$2"
            for t in "${ts[@]}"; do
              [[ "$t" =~ ^[1-6]$ ]] || die "bad tier '$t' (1-6)"; tiers+=("$t")
            done; shift ;;
    --tier=*) IFS=',' read -r -a ts <<< "${1#--tier=}"
            for t in "${ts[@]}"; do
              [[ "$t" =~ ^[1-6]$ ]] || die "bad tier '$t' (1-6)"; tiers+=("$t")
            done ;;
    --run) [ $# -ge 2 ] || die "--run needs a value"; run_re="$2"; shift ;;
    --run=*) run_re="${1#--run=}" ;;
    --expected) [ $# -ge 2 ] || die "--expected needs a value"; expected="$2"; shift ;;
    --expected=*) expected="${1#--expected=}" ;;
    --against-etcd) against_etcd=1 ;;
    --binary) [ $# -ge 2 ] || die "--binary needs a value"; binary="$2"; shift ;;
    --binary=*) binary="${1#--binary=}" ;;
    --no-build) no_build=1 ;;
    --out) [ $# -ge 2 ] || die "--out needs a value"; out_dir="$2"; shift ;;
    --out=*) out_dir="${1#--out=}" ;;
    --timeout) [ $# -ge 2 ] || die "--timeout needs a value"; timeout="$2"; shift ;;
    --timeout=*) timeout="${1#--timeout=}" ;;
    --stall-limit) [ $# -ge 2 ] || die "--stall-limit needs a value"; stall_limit="$2"; shift ;;
    --stall-limit=*) stall_limit="${1#--stall-limit=}" ;;
    --lock-wait) [ $# -ge 2 ] || die "--lock-wait needs a value"; lock_wait="$2"; shift ;;
    --lock-wait=*) lock_wait="${1#--lock-wait=}" ;;
    --single-process) single=1 ;;
    --test-timeout) [ $# -ge 2 ] || die "--test-timeout needs a value"; test_timeout="$2"; shift ;;
    --test-timeout=*) test_timeout="${1#--test-timeout=}" ;;
    --list) list_only=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

[ -n "$expected" ] && [ -n "$run_re" ] && die "--expected and --run are exclusive"
[ -n "$expected" ] && [ ${#tiers[@]} -gt 0 ] && die "--expected and --tier are exclusive"
[ -n "$binary" ] && [ "$against_etcd" = 1 ] && die "--binary and --against-etcd are exclusive"
command -v go >/dev/null 2>&1 || die "'go' not found in PATH"
command -v python3 >/dev/null 2>&1 || die "'python3' not found in PATH"

target=rusd; [ "$against_etcd" = 1 ] && target=etcd

# ---------------------------------------------------------------- what to run
# Tiers: deduplicate and sort.
if [ ${#tiers[@]} -gt 0 ]; then
  mapfile -t tiers < <(printf '%s\n' "${tiers[@]}" | sort -un)
fi
label=""
minutes=0
if [ -n "$expected" ]; then
  [ -f "$expected" ] || die "expected-pass list not found: $expected"
  mapfile -t exp_names < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$expected" | grep -v '^$' || true)
  if [ ${#exp_names[@]} -eq 0 ]; then
    echo "=================================================================="
    echo "etcd-e2e-compat: $expected lists 0 tests expected to pass."
    echo "etcd-e2e-compat: NOTHING WAS TESTED: no e2e test is run, none is required to pass."
    echo "=================================================================="
    exit 0
  fi
  for n in "${exp_names[@]}"; do
    [[ "$n" =~ ^Test[A-Za-z0-9_]+$ ]] || die "bad test name in $expected: '$n' (top-level names only)"
  done
  run_re="$(IFS='|'; echo "${exp_names[*]}")"
  label="expected"
  # about 1 minute per test (the slowest single tests take ~1-2 min), 5..85 minutes
  minutes=$(( ${#exp_names[@]} + 5 )); [ $minutes -gt 85 ] && minutes=85
elif [ -n "$run_re" ]; then
  label="run"
  minutes=30
else
  [ ${#tiers[@]} -eq 0 ] && tiers=(6)
  if printf '%s\n' "${tiers[@]}" | grep -qx 6; then tiers=(6); fi
  parts=()
  for t in "${tiers[@]}"; do
    parts+=("${TIER_RE[$t]}")
    minutes=$(( minutes + TIER_TIMEOUT[$t] ))
  done
  run_re="$(IFS='|'; echo "${parts[*]}")"
  label="tier$(IFS='-'; echo "${tiers[*]}")"
fi
# --run and --expected are anchored here unless the user anchored already
if [[ "$run_re" != ^* ]]; then run_re="^($run_re)\$"; fi
[ -z "$timeout" ] && timeout="${minutes}m"

# ---------------------------------------------------------------- wrapper module for the suite
# The suite runs with its package dir as working dir and relies on the etcd repo layout:
# fixtures in ../fixtures, TestEtcdExampleConfig reads ../../etcd.conf.yml.sample, and some
# tests start etcd without --data-dir, which writes ./default.etcd. In the (read-only, but
# writable for root) module cache that fails or pollutes the cache. So the suite runs from a
# writable copy laid out like the repo:  $SRC/tests (module copy), $SRC/etcd.conf.yml.sample,
# used through a `replace` in the wrapper go.mod.
SRC="$BASE/src"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
if [ "$(cat "$SRC/.stamp" 2>/dev/null || true)" != "$ETCD_VERSION" ]; then
  echo "etcd-e2e-compat: preparing a writable copy of go.etcd.io/etcd/tests/v3@$ETCD_VERSION in $SRC ..." >&2
  dl="$(cd / && GOFLAGS= go mod download -json "go.etcd.io/etcd/tests/v3@$ETCD_VERSION" "go.etcd.io/etcd/v3@$ETCD_VERSION")" \
    || die "go mod download of the etcd test module failed"
  tests_dir="$(printf '%s\n' "$dl" | sed -n 's/^[[:space:]]*"Dir": "\(.*\/tests\/v3@.*\)",$/\1/p' | head -1)"
  root_dir="$(printf '%s\n' "$dl" | sed -n 's/^[[:space:]]*"Dir": "\(.*\/etcd\/v3@.*\)",$/\1/p' | head -1)"
  [ -d "$tests_dir" ] && [ -f "$root_dir/etcd.conf.yml.sample" ] || die "cannot locate the downloaded modules ($tests_dir, $root_dir)"
  rm -rf "$SRC"; mkdir -p "$SRC"
  cp -r "$tests_dir" "$SRC/tests"
  chmod -R u+w "$SRC"
  rm -rf "$SRC/tests/e2e/"*.etcd       # in case a run polluted the module cache
  cp "$root_dir/etcd.conf.yml.sample" "$SRC/etcd.conf.yml.sample"
  echo "$ETCD_VERSION" > "$SRC/.stamp"
fi
mkdir -p "$E2E_MOD"
if ! [ -f "$E2E_MOD/go.mod" ] || ! grep -q "^replace go.etcd.io/etcd/tests/v3 => ../src/tests" "$E2E_MOD/go.mod" \
   || ! grep -q "go.etcd.io/etcd/tests/v3 $ETCD_VERSION" "$E2E_MOD/go.mod"; then
  cat > "$E2E_MOD/go.mod" <<EOF
module rusd.local/etcd-e2e

go 1.22

require go.etcd.io/etcd/tests/v3 $ETCD_VERSION

replace go.etcd.io/etcd/tests/v3 => ../src/tests
EOF
  rm -f "$E2E_MOD/go.sum" "$E2E_MOD/tests.list"
fi
# files that tests leave in their working dir (the package dir), e.g. default.etcd
clean_pkg_dir() { rm -rf "$SRC/tests/e2e/"*.etcd 2>/dev/null || true; }
# keeps the requirement in place if someone runs `go mod tidy` there
cat > "$E2E_MOD/tools.go" <<'EOF'
//go:build tools

package tools

import _ "go.etcd.io/etcd/tests/v3/e2e"
EOF
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"

# The list of every top-level test of the suite (cached; used for counts and "not run").
# Compile the suite once into a test binary (cached by go's build cache: ~0.5 s when
# nothing changed), plus test2json to turn its -test.v output into JSON events.
TEST_BIN="$E2E_MOD/e2e.test"
TEST2JSON="$E2E_MOD/test2json"
echo "etcd-e2e-compat: compiling the e2e suite ..." >&2
( cd "$E2E_MOD" && go test -c -o "$TEST_BIN.tmp.$$" "$E2E_PKG" ) > "$E2E_MOD/compile.$$.log" 2>&1 \
  || { cat "$E2E_MOD/compile.$$.log" >&2; die "cannot compile $E2E_PKG"; }
mv -f "$TEST_BIN.tmp.$$" "$TEST_BIN"; rm -f "$E2E_MOD/compile.$$.log"
if ! [ -x "$TEST2JSON" ] || [ "$(cat "$TEST2JSON.stamp" 2>/dev/null)" != "$(go env GOVERSION)" ]; then
  ( cd "$E2E_MOD" && GOFLAGS= go build -o "$TEST2JSON" cmd/test2json ) || die "cannot build cmd/test2json"
  go env GOVERSION > "$TEST2JSON.stamp"
fi
# every top-level test of the suite (for counts and "not run")
TEST_LIST="$E2E_MOD/tests.list"
{ echo "# $(go env GOVERSION) $ETCD_VERSION"
  ( cd "$SRC/tests/e2e" && "$TEST_BIN" -test.list '.*' ) | grep -E '^(Test|Example|Benchmark|Fuzz)'
} > "$TEST_LIST.tmp.$$" || die "cannot list the tests of $TEST_BIN"
mv -f "$TEST_LIST.tmp.$$" "$TEST_LIST"

selected="$(grep -v '^#' "$TEST_LIST" | grep -E '^Test' | grep -E -- "$run_re" || true)"
n_selected=$(printf '%s' "$selected" | grep -c . || true)
if [ "$list_only" = 1 ]; then
  printf '%s\n' "$selected"
  echo "# $n_selected tests match $run_re" >&2
  exit 0
fi
if [ "$n_selected" -eq 0 ]; then
  die "no test of the suite matches $run_re"
fi

# ---------------------------------------------------------------- binaries
REF_BIN="$("$SCRIPT_DIR/etcd-ref-tools.sh" $( [ "$against_etcd" = 1 ] && echo etcd ) etcdctl etcdutl | tail -n 1)"
[ -x "$REF_BIN/etcdctl" ] && [ -x "$REF_BIN/etcdutl" ] || die "reference tools missing in $REF_BIN"

if [ "$against_etcd" = 1 ]; then
  server="$REF_BIN/etcd"
else
  if [ -z "$binary" ]; then
    tdir="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
    case "$tdir" in /*) ;; *) tdir="$REPO_ROOT/$tdir" ;; esac
    if [ "$no_build" = 0 ]; then
      command -v cargo >/dev/null 2>&1 || die "'cargo' not found (or pass --binary)"
      echo "etcd-e2e-compat: cargo build --release --bin rusd ..." >&2
      ( cd "$REPO_ROOT" && cargo build --release --bin rusd ) >&2 || die "cargo build --release --bin rusd failed"
    fi
    binary="$tdir/release/rusd"
  fi
  case "$binary" in /*) ;; *) binary="$PWD/$binary" ;; esac
  [ -x "$binary" ] || die "rusd binary not found or not executable: $binary"
  server="$binary"
fi

mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
# the output dir ignores itself, so nothing in it gets committed by accident
[ -f "$out_dir/.gitignore" ] || echo '*' > "$out_dir/.gitignore"
bin_dir="$out_dir/bin-$target"
rm -rf "$bin_dir"; mkdir -p "$bin_dir"
server_src="$server"
if [ "$target" = rusd ]; then
  # Snapshot the binary: other people may rebuild target/ while the run goes on.
  cp -p "$server" "$bin_dir/rusd"
  server="$bin_dir/rusd"
fi
ln -s "$server" "$bin_dir/etcd"
ln -s "$REF_BIN/etcdctl" "$bin_dir/etcdctl"
ln -s "$REF_BIN/etcdutl" "$bin_dir/etcdutl"

stem="$out_dir/$target-$label"
jsonl="$stem.jsonl"; log="$stem.log"; report="$stem.json"

# ---------------------------------------------------------------- run (one run at a time)
# E2E_LOCK: another lock file, for runs isolated in their own network namespace
# (e.g. `ip netns exec NS env E2E_LOCK=/tmp/NS.lock scripts/etcd-e2e-compat.sh ...`).
lock="${E2E_LOCK:-$CACHE_ROOT/e2e.lock}"
exec 9>"$lock"
if ! flock -n 9; then
  # the suite binds fixed ports 20000+: runs must not overlap. Wait (at most --lock-wait).
  echo "etcd-e2e-compat: another e2e run holds $lock; waiting up to ${lock_wait}s ..." >&2
  flock -w "$lock_wait" 9 || die "gave up waiting for $lock after ${lock_wait}s"
fi

server_real="$(readlink -f "$server")"
# Server processes of this run: the binary is $server_real AND it was started as
# $bin_dir/etcd (argv[0]), so processes of other people's runs are never touched.
pids_of_server() {
  local p arg0
  for p in /proc/[0-9]*; do
    [[ "$p/exe" -ef "$server_real" ]] 2>/dev/null || continue   # builtin: no fork per pid
    arg0="$(tr '\0' '\n' < "$p/cmdline" 2>/dev/null | head -n 1 || true)"
    case "$arg0" in "$bin_dir/etcd"|"$bin_dir/etcd-last-release") echo "${p#/proc/}" ;; esac
  done
  return 0
}
before_pids="$(pids_of_server | sort)"

tools_args=(--tool "$(readlink -f "$REF_BIN/etcdctl")=$bin_dir/etcdctl"
            --tool "$(readlink -f "$REF_BIN/etcdutl")=$bin_dir/etcdutl")
kill_strays() {  # server processes this run left behind: stop them, by pid
  local p stray
  stray="$(comm -13 <(printf '%s\n' "$before_pids") <(pids_of_server | sort) | grep . || true)"
  for p in $stray; do
    echo "etcd-e2e-compat: killing a server process left by this run: $p $(tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null | cut -c1-300)" >&2
    kill -9 "$p" 2>/dev/null || true
  done
}
# The suite's ports (member i: 20000+5i .. +4) must be free in this network namespace: a
# run of someone else (not serialized by our lock) holding them makes every test fail with
# "address already in use". Wait until they are free, at most $1 seconds.
wait_ports_free() {
  python3 - "$1" <<'PY'
import socket, sys, time, subprocess
limit = float(sys.argv[1]); t0 = time.time(); said = False
def busy():
    out = []
    for port in range(20000, 20030):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            out.append(port)
        finally:
            s.close()
    return out
while True:
    b = busy()
    if not b:
        sys.exit(0)
    if time.time() - t0 >= limit:
        sys.stderr.write("etcd-e2e-compat: ports still busy after %.0fs: %s\n" % (limit, b))
        sys.exit(1)
    if not said:
        try:
            who = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
            who = [l for l in who.splitlines() if any(":%d " % p in l for p in b)]
        except OSError:
            who = []
        sys.stderr.write("etcd-e2e-compat: ports %s are in use (another e2e run?); waiting up to %.0fs\n%s\n"
                         % (b, limit, "\n".join(who)))
        said = True
    time.sleep(2)
PY
}
# seconds from a go duration like 90m, 1h, 300s
dur_s() { case "$1" in *h) echo $(( ${1%h} * 3600 ));; *m) echo $(( ${1%m} * 60 ));; *s) echo "${1%s}";; *) echo "$1";; esac; }

if [ "$single" = 1 ]; then
  cmd=(go test -json -v -count=1 -timeout "$timeout" -run "$run_re" "$E2E_PKG" -args "-bin-dir=$bin_dir")
  cmd_str="cd $E2E_MOD && GOFLAGS='$GOFLAGS' ${cmd[*]}"
else
  cmd_str="for each selected top-level test T: cd $SRC/tests/e2e && $TEST2JSON -t -p $E2E_PKG $TEST_BIN -test.v=test2json -test.paniconexit0 -test.count=1 -test.timeout=$test_timeout -test.run '^T\$' -bin-dir=$bin_dir   (budget $timeout)"
fi
wait_ports_free "$lock_wait" || die "the e2e ports 20000-20029 are busy"
started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "etcd-e2e-compat: target=$target ($server_src)"
echo "etcd-e2e-compat: $n_selected tests selected, $( [ "$single" = 1 ] && echo "one process, timeout $timeout" || echo "one process per test, budget $timeout, $test_timeout per test")"
echo "etcd-e2e-compat: $cmd_str"
clean_pkg_dir
t0=$(date +%s)
: > "$stem.watchdog"
: > "$stem.stderr"
if [ "$single" = 1 ]; then
  ( cd "$E2E_MOD" && exec "${cmd[@]}" ) > "$jsonl" 2> "$stem.stderr" &
else
  : > "$jsonl"
  deadline=$(( t0 + $(dur_s "$timeout") ))
  (
    rc_all=0
    for name in $selected; do
      if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "etcd-e2e-compat: time budget $timeout used up; not running $name" >&2
        rc_all=1; continue
      fi
      wait_ports_free 30 || true
      ( cd "$SRC/tests/e2e" && exec "$TEST2JSON" -t -p "$E2E_PKG" "$TEST_BIN" -test.v=test2json \
          -test.paniconexit0 -test.count=1 "-test.timeout=$test_timeout" -test.run "^${name}\$" \
          "-bin-dir=$bin_dir" ) >> "$jsonl" 2>> "$stem.stderr" || rc_all=1
      kill_strays
      clean_pkg_dir
    done
    exit $rc_all
  ) 2>> "$stem.stderr" &
fi
go_pid=$!
trap 'kill "$go_pid" 2>/dev/null; exit 130' INT TERM
wd_pid=""
if [ "$stall_limit" != 0 ]; then
  printf '%s\n' $before_pids > "$stem.before-pids"
  python3 "$SCRIPT_DIR/e2e_watchdog.py" --jsonl "$jsonl" --pid "$go_pid" \
    --server-exe "$server_real" --arg0 "$bin_dir/etcd" "${tools_args[@]}" \
    --before-pids "$stem.before-pids" --limit "$stall_limit" --log "$stem.watchdog" &
  wd_pid=$!
fi
set +e
wait "$go_pid"
go_rc=$?
[ -n "$wd_pid" ] && wait "$wd_pid"
trap - INT TERM
set -e
t1=$(date +%s)
clean_pkg_dir

# Stray server processes left behind by this run (e.g. after a timeout): stop them, by pid,
# so that the next run finds its ports free.
kill_strays

# Raw log: the plain test output (from the JSON stream) followed by go's stderr.
python3 - "$jsonl" > "$log" <<'EOF'
import json, sys
with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
    for line in f:
        try:
            ev = json.loads(line)
        except ValueError:
            sys.stdout.write(line); continue
        if isinstance(ev, dict) and ev.get("Action") == "output":
            sys.stdout.write(ev.get("Output", ""))
EOF
cat "$stem.stderr" >> "$log"
if [ -s "$stem.watchdog" ]; then
  echo "etcd-e2e-compat: the stall watchdog acted:"; cat "$stem.watchdog"
  cat "$stem.watchdog" >> "$log"
fi

# ---------------------------------------------------------------- report
tiers_json="$out_dir/.tiers.json"
{
  echo "{"
  for t in 1 2 3 4 5 6; do
    sep=","; [ $t = 6 ] && sep=""
    printf '  "%s": {"name": "%s", "regex": "^(%s)$"}%s\n' "$t" "${TIER_NAME[$t]}" "${TIER_RE[$t]//\\/\\\\}" "$sep"
  done
  echo "}"
} > "$tiers_json"

rep_args=(--jsonl "$jsonl" --report "$report" --target "$target" --tiers-json "$tiers_json"
          --selected-tiers "$(IFS=','; echo "${tiers[*]:-}")" --test-list "$TEST_LIST"
          --run-regex "$run_re" --command "$cmd_str" --started "$started"
          --wall-seconds "$(( t1 - t0 ))" --go-exit "$go_rc"
          --meta "server_binary=$server_src" --meta "log=$log" --meta "label=$label"
          --meta "stall_limit_s=$stall_limit"
          --meta "mode=$( [ "$single" = 1 ] && echo single-process || echo process-per-test)"
          --meta "test_timeout=$test_timeout")
[ -n "$expected" ] && rep_args+=(--expected "$expected")
set +e
python3 "$SCRIPT_DIR/e2e_report.py" "${rep_args[@]}"
rep_rc=$?
set -e
echo "log: $log"
echo "wall time: $(( t1 - t0 ))s (test run exit $go_rc)"

if [ -n "$expected" ]; then
  exit "$rep_rc"
fi
[ "$rep_rc" = 0 ] || exit 2
[ "$go_rc" = 0 ] || exit 1
exit 0
}
