#!/usr/bin/env bash
# Snapshot and import at scale (not run in CI): loads KEYS keys into rusd with etcd's benchmark
# tool, times `etcdctl snapshot save` and rusd's peak RSS meanwhile, checks the file with
# `etcdutl snapshot status`, restores it with etcdutl, and times rusd's start on the result
# (the import) and its peak RSS, against a plain restart. Results: docs/etcd-formats.md.
#
# Usage: scripts/snapshot-scale.sh [RUSD_BINARY] [KEYS]   (defaults: target/release/rusd, 1000000)
# Binds 127.0.0.1:23790; run it in a network namespace of its own on a shared machine.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rusd="${1:-${CARGO_TARGET_DIR:-$repo/target}/release/rusd}"
keys="${2:-1000000}"
bin="$("$repo/scripts/etcd-ref-tools.sh" etcdctl etcdutl benchmark | tail -n 1)"
ulimit -l unlimited 2>/dev/null || true
work="$(mktemp -d /tmp/rusd-scale-XXXXXX)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
url=http://127.0.0.1:23790
flags=(--listen-client-urls "$url" --advertise-client-urls "$url" --shards 2
  --quota-backend-bytes 8589934592)
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
rss() { grep -E "VmRSS|VmHWM" "/proc/$1/status" | tr -s ' \t' ' ' | paste -sd ' '; }
wait_ready() { until grep -qs "ready to serve" "$1"; do sleep 0.05; kill -0 "$2"; done; }

echo "load: $(uptime)"
"$rusd" --data-dir "$work/d" "${flags[@]}" > "$work/d.log" 2>&1 &
pid=$!
wait_ready "$work/d.log" $pid
t=$(now)
"$bin/benchmark" --endpoints "$url" --conns 8 --clients 64 put --total "$keys" --key-size 32 \
  --val-size 256 --key-space-size "$keys" --sequential-keys > /dev/null 2>&1
echo "loaded $keys keys in $(since "$t") s; rusd $(rss $pid)"
t=$(now)
"$bin/etcdctl" --endpoints "$url" snapshot save "$work/s.db" > /dev/null 2>&1
echo "snapshot save: $(since "$t") s, $(stat -c %s "$work/s.db") bytes; rusd $(rss $pid)"
"$bin/etcdutl" snapshot status "$work/s.db" -w table
kill $pid; wait $pid || true
t=$(now)
"$bin/etcdutl" snapshot restore "$work/s.db" --data-dir "$work/r" > /dev/null 2>&1
echo "etcdutl snapshot restore: $(since "$t") s"
for run in import restart; do
  t=$(now)
  "$rusd" --data-dir "$work/r" "${flags[@]}" > "$work/$run.log" 2>&1 &
  pid=$!
  wait_ready "$work/$run.log" $pid
  echo "rusd start ($run): $(since "$t") s to ready; $(rss $pid)"
  grep -o '"msg":"imported an etcd[^}]*' "$work/$run.log" || true
  kill $pid; wait $pid || true
done
