#!/usr/bin/env bash
# Side by side: the same HTTP workloads against `layerstore serve` (release build, filesystem
# storage) and the CNCF Distribution registry (Debian's `docker-registry`, filesystem storage,
# deletes on, in-memory blob descriptor cache), both on 127.0.0.1 with their data in a temp dir,
# both logging at warn level (no access log). The servers take turns workload by workload
# (the order flips every workload), so drift in the machine's load hits both alike.
#
# Workloads (all bounded; the load generator is examples/loadgen.rs, HTTP/1.1 keep-alive):
#   big-put       one 256 MiB blob: POST, then PUT ?digest= with the body (monolithic)
#   big-patch     the same blob: POST, 32 PATCHes of 8 MiB with Content-Range, PUT ?digest=
#   big-get       GET of that blob, 4 times (1 GiB out)
#   small-put     2,000 distinct 4 KiB blobs, 8 clients, each POST + PUT ?digest= with the body
#   small-head    HEAD of those 2,000 blobs, 10 passes (20,000 requests), 8 clients
#   manifest-put  500 distinct OCI manifests PUT by tag, 8 clients
#   manifest-get  GET of those 500 tags, 8 clients
# For each: throughput, the server's CPU seconds (utime+stime from /proc/PID/stat) and its peak
# RSS during the workload (VmHWM, reset before each). Then, untimed, fsync/fdatasync calls per
# 4 KiB blob push under strace (200 more blobs), if strace is installed.
#
# Usage: bench/compare.sh    (needs: apt-get install docker-registry; optional: strace)
# Env: LAYERSTORE_BIN, LOADGEN_BIN, REGISTRY_BIN override the binaries.
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REG_BIN=${REGISTRY_BIN:-$(command -v docker-registry || true)}
[ -x "$REG_BIN" ] || { echo "docker-registry not found: apt-get install -y docker-registry" >&2; exit 1; }
build_release
WORK=$(mktemp -d "${TMPDIR:-/tmp}/layerstore-compare.XXXXXX")
LS_PID='' REG_PID='' STRACE_PID=''
cleanup() {
  stop_pid "$STRACE_PID"
  stop_pid "$LS_PID"
  stop_pid "$REG_PID"
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- servers
start_layerstore "$WORK/layerstore-data" "$WORK/layerstore"
REG_PORT=$(free_port)
cat >"$WORK/registry.yml" <<YAML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry-data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$REG_PORT
YAML
"$REG_BIN" serve "$WORK/registry.yml" >"$WORK/registry.out" 2>"$WORK/registry.err" &
REG_PID=$!
REG_URL=http://127.0.0.1:$REG_PORT
for i in $(seq 1 300); do
  kill -0 "$REG_PID" 2>/dev/null || { cat "$WORK/registry.err" >&2; exit 1; }
  curl -fsS -o /dev/null "$REG_URL/v2/" 2>/dev/null && break
  ((i == 300)) && { echo "docker-registry did not start within 30 s" >&2; exit 1; }
  sleep 0.1
done
echo "layerstore pid $LS_PID at $LS_URL; docker-registry $("$REG_BIN" --version | awk '{print $NF}') pid $REG_PID at $REG_URL"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- one workload on one server: sets SECS OPS BYTES CPU (seconds) PEAK (KiB)
measure() { # PID URL LOADGEN_ARGS...
  local pid=$1 url=$2 before after line
  shift 2
  reset_peak "$pid"
  before=$(cpu_ticks "$pid")
  line=$("$LOADGEN" --url "$url" "$@")
  after=$(cpu_ticks "$pid")
  SECS=$(field secs "$line")
  OPS=$(field ops "$line")
  BYTES=$(field bytes "$line")
  CPU=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
  PEAK=$(peak_kib "$pid")
}

RESULTS=$WORK/results.tsv
: >"$RESULTS"
turn=0
# workload NAME UNIT LOADGEN_ARGS...: UNIT is MiB/s or ops/s.
workload() {
  local name=$1 unit=$2 server pid url rate
  shift 2
  local order=(layerstore registry)
  ((turn % 2 == 1)) && order=(registry layerstore)
  turn=$((turn + 1))
  for server in "${order[@]}"; do
    if [ "$server" = layerstore ]; then pid=$LS_PID url=$LS_URL; else pid=$REG_PID url=$REG_URL; fi
    measure "$pid" "$url" "$@"
    if [ "$unit" = MiB/s ]; then
      rate=$(awk -v b="$BYTES" -v s="$SECS" 'BEGIN { printf "%.1f", b / s / 1048576 }')
    else
      rate=$(awk -v o="$OPS" -v s="$SECS" 'BEGIN { printf "%.0f", o / s }')
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$server" "$unit" "$rate" "$SECS" "$CPU" "$PEAK" "$BYTES" >>"$RESULTS"
    printf '  %-13s %-10s %10s %-6s %8.2f s  cpu %6.2f s  peak %7.1f MiB\n' "$name" "$server" "$rate" "$unit" "$SECS" "$CPU" \
      "$(awk -v k="$PEAK" 'BEGIN { print k / 1024 }')"
  done
}

BIG=$((256 << 20))
workload big-put MiB/s --workload big-put --repo bench/big --size "$BIG" --seed 1
workload big-patch MiB/s --workload big-patch --repo bench/big --size "$BIG" --chunk $((8 << 20)) --seed 1
workload big-get MiB/s --workload big-get --repo bench/big --size "$BIG" --rounds 4 --seed 1
workload small-put ops/s --workload small-put --repo bench/small --size 4096 --count 2000 --concurrency 8 --seed 2
workload small-head ops/s --workload small-head --repo bench/small --size 4096 --count 2000 --rounds 10 --concurrency 8 --seed 2
workload manifest-put ops/s --workload manifest-put --repo bench/manifests --count 500 --concurrency 8 --seed 3
workload manifest-get ops/s --workload manifest-get --repo bench/manifests --count 500 --concurrency 8 --seed 3
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- the table
echo
awk -F'\t' '
  { key = $1; rate[key, $2] = $4; cpu[key, $2] = $6; peak[key, $2] = $7; bytes[key] = $8; unit[key] = $3
    if (!(key in seen)) { seen[key] = 1; order[++n] = key } }
  END {
    target["big-put"] = 3; target["big-patch"] = 3; target["small-put"] = 5; target["small-head"] = 4
    target["manifest-put"] = 3; target["manifest-get"] = 3
    printf "%-13s %-7s %12s %12s %7s %9s %9s %9s %9s  %s\n", "workload", "unit", "layerstore", "registry", "ratio", "ls cpu s", "reg cpu s", "ls MiB", "reg MiB", "target"
    for (i = 1; i <= n; i++) {
      k = order[i]; l = rate[k, "layerstore"]; r = rate[k, "registry"]
      ratio = r > 0 ? l / r : 0
      t = ""
      if (k in target) t = sprintf(">= %dx: %s", target[k], ratio >= target[k] ? "met" : "NOT met")
      printf "%-13s %-7s %12s %12s %6.2fx %9s %9s %9.1f %9.1f  %s\n", k, unit[k], l, r, ratio, cpu[k, "layerstore"], cpu[k, "registry"], peak[k, "layerstore"] / 1024, peak[k, "registry"] / 1024, t
      if (k == "big-get") {
        gb = bytes[k] / 1e9
        lc = cpu[k, "layerstore"] / gb; rc = cpu[k, "registry"] / gb
        printf "%-13s %-7s %12.2f %12.2f %6.2fx %9s %9s %9s %9s  %s\n", "get-cpu/GB", "cpu s", lc, rc, (rc > 0 ? lc / rc : 0), "", "", "", "", "<= registry: " (lc <= rc ? "met" : "NOT met")
      }
    }
  }' "$RESULTS"

# --- fsyncs per small blob push (untimed, separate blobs)
if command -v strace >/dev/null; then
  echo
  FSYNC_BLOBS=200
  for server in layerstore registry; do
    if [ "$server" = layerstore ]; then pid=$LS_PID url=$LS_URL; else pid=$REG_PID url=$REG_URL; fi
    strace -f -c -e trace=fsync,fdatasync -o "$WORK/strace-$server.txt" -p "$pid" 2>"$WORK/strace-$server.err" &
    STRACE_PID=$!
    sleep 1 # let strace attach to every thread
    "$LOADGEN" --url "$url" --workload small-put --repo bench/fsync --size 4096 --count "$FSYNC_BLOBS" --concurrency 8 --seed 4 >/dev/null
    kill -INT "$STRACE_PID"
    wait "$STRACE_PID" 2>/dev/null || true
    STRACE_PID=
    calls=$(awk '$NF == "fsync" || $NF == "fdatasync" { n += $4 } END { print n + 0 }' "$WORK/strace-$server.txt")
    printf 'fsync+fdatasync per 4 KiB blob push (POST+PUT), %s: %s calls / %d blobs = %s\n' "$server" "$calls" "$FSYNC_BLOBS" \
      "$(awk -v c="$calls" -v b="$FSYNC_BLOBS" 'BEGIN { printf "%.2f", c / b }')"
  done
else
  echo "strace not installed: no fsync count (apt-get install -y strace)"
fi
