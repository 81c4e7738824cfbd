#!/usr/bin/env bash
# Peak resident memory of `layerstore serve` (release build) while a 1 GiB blob goes up three
# ways and comes back down, on filesystem storage (`fs`, the default) or on S3 (`s3`: a
# SeaweedFS the script starts, as bench/compare.sh s3 does):
#   post-digest  one POST ?digest= with the whole body (streamed, Content-Length)
#   patch-64M    POST, 16 PATCHes of 64 MiB with Content-Range, PUT ?digest=
#   patch-stream POST, one PATCH with Transfer-Encoding: chunked (as docker sends), PUT
#   get          GET of the first blob, digest verified
# Prints the peak RSS (VmHWM) of each phase and of the whole run.
#
# Usage: bench/rss.sh [fs|s3] [SIZE_BYTES]   (default 1073741824; builds the release binaries if missing)
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MODE=fs
case ${1:-} in fs | s3) MODE=$1; shift ;; esac
SIZE=${1:-1073741824}
CHUNK=$((64 << 20))
build_release
WORK=$(mktemp -d "${TMPDIR:-/tmp}/layerstore-rss.XXXXXX")
LS_PID=
trap 'stop_pid "$LS_PID"; s3_stop; rm -rf "$WORK"' EXIT

if [ "$MODE" = s3 ]; then
  s3_start "$WORK"
  s3_bucket rss
  s3_config "$WORK/config.yml" rss "$S3_URL" 127.0.0.1:0
  start_layerstore_config "$WORK/config.yml" "$WORK/layerstore"
else
  start_layerstore "$WORK/root" "$WORK/layerstore"
fi
echo "layerstore pid $LS_PID at $LS_URL ($MODE); blob size $SIZE bytes"
printf 'at start: VmHWM %d KiB\n' "$(peak_kib "$LS_PID")"

overall=$(peak_kib "$LS_PID")
phase() { # NAME LOADGEN_ARGS...
  local name=$1 line peak
  shift
  reset_peak "$LS_PID"
  line=$("$LOADGEN" --url "$LS_URL" --repo bench/rss --size "$SIZE" --chunk "$CHUNK" "$@")
  peak=$(peak_kib "$LS_PID")
  ((peak > overall)) && overall=$peak
  printf '%-13s %8.1f MiB/s  peak RSS %7.1f MiB\n' "$name" \
    "$(awk -v b="$(field bytes "$line")" -v s="$(field secs "$line")" 'BEGIN { print b / s / 1048576 }')" \
    "$(awk -v k="$peak" 'BEGIN { print k / 1024 }')"
}
phase post-digest --workload big-post --seed 11
phase patch-64M --workload big-patch --seed 12
phase patch-stream --workload big-stream --seed 13
phase get --workload big-get --seed 11 --verify
printf 'peak RSS over the run: %d KiB (%.1f MiB)\n' "$overall" "$(awk -v k="$overall" 'BEGIN { print k / 1024 }')"
