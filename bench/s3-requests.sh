#!/usr/bin/env bash
# S3 requests per registry operation (issue 13, target 4), for `layerstore serve` and for the
# CNCF Distribution registry 2.8 (Debian's `docker-registry`), each on a fresh bucket of a
# SeaweedFS of its own (installed and started as .ci/emulators does), with bench/s3proxy.py
# between the registry and SeaweedFS logging every S3 request.
#
# Each operation runs N times, one client request at a time (examples/loadgen.rs with
# --concurrency 1 and --trace), and every S3 request is attributed to the client request the
# server was serving when it sent it (bench/s3_requests.py); S3 requests made while no client
# request ran (within a second after each operation) are shown as `outside` (background work).
# Operations, in this order, per server:
#   4 KiB push (POST + PUT with body)           small-put, N distinct blobs
#   4 KiB push, docker's way (POST + PATCH + PUT) small-put --patch, N distinct blobs
#   64 MiB monolithic push (POST + PUT)          big-put, once
#   upload in 8 MiB PATCHes (POST + K PATCH + PUT) big-patch, once, K = PATCHES
#   first HEAD after the push                    small-head over the N blobs of the first row
#   HEAD again (cached)                          the same HEADs once more
#   manifest PUT by tag / GET by tag             manifest-put / manifest-get, N manifests
#   4 KiB push then GET right away               small-push-pull, N blobs
#   GET of the 64 MiB blob / of the PATCHed blob big-get, 2 rounds each
#   after a restart of the server: HEAD of the N blobs (uncached), GET of the 64 MiB blob
#
# Usage: bench/s3-requests.sh [layerstore|registry|both]   (default both)
# Env: N (20), PATCHES (10), BENCH_S3_PORT (47193), KEEP=1 keeps the work directory (logs),
#      LAYERSTORE_BIN, LOADGEN_BIN, REGISTRY_BIN override the binaries.
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

WHICH=${1:-both}
N=${N:-20}
PATCHES=${PATCHES:-10}
case $WHICH in
  layerstore) SERVERS=(layerstore) ;;
  registry) SERVERS=(registry) ;;
  both) SERVERS=(layerstore registry) ;;
  *) echo "usage: $0 [layerstore|registry|both]" >&2; exit 2 ;;
esac
REG_BIN=${REGISTRY_BIN:-$(command -v docker-registry || true)}
if [[ " ${SERVERS[*]} " == *" registry "* ]] && [ ! -x "$REG_BIN" ]; then
  echo "docker-registry not found: apt-get install -y docker-registry" >&2
  exit 1
fi
build_release
WORK=$(mktemp -d "${TMPDIR:-/tmp}/layerstore-s3req.XXXXXX")
LS_PID='' REG_PID='' PROXY_PID=''
cleanup() {
  stop_pid "$LS_PID"
  stop_pid "$REG_PID"
  stop_pid "$PROXY_PID"
  s3_stop
  if [ "${KEEP:-}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

s3_start "$WORK"
start_proxy "$BENCH_S3_PORT" "$WORK/proxy.log" "$WORK/proxy"
echo "SeaweedFS pid $S3_PID at $S3_URL; s3proxy pid $PROXY_PID at $PROXY_URL; N=$N, PATCHES=$PATCHES"
echo "layerstore $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

SERVER='' URL='' PORT=''
start_server() { # SERVER CONFIG
  if [ "$1" = layerstore ]; then
    start_layerstore_config "$2" "$WORK/layerstore"
    URL=$LS_URL
  else
    start_registry "$2" "$WORK/registry" "http://127.0.0.1:$PORT"
    URL=http://127.0.0.1:$PORT
  fi
}
stop_server() {
  if [ "$SERVER" = layerstore ]; then stop_pid "$LS_PID"; LS_PID=''; else stop_pid "$REG_PID"; REG_PID=''; fi
}

OPS=$WORK/ops.tsv
: >"$OPS"
# op NAME N LABELS LOADGEN_ARGS...: runs the loadgen once, records the window for the report.
op() {
  local name=$1 n=$2 labels=$3 t0 t1
  shift 3
  t0=$(date +%s.%N)
  "$LOADGEN" --url "$URL" --concurrency 1 --trace "$WORK/$SERVER.trace" "$@" >/dev/null
  sleep 1 # requests a server sends after answering belong to the operation, as `outside`
  t1=$(date +%s.%N)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$SERVER" "$name" "$n" "$labels" "$WORK/$SERVER.trace" \
    "$WORK/proxy.log" "$t0" "$t1" >>"$OPS"
  printf '  %-10s %-55s %s S3 requests so far\n' "$SERVER" "$name" "$(wc -l <"$WORK/proxy.log")"
}

MIB=$((1 << 20))
for SERVER in "${SERVERS[@]}"; do
  bucket="s3req-$SERVER-$(date +%s)"
  s3_bucket "$bucket"
  PORT=$(free_port)
  s3_config "$WORK/$SERVER.yml" "$bucket" "$PROXY_URL" "127.0.0.1:$([ "$SERVER" = layerstore ] && echo 0 || echo "$PORT")"
  start_server "$SERVER" "$WORK/$SERVER.yml"
  sleep 1 # let start-up requests (if any) pass before the first window
  op "4 KiB push (POST + PUT with body)" "$N" POST-upload,PUT-commit-body \
    --workload small-put --repo s3req/small --size 4096 --count "$N" --seed 11
  op "4 KiB push, docker's way (POST + PATCH + PUT)" "$N" POST-upload,PATCH,PUT-commit \
    --workload small-put --patch --repo s3req/docker --size 4096 --count "$N" --seed 12
  op "64 MiB monolithic push (POST + PUT with body)" 1 POST-upload,PUT-commit-body \
    --workload big-put --repo s3req/big --size $((64 * MIB)) --seed 13
  op "$PATCHES × 8 MiB PATCH upload (POST + PATCHes + PUT)" 1 POST-upload,PATCH,PUT-commit \
    --workload big-patch --repo s3req/patched --size $((PATCHES * 8 * MIB)) --chunk $((8 * MIB)) --seed 14
  op "first HEAD of a just-pushed 4 KiB blob" "$N" HEAD-blob \
    --workload small-head --repo s3req/small --size 4096 --count "$N" --seed 11
  op "HEAD again (cached)" "$N" HEAD-blob \
    --workload small-head --repo s3req/small --size 4096 --count "$N" --seed 11
  op "manifest PUT by tag" "$N" PUT-manifest \
    --workload manifest-put --repo s3req/manifests --count "$N" --seed 15
  op "manifest GET by tag" "$N" GET-manifest \
    --workload manifest-get --repo s3req/manifests --count "$N" --seed 15
  op "4 KiB push then GET right away" "$N" POST-upload,PUT-commit-body,GET-blob \
    --workload small-push-pull --repo s3req/pushpull --size 4096 --count "$N" --seed 16
  op "GET of the 64 MiB blob" 2 GET-blob \
    --workload big-get --repo s3req/big --size $((64 * MIB)) --rounds 2 --seed 13
  op "GET of the $PATCHES × 8 MiB PATCHed blob" 2 GET-blob \
    --workload big-get --repo s3req/patched --size $((PATCHES * 8 * MIB)) --rounds 2 --seed 14
  stop_server
  start_server "$SERVER" "$WORK/$SERVER.yml"
  sleep 1
  op "after a restart: HEAD of a 4 KiB blob (uncached)" "$N" HEAD-blob \
    --workload small-head --repo s3req/small --size 4096 --count "$N" --seed 11
  op "after a restart: GET of the 64 MiB blob" 1 GET-blob \
    --workload big-get --repo s3req/big --size $((64 * MIB)) --rounds 1 --seed 13
  stop_server
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 "$ROOT/bench/s3_requests.py" "$OPS"
