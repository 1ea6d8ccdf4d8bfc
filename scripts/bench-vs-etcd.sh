#!/usr/bin/env bash
# Benchmark rusd against the reference etcd v3.5.17 with etcd's own `benchmark` tool, as
# /work/shared/design/benchmarks.md describes: every workload runs R times per server,
# alternating the servers (rusd etcd rusd etcd ...), each run on a fresh data dir on a real
# disk (not tmpfs), both servers with the same flags (fsync on), and the medians, the ratio
# rusd/etcd, the machine and the exact commands go to docs/benchmarks.md.
#
# Usage: scripts/bench-vs-etcd.sh [options]
#   --quick              smoke run (a few minutes): R=1, small totals, 100k-key memory test
#   --members N          run N-member clusters (1, 3 or 5; default 1) of each server on this
#                        machine, rusd members with --shards 1; the benchmark spreads its
#                        connections over every member's endpoint. memory/recovery measure one
#                        process and are refused with N > 1; the report goes to
#                        docs/benchmarks-<N>-members.md unless --out says otherwise
#   --runs R             runs per server and workload (default 3; 1 with --quick)
#   --workloads LIST     comma-separated subset of: put-1 put-1000 txn-put txn-10 txn-100
#                        txn-100-1 range-l range-s watch-lat lease-ka memory recovery
#                        (default: all)
#   --scale F            multiply the totals of put-1000, txn-put, range-*, lease-ka by F
#                        (e.g. 0.3 to fit a time budget; put-1 and watch-lat are short anyway)
#   --mem-keys N         keys loaded for memory/recovery (default 1000000; 100000 with --quick)
#   --mem-runs N         loads per server for memory (default 1: loading 1M keys takes minutes);
#                        recovery restarts the last load's data dir R times, alternating
#   --mem-loader put|txn how memory/recovery load the keys: put = one put per request
#                        (benchmarks.md; default), txn = txn-put with 100 puts per txn
#   --retries N          re-run a run whose benchmark stalled (no progress for STALL_S=30 s),
#                        or was killed from outside, up to N times (default 1); the failed
#                        attempt is kept and reported
#   --data-root DIR      where the fresh data dirs go (default /var/tmp/rusd-bench; must be
#                        on a real disk: tmpfs/ramfs are refused)
#   --results DIR        raw outputs (default DATA_ROOT/results-<date>)
#   --out FILE           report file (default docs/benchmarks.md; "-" = only print)
#   --rusd-bin PATH      use this rusd binary, do not build
#   --no-build           do not run cargo; use CARGO_TARGET_DIR/release/rusd as it is
#   --report-only DIR    only (re)write the report from an earlier results dir
#   -h, --help
# Environment: STALL_S (30) seconds without progress before a benchmark run counts as
# stalled; READY_TIMEOUT (120) seconds a server may take to print its ready line.
#
# The server under test listens on 127.0.0.1:23790 (client) and 127.0.0.1:23791 (peer); both
# must be free (with --members N, member i uses 23790+10i and 23791+10i). rusd needs RLIMIT_MEMLOCK for io_uring (it raises its soft limit itself).
set -euo pipefail
trap 'echo "bench-vs-etcd: command failed (line $LINENO): $BASH_COMMAND" >&2' ERR

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
helper="$repo/scripts/bench_report.py"
target="${CARGO_TARGET_DIR:-$repo/target}"

CLIENT_ADDR=127.0.0.1:23790
PEER_ADDR=127.0.0.1:23791
members=1

quick=0
runs=""
workloads="put-1,put-1000,txn-put,txn-10,txn-100,txn-100-1,range-l,range-s,watch-lat,lease-ka,memory,recovery"
scale=1
mem_keys=""
mem_runs=1
mem_loader=put
retries=1
data_root=/var/tmp/rusd-bench
results=""
out=""
rusd_bin=""
build=1
report_only=""

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "bench-vs-etcd: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --members) members="$2"; shift ;;
    --runs) runs="$2"; shift ;;
    --runs=*) runs="${1#*=}" ;;
    --workloads) workloads="$2"; shift ;;
    --workloads=*) workloads="${1#*=}" ;;
    --scale) scale="$2"; shift ;;
    --scale=*) scale="${1#*=}" ;;
    --mem-keys) mem_keys="$2"; shift ;;
    --mem-keys=*) mem_keys="${1#*=}" ;;
    --mem-runs) mem_runs="$2"; shift ;;
    --mem-runs=*) mem_runs="${1#*=}" ;;
    --mem-loader) mem_loader="$2"; shift ;;
    --mem-loader=*) mem_loader="${1#*=}" ;;
    --retries) retries="$2"; shift ;;
    --retries=*) retries="${1#*=}" ;;
    --data-root) data_root="$2"; shift ;;
    --data-root=*) data_root="${1#*=}" ;;
    --results) results="$2"; shift ;;
    --results=*) results="${1#*=}" ;;
    --out) out="$2"; shift ;;
    --out=*) out="${1#*=}" ;;
    --rusd-bin) rusd_bin="$2"; build=0; shift ;;
    --rusd-bin=*) rusd_bin="${1#*=}"; build=0 ;;
    --no-build) build=0 ;;
    --report-only) report_only="$2"; shift ;;
    --report-only=*) report_only="${1#*=}" ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

report() {
  if [ "$out" = "-" ]; then
    python3 "$helper" report "$1"
  else
    python3 "$helper" report "$1" --out "$out"
    log "report written to $out"
  fi
}

case "$members" in
  1|3|5) ;;
  *) die "--members must be 1, 3 or 5" ;;
esac
if [ -z "$out" ]; then
  if [ "$members" = 1 ]; then out="$repo/docs/benchmarks.md"; else out="$repo/docs/benchmarks-$members-members.md"; fi
fi
# Member i's client and peer addresses; member 0's client address is CLIENT_ADDR, where etcdctl
# probes go. The benchmark gets every member's endpoint.
member_client() { echo "127.0.0.1:$((23790 + 10 * $1))"; }
member_peer() { echo "127.0.0.1:$((23791 + 10 * $1))"; }
ALL_ADDRS=()
ENDPOINTS=""
INITIAL_CLUSTER=""
for i in $(seq 0 $((members - 1))); do
  ALL_ADDRS+=("$(member_client "$i")" "$(member_peer "$i")")
  ENDPOINTS="$ENDPOINTS${ENDPOINTS:+,}$(member_client "$i")"
  INITIAL_CLUSTER="$INITIAL_CLUSTER${INITIAL_CLUSTER:+,}m$i=http://$(member_peer "$i")"
done

if [ -n "$report_only" ]; then
  report "$report_only"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# workloads and totals
# ---------------------------------------------------------------------------------------------
declare -A want=()
IFS=',' read -r -a _wl <<< "$workloads"
for w in "${_wl[@]}"; do
  if [ "$members" != 1 ]; then
    case "$w" in
      memory|recovery)
        # These measure one process's RSS and restart time; a cluster run measures throughput.
        if [ "$workloads" = "put-1,put-1000,txn-put,range-l,range-s,watch-lat,lease-ka,memory,recovery" ]; then continue; fi
        die "--members $members: workload '$w' measures a single process; run it with --members 1" ;;
    esac
  fi
  case "$w" in
    watch-latency) w=watch-lat ;;
    lease-keepalive) w=lease-ka ;;
    range) want[range-l]=1; want[range-s]=1; continue ;;
  esac
  case "$w" in
    put-1|put-1000|txn-put|txn-10|txn-100|txn-100-1|range-l|range-s|watch-lat|lease-ka|memory|recovery) want[$w]=1 ;;
    "") ;;
    *) die "unknown workload '$w'" ;;
  esac
done
has() { [ -n "${want[$1]:-}" ]; }

if [ "$quick" = 1 ]; then
  : "${runs:=1}"; : "${mem_keys:=100000}"
  T_PUT1=300; T_PUTN=10000; T_TXN=5000; T_RANGE=10000; RANGE_PRELOAD=20000
  T_TXN10=500; T_TXN100=100; T_TXN100_1=50
  T_WATCH=1000; T_LEASE=5000
  mode=quick
else
  : "${runs:=3}"; : "${mem_keys:=1000000}"
  # The totals of benchmarks.md.
  T_PUT1=2000; T_PUTN=100000; T_TXN=50000; T_RANGE=100000; RANGE_PRELOAD=100000
  # txn-10 / txn-100 as benchmarks.md has them; txn-100-1 is one client sending 100-put txns.
  T_TXN10=2000; T_TXN100=200; T_TXN100_1=200
  T_WATCH=10000; T_LEASE=50000
  mode=full
fi
WATCH_RATE=1000
scaled() { python3 -c "import sys; print(max(1, int(round(int(sys.argv[1]) * float(sys.argv[2])))))" "$1" "$scale"; }
if [ "$scale" != 1 ]; then
  # put-1 and watch-lat are bounded by fsync / the put rate (seconds each): not scaled
  T_PUTN=$(scaled $T_PUTN); T_TXN=$(scaled $T_TXN)
  T_TXN10=$(scaled $T_TXN10); T_TXN100=$(scaled $T_TXN100); T_TXN100_1=$(scaled $T_TXN100_1)
  T_RANGE=$(scaled $T_RANGE); T_LEASE=$(scaled $T_LEASE)
  mode="$mode, totals ×$scale"
fi
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer"
[[ "$mem_keys" =~ ^[1-9][0-9]*$ ]] || die "--mem-keys must be a positive integer"
[[ "$mem_runs" =~ ^[1-9][0-9]*$ ]] || die "--mem-runs must be a positive integer"
[[ "$retries" =~ ^[0-9]+$ ]] || die "--retries must be a non-negative integer"
case "$mem_loader" in
  put) ;;
  txn) [ $((mem_keys % 100)) = 0 ] || die "--mem-loader txn needs --mem-keys divisible by 100" ;;
  *) die "--mem-loader must be put or txn" ;;
esac

# ---------------------------------------------------------------------------------------------
# tools, binaries, directories
# ---------------------------------------------------------------------------------------------
command -v python3 >/dev/null || die "python3 not found"

bin_dir="$("$repo/scripts/etcd-ref-tools.sh" etcd benchmark | tail -n 1)"
ETCD_BIN="$bin_dir/etcd"
BENCH_BIN="$bin_dir/benchmark"
ETCDCTL_BIN="$bin_dir/etcdctl"
[ -x "$ETCD_BIN" ] && [ -x "$BENCH_BIN" ] || die "etcd/benchmark missing in $bin_dir"
if [ ! -x "$ETCDCTL_BIN" ]; then
  # probes (watch/lease support) and the range key use etcdctl
  ETCDCTL_BIN="$("$repo/scripts/etcd-ref-tools.sh" etcdctl | tail -n 1)/etcdctl"
fi

if [ -z "$rusd_bin" ]; then
  if [ "$build" = 1 ]; then
    log "building rusd: cargo build --release --bin rusd (target dir $target)"
    (cd "$repo" && cargo build --release --bin rusd)
  fi
  rusd_bin="$target/release/rusd"
fi
[ -x "$rusd_bin" ] || die "rusd binary not found: $rusd_bin"

mkdir -p "$data_root"
data_root="$(cd "$data_root" && pwd)"
fstype="$(stat -f -c %T "$data_root")"
case "$fstype" in
  tmpfs|ramfs) die "$data_root is on $fstype; the comparison needs a real disk (use --data-root)" ;;
esac
stamp="$(date +%Y%m%d-%H%M%S)"
: "${results:=$data_root/results-$stamp}"
mkdir -p "$results"
results="$(cd "$results" && pwd)"
work="$data_root/run-$stamp"
mkdir -p "$work"

# Snapshot the binaries: other people may rebuild target/release/rusd while this runs, and
# other harnesses on this machine clean up "their" servers by executable identity (e.g. the
# e2e runner's stray-server kill for the cached etcd), which must not hit ours.
mkdir -p "$results/bin"
cp "$rusd_bin" "$results/bin/rusd"
cp "$ETCD_BIN" "$results/bin/etcd"
cp "$BENCH_BIN" "$results/bin/benchmark"
RUSD_BIN="$results/bin/rusd"
ETCD_BIN="$results/bin/etcd"
BENCH_BIN="$results/bin/benchmark"

# glommio's io_uring rings need locked memory; rusd raises its soft limit itself when the hard
# limit allows, and this covers shells whose hard limit is low but raisable.
ulimit -l unlimited 2>/dev/null || ulimit -l 65536 2>/dev/null || true

port_busy() { (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }
for a in "${ALL_ADDRS[@]}"; do
  port_busy "$a" && die "$a is in use; stop whatever listens there first"
done

# Same flags for both servers: fsync on (the default of both), etcd's default snapshot-count,
# the same backend quota (etcd's default 2 GiB, given explicitly).
SF=()
set_server_flags() { # DATADIR [MEMBER] -> SF array
  if [ "$members" = 1 ]; then
    SF=(--name default
        --listen-client-urls "http://$CLIENT_ADDR" --advertise-client-urls "http://$CLIENT_ADDR"
        --listen-peer-urls "http://$PEER_ADDR" --initial-advertise-peer-urls "http://$PEER_ADDR"
        --initial-cluster "default=http://$PEER_ADDR"
        --snapshot-count 100000 --quota-backend-bytes 2147483648
        --data-dir "$1")
  else
    local i="${2:-0}" c p
    c="$(member_client "$i")"; p="$(member_peer "$i")"
    SF=(--name "m$i"
        --listen-client-urls "http://$c" --advertise-client-urls "http://$c"
        --listen-peer-urls "http://$p" --initial-advertise-peer-urls "http://$p"
        --initial-cluster "$INITIAL_CLUSTER" --initial-cluster-token bench-cluster
        --snapshot-count 100000 --quota-backend-bytes 2147483648
        --data-dir "$1/m$i")
  fi
}

# ---------------------------------------------------------------------------------------------
# server control
# ---------------------------------------------------------------------------------------------
SERVER_PID=""
READY_S=""
READY_TIMEOUT=${READY_TIMEOUT:-120}
START_ERR=""
CUR_DATA=""

# etcd (Go) leaves a server-side TIME_WAIT socket on its client port when it stops (its own
# loopback gateway connection). rusd's listener sets SO_REUSEPORT but not SO_REUSEADDR, so it
# cannot bind that port until the TIME_WAIT expires (60 s): "Address already in use". Before
# every start, destroy TIME_WAIT sockets whose local port is one of the two ports under test
# (`ss -K`), or wait for them to expire where the kernel cannot destroy them.
tw_filter() {
  local f="" a
  for a in "${ALL_ADDRS[@]}"; do f="$f${f:+ or }sport = :${a##*:}"; done
  echo "( $f )"
}
tw_sockets() {
  ss -Htan state time-wait "$(tw_filter)" 2>/dev/null
}
clear_time_wait() {
  [ -n "$(tw_sockets)" ] || return 0
  ss -K -Htan state time-wait "$(tw_filter)" >/dev/null 2>&1 || true
  local i=0
  while [ -n "$(tw_sockets)" ] && [ $i -lt 650 ]; do
    [ $i = 0 ] && log "  waiting for TIME_WAIT sockets on the server ports to expire (ss -K could not destroy them)"
    sleep 0.1; i=$((i + 1))
  done
}

# start_server NAME DATADIR LOGFILE: starts the server (every member with --members N: member i
# logs to LOGFILE, or LOGFILE.m<i> for i > 0) and waits for "ready to serve client requests"
# from each; READY_S = seconds from exec to the last member's ready line. On failure: returns 1,
# START_ERR says why. (Call it directly, never in $(...): SERVER_PIDS must be set in this shell.)
SERVER_PIDS=()
start_server() {
  local name="$1" dir="$2" logf="$3" bin
  case "$name" in rusd) bin="$RUSD_BIN" ;; etcd) bin="$ETCD_BIN" ;; esac
  clear_time_wait
  for a in "${ALL_ADDRS[@]}"; do
    local i=0
    while port_busy "$a"; do
      i=$((i + 1)); [ $i -gt 100 ] && { START_ERR="port $a still in use"; return 1; }
      sleep 0.1
    done
  done
  local t0; t0=$(date +%s%N)
  SERVER_PIDS=()
  local m mlog logs=()
  for m in $(seq 0 $((members - 1))); do
    set_server_flags "$dir" "$m"
    mlog="$logf"; [ "$m" = 0 ] || mlog="$logf.m$m"
    logs+=("$mlog")
    local extra=()
    # Three processes share two cores: one shard each, as a cluster member in production
    # would have its own machine.
    [ "$members" != 1 ] && [ "$name" = rusd ] && extra=(--shards 1)
    "$bin" "${SF[@]}" "${extra[@]}" >"$mlog" 2>&1 &
    SERVER_PIDS+=($!)
  done
  SERVER_PID="${SERVER_PIDS[0]}"
  local k
  for k in "${!SERVER_PIDS[@]}"; do
    if ! READY_S=$(python3 "$helper" wait-ready --log "${logs[$k]}" --pid "${SERVER_PIDS[$k]}" \
                     --start-ns "$t0" --timeout "$READY_TIMEOUT" 2>>"$logf.wait"); then
      stop_server
      START_ERR="$name member $k did not become ready: $(cat "$logf.wait"); last log lines: $(tail -n 3 "${logs[$k]}" | tr '\n' ' ')"
      return 1
    fi
  done
  # The ready line comes after the listener is up; make sure a request goes through (on a
  # cluster, a linearizable one, which needs a leader).
  local i=0
  until "$ETCDCTL_BIN" --endpoints="$ENDPOINTS" --command-timeout=2s endpoint health \
          >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 50 ]; then stop_server; START_ERR="$name: endpoint health never succeeded"; return 1; fi
    sleep 0.1
  done
}

stop_server() {
  [ ${#SERVER_PIDS[@]} -gt 0 ] || return 0
  local pid
  for pid in "${SERVER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${SERVER_PIDS[@]}"; do
    local i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  SERVER_PIDS=()
  SERVER_PID=""
}

cleanup() {
  stop_server
  [ -n "$work" ] && rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

server_rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status"; }
server_hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$SERVER_PID/status"; }
server_alive() {
  [ ${#SERVER_PIDS[@]} -gt 0 ] || return 1
  local pid
  for pid in "${SERVER_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null || return 1; done
}

BENCH=("$BENCH_BIN" "--endpoints=$ENDPOINTS" --precise)

# bench OUTBASE ARGS...: one benchmark run; stdout -> OUTBASE.out, stderr -> OUTBASE.err.
# Stall watchdog: the tool waits forever for a request the server never answers, so if its
# progress counter ("N / TOTAL") does not move for STALL_S seconds, the run is stopped and
# OUTBASE.stalled says where it stood.
STALL_S=${STALL_S:-30}
progress_of() { { tail -c 300 "$1" 2>/dev/null | tr '\r' '\n' | grep -o '[0-9]\+ / [0-9]\+' | tail -n 1; } || true; }
bench() {
  local base="$1"; shift
  local rc=0 last="" same=0 now
  rm -f "$base.stalled"
  "${BENCH[@]}" "$@" >"$base.out" 2>"$base.err" &
  local bpid=$!
  while kill -0 "$bpid" 2>/dev/null; do
    sleep 1
    now=$(progress_of "$base.out")
    if [ -n "$now" ] && [ "$now" = "$last" ]; then same=$((same + 1)); else same=0; last="$now"; fi
    if [ $same -ge "$STALL_S" ]; then
      echo "no progress for ${STALL_S}s at $now requests: the server stopped answering (server still alive: $(server_alive && echo yes || echo no))" > "$base.stalled"
      kill -INT "$bpid" 2>/dev/null || true
      sleep 2
      kill -KILL "$bpid" 2>/dev/null || true
      break
    fi
  done
  wait "$bpid" || rc=$?
  [ -f "$base.stalled" ] && rc=124
  return $rc
}

# record_cmd WORKLOAD ARGS...: the exact command, once per workload
record_cmd() {
  local w="$1"; shift
  local f="$results/$w/cmd.txt"
  local line="benchmark --endpoints=$ENDPOINTS --precise $*"
  grep -qxF -- "$line" "$f" 2>/dev/null || echo "$line" >> "$f"
}

unimplemented_in() { grep -qs 'code = Unimplemented' "$@"; }

# check_bench W SERVER REP: classify a finished benchmark run
check_bench() {
  local w="$1" s="$2" rep="$3" rc="$4"
  local base="$results/$w/$s-$rep"
  if unimplemented_in "$base.out" "$base.err"; then
    echo "the server answered Unimplemented: $(grep -oh 'code = Unimplemented[^"]*' "$base.out" "$base.err" | sed -n 1p)" > "$base.unsupported"
    log "  $w $s #$rep: not supported (Unimplemented)"
  elif [ -f "$base.stalled" ]; then
    echo "stalled: $(cat "$base.stalled")" > "$base.failed"
    log "  $w $s #$rep: STALLED ($(cat "$base.stalled"))"
  elif [ "$rc" = 143 ] || [ "$rc" = 137 ]; then
    echo "the benchmark tool was killed by a signal (rc=$rc) from outside this script; server alive: $(server_alive && echo yes || echo no)" > "$base.failed"
    log "  $w $s #$rep: benchmark killed from outside (rc=$rc)"
  elif [ "$rc" != 0 ] || ! grep -q '^Summary:' "$base.out"; then
    echo "benchmark exited with $rc; $(tail -n 2 "$base.err" | tr '\n' ' ')" > "$base.failed"
    log "  $w $s #$rep: FAILED (rc=$rc)"
  elif ! server_alive; then
    echo "the server died during the run" > "$base.failed"
    log "  $w $s #$rep: FAILED (server died)"
  else
    log "  $w $s #$rep: $(python3 "$helper" parse "$base.out" | python3 -c \
      'import json,sys; d=json.load(sys.stdin); print("%.0f ops/s, p50 %.2f ms, p99 %.2f ms" % (d["rps"], d["p50_s"]*1e3, d["p99_s"]*1e3))' 2>/dev/null || echo parsed)"
  fi
}

# fresh DATA dir for one session
fresh_dir() {
  CUR_DATA="$work/$1"
  rm -rf "$CUR_DATA"
  mkdir -p "$(dirname "$CUR_DATA")"
}

end_session() {
  stop_server
  [ -n "$CUR_DATA" ] && rm -rf "$CUR_DATA"
  CUR_DATA=""
  sync
  sleep 1
}

# begin W SERVER REP: fresh dir + server; on failure marks the run failed and returns 1
begin() {
  local w="$1" s="$2" rep="$3"
  mkdir -p "$results/$w"
  fresh_dir "$w-$s-$rep"
  if ! start_server "$s" "$CUR_DATA" "$results/$w/$s-$rep.log"; then
    echo "$START_ERR" > "$results/$w/$s-$rep.failed"
    log "  $w $s #$rep: FAILED to start: $START_ERR"
    end_session
    return 1
  fi
}

# ---------------------------------------------------------------------------------------------
# workloads
# ---------------------------------------------------------------------------------------------
PUT_COMMON=(--key-size=8 --val-size=256 --key-space-size=100000)

w_simple() { # W S REP ARGS...
  local w="$1" s="$2" rep="$3"; shift 3
  begin "$w" "$s" "$rep" || return 0
  if [ "$w" = put-1 ]; then
    # the disk's fdatasync latency right now, next to the fsync-bound put-1 figure
    python3 "$helper" fsync "$work" --n 500 --out "$results/$w/fsync-$s-$rep.json" >/dev/null
  fi
  record_cmd "$w" "$@"
  local rc=0
  bench "$results/$w/$s-$rep" "$@" || rc=$?
  check_bench "$w" "$s" "$rep" "$rc"
  if [ "$w" = put-1 ]; then
    python3 "$helper" fsync "$work" --n 500 --out "$results/$w/fsync-$s-$rep-after.json" >/dev/null
  fi
  end_session
}

RANGE_KEY=bench-range-key

w_range() { # S REP : preload, then range-l and/or range-s on the same server
  local s="$1" rep="$2"
  local first; if has range-l; then first=range-l; else first=range-s; fi
  begin "$first" "$s" "$rep" || return 0
  # preload: RANGE_PRELOAD distinct keys (8 B keys, 256 B values), 100 puts per txn
  local pre=(--conns=100 --clients=1000 txn-put --txn-ops=100 --total="$(( (RANGE_PRELOAD + 99) / 100 ))"
             --key-size=8 --val-size=256 --key-space-size="$RANGE_PRELOAD")
  mkdir -p "$results/range-preload"
  local rc=0
  bench "$results/range-preload/$s-$rep" "${pre[@]}" || rc=$?
  if [ $rc != 0 ] || ! "$ETCDCTL_BIN" --endpoints="$CLIENT_ADDR" put "$RANGE_KEY" \
        "$(head -c 256 /dev/zero | tr '\0' v)" >/dev/null 2>>"$results/range-preload/$s-$rep.err"; then
    for w in range-l range-s; do
      has $w && { mkdir -p "$results/$w"; echo "preload of $RANGE_PRELOAD keys failed (rc=$rc) $(cat "$results/range-preload/$s-$rep.stalled" 2>/dev/null)" > "$results/$w/$s-$rep.failed"; }
    done
    log "  range $s #$rep: preload FAILED"
    end_session
    return 0
  fi
  for w in range-l range-s; do
    has $w || continue
    mkdir -p "$results/$w"
    local c=l; [ $w = range-s ] && c=s
    local args=(--conns=100 --clients=1000 range "$RANGE_KEY" --total="$T_RANGE" --consistency=$c)
    record_cmd "$w" "${pre[@]}" "  # preload; then etcdctl put $RANGE_KEY <256 B value>"
    record_cmd "$w" "${args[@]}"
    rc=0
    bench "$results/$w/$s-$rep" "${args[@]}" || rc=$?
    check_bench "$w" "$s" "$rep" "$rc"
  done
  end_session
}

# probe_watch: 0 = watch works, 1 = Unimplemented (message on stdout)
probe_watch() {
  local outp
  outp=$(timeout 3 "$ETCDCTL_BIN" --endpoints="$CLIENT_ADDR" watch bench-probe-key 2>&1 || true)
  if grep -q 'Unimplemented' <<< "$outp"; then echo "$outp" | grep Unimplemented | sed -n 1p; return 1; fi
  return 0
}

# probe_lease: 0 = grant + keep-alive work, 1 = Unimplemented
probe_lease() {
  local outp id
  outp=$("$ETCDCTL_BIN" --endpoints="$CLIENT_ADDR" lease grant 60 2>&1 || true)
  if grep -q 'Unimplemented' <<< "$outp"; then echo "LeaseGrant: $outp" | sed -n 1p; return 1; fi
  id=$(echo "$outp" | awk '/granted/ {print $2}')
  [ -n "$id" ] || return 0  # unexpected; let the benchmark tell
  outp=$(timeout 5 "$ETCDCTL_BIN" --endpoints="$CLIENT_ADDR" lease keep-alive --once "$id" 2>&1 || true)
  if grep -q 'Unimplemented' <<< "$outp"; then echo "LeaseKeepAlive: $outp" | sed -n 1p; return 1; fi
  "$ETCDCTL_BIN" --endpoints="$CLIENT_ADDR" lease revoke "$id" >/dev/null 2>&1 || true
  return 0
}

w_probed() { # W S REP PROBE ARGS...
  local w="$1" s="$2" rep="$3" probe="$4"; shift 4
  begin "$w" "$s" "$rep" || return 0
  record_cmd "$w" "$@"
  local msg
  if ! msg=$($probe); then
    echo "not supported by $s yet: $msg" > "$results/$w/$s-$rep.unsupported"
    log "  $w $s #$rep: not supported ($msg)"
    end_session
    return 0
  fi
  local rc=0
  bench "$results/$w/$s-$rep" "$@" || rc=$?
  check_bench "$w" "$s" "$rep" "$rc"
  end_session
}

# key_count: number of keys in the server (or "?")
key_count() {
  "$ETCDCTL_BIN" --endpoints="$CLIENT_ADDR" --command-timeout=120s get "" --prefix --count-only \
    -w fields 2>/dev/null | awk -F' : ' '/^"Count"/ {print $2; found=1} END {if (!found) print "?"}'
}

# memory_load S REP: fresh dir, load mem_keys keys, VmRSS; the server is stopped afterwards and
# its data dir kept in MEM_DIR[S] for the recovery runs.
declare -A MEM_DIR=()
memory_load() {
  local s="$1" rep="$2"
  local w=memory; has memory || w=recovery
  if ! begin "$w" "$s" "$rep"; then
    if has recovery && [ $w = memory ]; then
      mkdir -p "$results/recovery"; cp "$results/memory/$s-$rep.failed" "$results/recovery/$s-1.failed"
    fi
    return 0
  fi
  mkdir -p "$results/memory-load"
  local load
  if [ "$mem_loader" = txn ]; then
    load=(--conns=100 --clients=1000 txn-put --txn-ops=100 --total="$(( mem_keys / 100 ))"
          --key-size=8 --val-size=256 --key-space-size="$mem_keys")
  else
    load=(--conns=100 --clients=1000 put --total="$mem_keys" --key-size=8 --val-size=256
          --key-space-size="$mem_keys" --sequential-keys)
  fi
  has memory && record_cmd memory "${load[@]}"
  local rc=0
  bench "$results/memory-load/$s-$rep" "${load[@]}" || rc=$?
  if [ $rc != 0 ] || ! server_alive || ! grep -q '^Summary:' "$results/memory-load/$s-$rep.out"; then
    local why
    if [ -f "$results/memory-load/$s-$rep.stalled" ]; then
      why="loading $mem_keys keys stalled: $(cat "$results/memory-load/$s-$rep.stalled")"
    else
      why="loading $mem_keys keys failed (rc=$rc); $(tail -n 2 "$results/memory-load/$s-$rep.err" | tr '\n' ' ')"
    fi
    has memory && echo "$why" > "$results/memory/$s-$rep.failed"
    has recovery && { mkdir -p "$results/recovery"; echo "$why" > "$results/recovery/$s-1.failed"; }
    log "  memory $s #$rep: load FAILED: $why"
    end_session
    return 0
  fi
  sleep 3  # let background work (etcd's backend commit, GC) settle
  local rss; rss=$(server_rss_kib)
  if has memory; then
    echo "$rss $(server_hwm_kib)" > "$results/memory/$s-$rep.val"
  fi
  log "  memory $s #$rep: VmRSS $(( rss / 1024 )) MiB after $mem_keys keys (loaded at $(python3 "$helper" parse "$results/memory-load/$s-$rep.out" | python3 -c 'import json,sys; print("%.0f" % json.load(sys.stdin)["rps"])') requests/s)"
  if has recovery; then
    stop_server           # SIGTERM, as a service manager would
    MEM_DIR[$s]="$CUR_DATA"
    CUR_DATA=""
    sync
  else
    end_session
  fi
}

# recovery_run S REP: restart on MEM_DIR[S], time exec -> ready
declare -A RECOVERY_HUNG=()
recovery_run() {
  local s="$1" rep="$2"
  local dir="${MEM_DIR[$s]:-}"
  [ -n "$dir" ] || return 0   # its load failed (already recorded)
  mkdir -p "$results/recovery"
  if [ -n "${RECOVERY_HUNG[$s]:-}" ]; then
    echo "skipped: restart #${RECOVERY_HUNG[$s]} did not become ready within ${READY_TIMEOUT}s" > "$results/recovery/$s-$rep.failed"
    return 0
  fi
  echo "load as for memory ($mem_keys keys) and stop (SIGTERM); then, R times alternating, restart on that data dir and time exec -> \"ready to serve client requests\" (stopping with SIGTERM after each)" > "$results/recovery/cmd.txt"
  if start_server "$s" "$dir" "$results/recovery/$s-$rep.log"; then
    echo "$READY_S $(server_rss_kib)" > "$results/recovery/$s-$rep.val"
    local n=""
    if [ "$rep" = 1 ]; then
      n=$(key_count)   # every key must still be there
      [ "$n" = "$mem_keys" ] || echo "after the restart the server reported $n keys, not $mem_keys" > "$results/recovery/$s-$rep.note"
      n=" ($n keys after the restart)"
    fi
    log "  recovery $s #$rep: ready after ${READY_S}s$n"
  else
    echo "$START_ERR" > "$results/recovery/$s-$rep.failed"
    log "  recovery $s #$rep: FAILED: $START_ERR"
    case "$START_ERR" in *"timed out"*) RECOVERY_HUNG[$s]=$rep ;; esac
  fi
  stop_server
  sync
  sleep 1
}

# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
t_start=$(date +%s)
etcd_version="$("$ETCD_BIN" --version | sed -n 1p)"
rusd_commit="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
rusd_dirty=0
[ -n "$(git -C "$repo" status --porcelain --untracked-files=no -- src shards proto Cargo.toml Cargo.lock 2>/dev/null)" ] && rusd_dirty=1
{
  echo "mode=$mode"
  echo "runs=$runs"
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "workloads=$workloads"
  echo "mem_keys=$mem_keys"
  echo "mem_runs=$mem_runs"
  echo "mem_loader=$mem_loader"
  echo "endpoint=$ENDPOINTS"
  echo "members=$members"
  set_server_flags DIR; echo "server_flags=${SF[*]}$([ "$members" = 1 ] || echo " (member 0 of $members; rusd adds --shards 1)")"
  echo "data_root=$data_root"
  echo "etcd_version=$etcd_version"
  echo "rusd_commit=$rusd_commit"
  echo "rusd_dirty=$rusd_dirty"
  echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)"
} > "$results/meta.env"
python3 "$helper" machine "$work" --out "$results/machine.json"

log "results: $results   data dirs: $work ($fstype)   mode: $mode, R=$runs"
log "fdatasync probe on $work"
python3 "$helper" fsync "$work" --n 500 --out "$results/fsync.json" >&2

# with_retry FN S REP ARGS...: one session; if it stalled (see bench), keep its outcome as
# S-REP.attemptN.failed and run it again, up to $retries times.
with_retry() {
  local fn="$1" s="$2" rep="$3"; shift 3
  local attempt=0 f stalled
  while :; do
    touch "$results/.mark"
    "$fn" "$s" "$rep" "$@"
    stalled=()
    while IFS= read -r f; do
      grep -q 'stall\|killed by a signal\|server died' "$f" && stalled+=("$f")
    done < <(find "$results" -name "$s-$rep.failed" -newer "$results/.mark")
    [ ${#stalled[@]} -gt 0 ] && [ $attempt -lt "$retries" ] || break
    attempt=$((attempt + 1))
    for f in "${stalled[@]}"; do mv "$f" "${f%.failed}.attempt$attempt.failed"; done
    log "  $s #$rep stalled or was killed; retrying (attempt $((attempt + 1)))"
  done
}

each() { # FN ARGS...: R alternating runs: rusd etcd rusd etcd ...
  local fn="$1"; shift
  local rep s
  for rep in $(seq 1 "$runs"); do
    for s in rusd etcd; do with_retry "$fn" "$s" "$rep" "$@"; done
  done
}
simple() { local s="$1" rep="$2" w="$3"; shift 3; w_simple "$w" "$s" "$rep" "$@"; }
probed() { local s="$1" rep="$2" w="$3"; shift 3; w_probed "$w" "$s" "$rep" "$@"; }

if has put-1; then
  log "put-1"
  each simple put-1 --conns=1 --clients=1 put --total="$T_PUT1" "${PUT_COMMON[@]}" --sequential-keys
fi
if has put-1000; then
  log "put-1000"
  each simple put-1000 --conns=100 --clients=1000 put --total="$T_PUTN" "${PUT_COMMON[@]}" --sequential-keys
fi
if has txn-put; then
  log "txn-put"
  each simple txn-put --conns=100 --clients=1000 txn-put --total="$T_TXN" "${PUT_COMMON[@]}"
fi
if has txn-10; then
  log "txn-10"
  each simple txn-10 --conns=50 --clients=200 txn-put --txn-ops=10 --total="$T_TXN10" "${PUT_COMMON[@]}"
fi
if has txn-100; then
  log "txn-100"
  each simple txn-100 --conns=50 --clients=200 txn-put --txn-ops=100 --total="$T_TXN100" "${PUT_COMMON[@]}"
fi
if has txn-100-1; then
  log "txn-100-1"
  each simple txn-100-1 --conns=1 --clients=1 txn-put --txn-ops=100 --total="$T_TXN100_1" "${PUT_COMMON[@]}"
fi
if has range-l || has range-s; then
  log "range (preload $RANGE_PRELOAD keys, then range-l / range-s)"
  each w_range
fi
if has watch-lat; then
  log "watch-lat"
  each probed watch-lat probe_watch watch-latency --total="$T_WATCH" --put-rate="$WATCH_RATE"
fi
if has lease-ka; then
  log "lease-ka"
  each probed lease-ka probe_lease --conns=100 --clients=1000 lease-keepalive --total="$T_LEASE"
fi
if has memory || has recovery; then
  log "memory ($mem_keys keys; $mem_runs load(s) per server)"
  for rep in $(seq 1 "$mem_runs"); do
    for s in rusd etcd; do
      # only the last load's data dirs are kept for the recovery runs
      [ -n "${MEM_DIR[$s]:-}" ] && rm -rf "${MEM_DIR[$s]}"
      MEM_DIR[$s]=""
      with_retry memory_load "$s" "$rep"
    done
  done
  if has recovery; then
    log "recovery (restart on the loaded data dirs)"
    each recovery_run
  fi
  for s in rusd etcd; do [ -n "${MEM_DIR[$s]:-}" ] && rm -rf "${MEM_DIR[$s]}"; done
fi

t_end=$(date +%s)
{
  echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "duration=$(( (t_end - t_start) / 60 )) min $(( (t_end - t_start) % 60 )) s"
} >> "$results/meta.env"
log "done in $(( t_end - t_start ))s"
sha256sum "$results/bin/"* > "$results/binaries.sha256" 2>/dev/null || true
rm -f "$results/bin/etcd" "$results/bin/benchmark"   # cached anyway; bin/rusd stays for profiling
report "$results"
