#!/usr/bin/env bash
# Build the etcd v3.5.17 reference tools (etcd, etcdctl, etcdutl, benchmark, etcd-dump-logs)
# from the Go module proxy, through a small wrapper Go module (`go install pkg@version` refuses
# etcd's modules because their go.mod files carry `replace` directives).
#
# Nothing of etcd is committed: everything lives in the cache dir
#   ${RUSD_CACHE:-$HOME/.cache/rusd}/etcd-v3.5.17/
#     tools/   wrapper module (go.mod requiring the etcd modules at v3.5.17)
#     bin/     etcd etcdctl etcdutl benchmark etcd-dump-logs
#     bin/.<tool>.stamp   stamp: version + go version; a tool is rebuilt only if missing/stale
#
# Usage:
#   scripts/etcd-ref-tools.sh [--print-bin-dir] [--force] [TOOL...]
#     TOOL: etcd | etcdctl | etcdutl | benchmark | etcd-dump-logs  (default: all five)
#     --print-bin-dir  only print the bin dir (build nothing)
#     --force          rebuild even when the stamp is current
# The last line of output is always the bin dir.
set -euo pipefail

ETCD_VERSION="${ETCD_VERSION:-v3.5.17}"
CACHE_ROOT="${RUSD_CACHE:-$HOME/.cache/rusd}"
BASE="$CACHE_ROOT/etcd-$ETCD_VERSION"
BIN_DIR="$BASE/bin"
MOD_DIR="$BASE/tools"

ALL_TOOLS=(etcd etcdctl etcdutl benchmark etcd-dump-logs)
tools=()
force=0
print_only=0

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --print-bin-dir) print_only=1 ;;
    --force) force=1 ;;
    -h|--help) usage; exit 0 ;;
    etcd|etcdctl|etcdutl|benchmark|etcd-dump-logs) tools+=("$1") ;;
    *) echo "etcd-ref-tools: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[ ${#tools[@]} -eq 0 ] && tools=("${ALL_TOOLS[@]}")

if [ "$print_only" = 1 ]; then
  echo "$BIN_DIR"
  exit 0
fi

command -v go >/dev/null 2>&1 || { echo "etcd-ref-tools: 'go' not found in PATH" >&2; exit 1; }

pkg_of() {
  case "$1" in
    etcd) echo "go.etcd.io/etcd/server/v3" ;;
    etcdctl) echo "go.etcd.io/etcd/etcdctl/v3" ;;
    etcdutl) echo "go.etcd.io/etcd/etcdutl/v3" ;;
    benchmark) echo "go.etcd.io/etcd/v3/tools/benchmark" ;;
    etcd-dump-logs) echo "go.etcd.io/etcd/v3/tools/etcd-dump-logs" ;;
  esac
}

mkdir -p "$BIN_DIR" "$MOD_DIR"

GO_VER="$(go env GOVERSION)"
stamp_content() { printf '%s %s %s\n' "$1" "$ETCD_VERSION" "$GO_VER"; }

# Wrapper module. Requiring the root module go.etcd.io/etcd/v3 pulls in server, etcdctl and
# etcdutl at the same version (the root module requires them all), so one module builds all.
write_wrapper() {
  cat > "$MOD_DIR/go.mod.new" <<EOF
module rusd.local/etcd-ref-tools

go 1.22

require (
	go.etcd.io/etcd/v3 $ETCD_VERSION
	go.etcd.io/etcd/server/v3 $ETCD_VERSION
	go.etcd.io/etcd/etcdctl/v3 $ETCD_VERSION
	go.etcd.io/etcd/etcdutl/v3 $ETCD_VERSION
)
EOF
  # Keep go.mod (and its tidy result) if the requirements did not change.
  if [ -f "$MOD_DIR/go.mod.req" ] && cmp -s "$MOD_DIR/go.mod.new" "$MOD_DIR/go.mod.req"; then
    rm -f "$MOD_DIR/go.mod.new"
  else
    cp "$MOD_DIR/go.mod.new" "$MOD_DIR/go.mod"
    mv "$MOD_DIR/go.mod.new" "$MOD_DIR/go.mod.req"
    rm -f "$MOD_DIR/go.sum"
  fi
  # A tools.go keeps the packages "used" so that `go mod tidy` would not drop them.
  cat > "$MOD_DIR/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/etcdutl/v3"
	_ "go.etcd.io/etcd/server/v3"
	_ "go.etcd.io/etcd/v3/tools/benchmark"
	_ "go.etcd.io/etcd/v3/tools/etcd-dump-logs"
)
EOF
}

need=()
for t in "${tools[@]}"; do
  if [ "$force" = 0 ] && [ -x "$BIN_DIR/$t" ] && [ -f "$BIN_DIR/.$t.stamp" ] \
     && [ "$(cat "$BIN_DIR/.$t.stamp")" = "$(stamp_content "$t")" ]; then
    echo "etcd-ref-tools: $t is up to date ($BIN_DIR/$t)" >&2
  else
    need+=("$t")
  fi
done

if [ ${#need[@]} -gt 0 ]; then
  write_wrapper
  cd "$MOD_DIR"
  # -mod=mod lets go.sum fill itself; keep any GOFLAGS the caller has (e.g. -buildvcs=false).
  export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
  # Never let the go command download a different toolchain.
  export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
  GIT_SHA="$ETCD_VERSION"
  for t in "${need[@]}"; do
    pkg="$(pkg_of "$t")"
    echo "etcd-ref-tools: building $t ($pkg@$ETCD_VERSION) ..." >&2
    start=$(date +%s)
    ldflags=""
    if [ "$t" = etcd ] || [ "$t" = etcdctl ] || [ "$t" = etcdutl ]; then
      # As etcd's build script does: record a Git SHA in the binary's version output.
      ldflags="-X go.etcd.io/etcd/api/v3/version.GitSHA=$GIT_SHA"
    fi
    CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$BIN_DIR/$t.tmp" "$pkg"
    mv -f "$BIN_DIR/$t.tmp" "$BIN_DIR/$t"
    stamp_content "$t" > "$BIN_DIR/.$t.stamp"
    echo "etcd-ref-tools: built $t in $(( $(date +%s) - start ))s" >&2
  done
fi

echo "$BIN_DIR"
