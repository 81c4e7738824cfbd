#!/usr/bin/env bash
# Side by side: the same HTTP workloads against `layerstore serve` (release build) and the CNCF
# Distribution registry (Debian's `docker-registry`, deletes on, in-memory blob descriptor
# cache), both on 127.0.0.1, both logging at warn level (no access log). The servers take
# turns workload by workload (the order flips every workload), so drift in the machine's load
# hits both alike.
#   fs (default)  filesystem storage, each server's data in a temp dir; layerstore with
#                 `--root` (its defaults: delete and cache on)
#   s3            a SeaweedFS of the script's own on 127.0.0.1 (installed into target/ci and
#                 started as .ci/emulators does; BENCH_S3_PORT, default 47193), a fresh bucket
#                 per server and round; both servers read the same config.yml (storage.s3 with
#                 path-style requests, delete on, in-memory blob descriptor cache, redirects
#                 off so that Distribution serves blob bytes itself as layerstore does)
#   redis         filesystem storage, both servers with `blobdescriptor: redis` on a redis-server
#                 of the script's own (127.0.0.1:BENCH_REDIS_PORT, default 47210; layerstore in
#                 db 1, Distribution in db 2), and only the small workloads (small-put,
#                 small-head, manifest-put, manifest-get): what the cache changes
# --rounds R runs the whole side by side R times on fresh servers and storage (the order
# keeps alternating across rounds) and prints medians with their spread (min-max).
#
# Workloads (all bounded; the load generator is examples/loadgen.rs, HTTP/1.1 keep-alive):
#   big-put       one 256 MiB blob: POST, then PUT ?digest= with the body (monolithic)
#   big-patch     the same blob: POST, 32 PATCHes of 8 MiB with Content-Range, PUT ?digest=
#   big-get       GET of that blob, 4 times (1 GiB out)
#   small-put     2,000 distinct 4 KiB blobs, 8 clients, each POST + PUT ?digest= with the body
#   small-head    HEAD of those 2,000 blobs, 10 passes (20,000 requests), 8 clients
#   manifest-put  500 distinct OCI manifests PUT by tag, 8 clients
#   manifest-get  GET of those 500 tags, 8 clients
#   push-pull     one more 256 MiB blob pushed (POST + PUT with body), then GET right away:
#                 only the GET is timed, and the server CPU is counted over the GET alone
#   small-push-pull  2,000 more 4 KiB blobs, 8 clients, each pushed and then GET right away
#                 (an op is one push and one pull)
# For each: throughput, the server's CPU seconds (utime+stime from /proc/PID/stat) and its peak
# RSS during the workload (VmHWM, reset before each). Then, untimed, fsync/fdatasync calls per
# 4 KiB blob push under strace (200 more blobs), if strace is installed (fs mode, last round).
# In fs mode each round also measures, right after its big-put, one core hashing the same
# 256 MiB with the server's SHA-256 (`loadgen --workload sha256`), and the table ends with
# layerstore's big-put as a share of it.
#
# Usage: bench/compare.sh [fs|s3|redis] [--rounds R]
#   (needs: apt-get install docker-registry; optional: strace; s3 mode: python3-venv and PyPI;
#   redis mode: redis-server)
# Env: LAYERSTORE_BIN, LOADGEN_BIN, REGISTRY_BIN override the binaries.
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MODE=fs ROUNDS=1
while [ $# -gt 0 ]; do
  case $1 in
    fs | s3 | redis) MODE=$1 ;;
    --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
    *) echo "usage: $0 [fs|s3|redis] [--rounds R]" >&2; exit 2 ;;
  esac
  shift
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "--rounds: a positive number, not '$ROUNDS'" >&2; exit 2; }

REG_BIN=${REGISTRY_BIN:-$(command -v docker-registry || true)}
[ -x "$REG_BIN" ] || { echo "docker-registry not found: apt-get install -y docker-registry" >&2; exit 1; }
build_release
WORK=$(mktemp -d "${TMPDIR:-/tmp}/layerstore-compare.XXXXXX")
LS_PID='' REG_PID='' STRACE_PID='' REDIS_PID=''
cleanup() {
  stop_pid "$STRACE_PID"
  stop_pid "$LS_PID"
  stop_pid "$REG_PID"
  stop_pid "$REDIS_PID"
  s3_stop
  rm -rf "$WORK"
}
trap cleanup EXIT
echo "mode $MODE, $ROUNDS round(s); layerstore $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u '+%Y-%m-%d %H:%M UTC')"
if [ "$MODE" = redis ]; then
  REDIS_PORT=${BENCH_REDIS_PORT:-47210}
  ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 || { echo "port $REDIS_PORT answers already: set BENCH_REDIS_PORT" >&2; exit 1; }
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  echo "$(redis-server --version | awk '{print $1, $2, $3}') pid $REDIS_PID on 127.0.0.1:$REDIS_PORT"
fi
if [ "$MODE" = s3 ]; then
  s3_start "$WORK"
  echo "SeaweedFS $("$EMU_DIR/seaweedfs-venv/bin/weed" version 2>/dev/null | head -n1 | awk '{print $3}') pid $S3_PID at $S3_URL"
fi

# --- servers: start_servers ROUND starts both on fresh storage; stop_servers stops them
start_servers() {
  local dir=$WORK/round$1 stamp
  mkdir -p "$dir"
  REG_PORT=$(free_port)
  REG_URL=http://127.0.0.1:$REG_PORT
  if [ "$MODE" = s3 ]; then
    stamp=$(date +%s)
    s3_bucket "cmp-layerstore-r$1-$stamp"
    s3_bucket "cmp-registry-r$1-$stamp"
    s3_config "$dir/layerstore.yml" "cmp-layerstore-r$1-$stamp" "$S3_URL" 127.0.0.1:0
    s3_config "$dir/registry.yml" "cmp-registry-r$1-$stamp" "$S3_URL" "127.0.0.1:$REG_PORT"
    start_layerstore_config "$dir/layerstore.yml" "$dir/layerstore"
  elif [ "$MODE" = redis ]; then
    redis-cli -p "$REDIS_PORT" flushall >/dev/null
    fs_config "$dir/registry-data" "127.0.0.1:$REG_PORT" redis 2 >"$dir/registry.yml"
    fs_config "$dir/layerstore-data" 127.0.0.1:0 redis 1 >"$dir/layerstore.yml"
    start_layerstore_config "$dir/layerstore.yml" "$dir/layerstore"
  else
    start_layerstore "$dir/layerstore-data" "$dir/layerstore"
    fs_config "$dir/registry-data" "127.0.0.1:$REG_PORT" >"$dir/registry.yml"
  fi
  start_registry "$dir/registry.yml" "$dir/registry" "$REG_URL"
  echo "round $1: layerstore pid $LS_PID at $LS_URL; docker-registry $("$REG_BIN" --version | awk '{print $NF}') pid $REG_PID at $REG_URL"
}
stop_servers() {
  stop_pid "$LS_PID"
  stop_pid "$REG_PID"
  LS_PID='' REG_PID=''
  rm -rf "$WORK/round$1" # the filesystem mode's data; S3 buckets go with SeaweedFS at exit
}
# fs_config ROOT ADDR [CACHE DB]: a filesystem config.yml on stdout; CACHE redis adds the redis
# section (database DB).
fs_config() {
  local cache=${3:-inmemory}
  cat <<YAML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $1
  delete:
    enabled: true
  cache:
    blobdescriptor: $cache
http:
  addr: $2
YAML
  if [ "$cache" = redis ]; then
    cat <<YAML
redis:
  addr: 127.0.0.1:$REDIS_PORT
  db: $4
  dialtimeout: 1s
  readtimeout: 1s
  writetimeout: 1s
  pool:              # Distribution's redigo pool keeps no idle connection unless told to
    maxidle: 16
    maxactive: 64
    idletimeout: 300s
YAML
  fi
}

# --- one workload on one server: sets SECS OPS BYTES CPU (seconds) PEAK (KiB)
# The CPU is the server's over the whole loadgen run, unless the loadgen counted it over the
# timed part alone (`--server-pid`, passed by the push-pull workload: the push is not counted).
measure() { # PID URL LOADGEN_ARGS...
  local pid=$1 url=$2 before after line ticks
  shift 2
  reset_peak "$pid"
  before=$(cpu_ticks "$pid")
  line=$("$LOADGEN" --url "$url" "${@//@PID@/$pid}")
  after=$(cpu_ticks "$pid")
  SECS=$(field secs "$line")
  OPS=$(field ops "$line")
  BYTES=$(field bytes "$line")
  ticks=$(field server_cpu_ticks "$line")
  CPU=$(awk -v t="${ticks:-$((after - before))}" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
  PEAK=$(peak_kib "$pid")
}

RESULTS=$WORK/results.tsv
: >"$RESULTS"
turn=0 ROUND=0
# workload NAME UNIT LOADGEN_ARGS...: UNIT is MiB/s or ops/s; @PID@ in the arguments becomes the
# server's pid.
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
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$server" "$unit" "$rate" "$SECS" "$CPU" "$PEAK" "$BYTES" "$ROUND" >>"$RESULTS"
    printf '  %-15s %-10s %10s %-6s %8.2f s  cpu %6.2f s  peak %7.1f MiB\n' "$name" "$server" "$rate" "$unit" "$SECS" "$CPU" \
      "$(awk -v k="$PEAK" 'BEGIN { print k / 1024 }')"
  done
}

# fsyncs per small blob push (untimed, separate blobs), on the servers of the current round
count_fsyncs() {
  local server pid url calls
  if ! command -v strace >/dev/null; then
    echo "strace not installed: no fsync count (apt-get install -y strace)"
    return 0
  fi
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
      "$(awk -v c="$calls" -v b="$FSYNC_BLOBS" 'BEGIN { printf "%.2f", c / b }')" >>"$WORK/fsyncs.txt"
  done
}

# The ceiling of a push on the filesystem: one core hashing the same 256 MiB with the server's
# SHA-256, right after the big-put of the round (nothing else of the benchmark runs meanwhile).
sha_ceiling() {
  local line
  line=$("$LOADGEN" --url http://127.0.0.1:1 --workload sha256 --size "$BIG" --rounds 4 --seed 1)
  awk -v b="$(field bytes "$line")" -v s="$(field secs "$line")" -v r="$ROUND" \
    'BEGIN { printf "%s\t%.1f\n", r, b / s / 1048576 }' >>"$WORK/sha.tsv"
}

BIG=$((256 << 20))
: >"$WORK/fsyncs.txt"
: >"$WORK/sha.tsv"
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
  start_servers "$ROUND"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  if [ "$MODE" = redis ]; then
    workload small-put ops/s --workload small-put --repo bench/small --size 4096 --count 2000 --concurrency 8 --seed 2
    workload small-head ops/s --workload small-head --repo bench/small --size 4096 --count 2000 --rounds 10 --concurrency 8 --seed 2
    workload manifest-put ops/s --workload manifest-put --repo bench/manifests --count 500 --concurrency 8 --seed 3
    workload manifest-get ops/s --workload manifest-get --repo bench/manifests --count 500 --concurrency 8 --seed 3
    echo "redis keys after the round: $(redis-cli -p "$REDIS_PORT" -n 1 dbsize) (layerstore, db 1), $(redis-cli -p "$REDIS_PORT" -n 2 dbsize) (registry, db 2)"
    stop_servers "$ROUND"
    continue
  fi
  workload big-put MiB/s --workload big-put --repo bench/big --size "$BIG" --seed 1
  if [ "$MODE" = fs ]; then sha_ceiling; fi
  workload big-patch MiB/s --workload big-patch --repo bench/big --size "$BIG" --chunk $((8 << 20)) --seed 1
  workload big-get MiB/s --workload big-get --repo bench/big --size "$BIG" --rounds 4 --seed 1
  workload small-put ops/s --workload small-put --repo bench/small --size 4096 --count 2000 --concurrency 8 --seed 2
  workload small-head ops/s --workload small-head --repo bench/small --size 4096 --count 2000 --rounds 10 --concurrency 8 --seed 2
  workload manifest-put ops/s --workload manifest-put --repo bench/manifests --count 500 --concurrency 8 --seed 3
  workload manifest-get ops/s --workload manifest-get --repo bench/manifests --count 500 --concurrency 8 --seed 3
  workload push-pull MiB/s --workload big-push-pull --repo bench/pushpull --size "$BIG" --seed 5 --server-pid @PID@
  workload small-push-pull ops/s --workload small-push-pull --repo bench/pushpull-small --size 4096 --count 2000 --concurrency 8 --seed 6
  echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
  if [ "$MODE" = fs ] && ((ROUND == ROUNDS)); then count_fsyncs; fi
  stop_servers "$ROUND"
done

# --- the table: per workload, the median over the rounds (and its spread, min-max, with more
# than one round) of each server's rate, of the ratio within a round, and of the CPU seconds;
# the highest peak RSS of any round.
echo
awk -F'\t' -v rounds="$ROUNDS" '
  function median(list,   a, m, i, j, t) {
    m = split(list, a, " ")
    for (i = 2; i <= m; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
    lo = a[1]; hi = a[m]
    return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
  }
  function spread(list, fmt) { median(list); return sprintf("[" fmt "-" fmt "]", lo, hi) }
  { key = $1; unit[key] = $3; bytes[key] = $8
    rate[key, $2, $9] = $4; cpu[key, $2, $9] = $6
    rates[key, $2] = rates[key, $2] " " $4; cpus[key, $2] = cpus[key, $2] " " $6
    if ($7 > peak[key, $2]) peak[key, $2] = $7
    if (!(key in seen)) { seen[key] = 1; order[++n] = key } }
  END {
    target["big-put"] = 3; target["big-patch"] = 3; target["small-put"] = 5; target["small-head"] = 4
    target["manifest-put"] = 3; target["manifest-get"] = 3; target["push-pull"] = 1
    printf "%-15s %-7s %12s %12s %7s %9s %9s %9s %9s  %s\n", "workload", "unit", "layerstore", "registry", "ratio", "ls cpu s", "reg cpu s", "ls MiB", "reg MiB", (rounds > 1 ? "target (median); spread: ls, reg, ratio" : "target")
    for (i = 1; i <= n; i++) {
      k = order[i]; ratios = ""; lcs = ""; rcs = ""
      for (r = 1; r <= rounds; r++) {
        ratios = ratios " " (rate[k, "registry", r] > 0 ? rate[k, "layerstore", r] / rate[k, "registry", r] : 0)
        if (k == "big-get" || k == "push-pull") {
          gb = bytes[k] / 1e9
          lcs = lcs " " cpu[k, "layerstore", r] / gb; rcs = rcs " " cpu[k, "registry", r] / gb
        }
      }
      l = median(rates[k, "layerstore"]); rr = median(rates[k, "registry"]); ratio = median(ratios)
      t = ""
      if (k in target) t = sprintf(">= %sx: %s", target[k], ratio >= target[k] ? "met" : "NOT met")
      if (rounds > 1) t = t sprintf("%s%s %s %s", (t == "" ? "" : "; "), spread(rates[k, "layerstore"], unit[k] == "MiB/s" ? "%.1f" : "%.0f"), spread(rates[k, "registry"], unit[k] == "MiB/s" ? "%.1f" : "%.0f"), spread(ratios, "%.2fx"))
      fl = (rounds > 1 ? (unit[k] == "MiB/s" ? sprintf("%.1f", l) : sprintf("%.0f", l)) : l)
      fr = (rounds > 1 ? (unit[k] == "MiB/s" ? sprintf("%.1f", rr) : sprintf("%.0f", rr)) : rr)
      printf "%-15s %-7s %12s %12s %6.2fx %9.2f %9.2f %9.1f %9.1f  %s\n", k, unit[k], fl, fr, ratio, median(cpus[k, "layerstore"]), median(cpus[k, "registry"]), peak[k, "layerstore"] / 1024, peak[k, "registry"] / 1024, t
      if (k == "big-get" || k == "push-pull") {
        lc = median(lcs); rc = median(rcs); cr = ""
        for (r = 1; r <= rounds; r++) { split(lcs, la, " "); split(rcs, ra, " "); cr = cr " " (ra[r] > 0 ? la[r] / ra[r] : 0) }
        t = "<= registry: " (lc <= rc ? "met" : "NOT met")
        if (rounds > 1) t = t "; " spread(lcs, "%.2f") " " spread(rcs, "%.2f") " " spread(cr, "%.2fx")
        printf "%-15s %-7s %12.2f %12.2f %6.2fx %9s %9s %9s %9s  %s\n", (k == "big-get" ? "get-cpu/GB" : "pull-cpu/GB"), "cpu s", lc, rc, median(cr), "", "", "", "", t
      }
    }
  }' "$RESULTS"
if [ -s "$WORK/sha.tsv" ]; then
  # Per round: layerstore's big-put over the SHA-256 ceiling measured right after it.
  echo
  awk -F'\t' '
    FNR == NR { sha[$1] = $2; next }
    $1 == "big-put" && $2 == "layerstore" && ($9 in sha) { n++; s[n] = sha[$9]; p[n] = 100 * $4 / sha[$9] }
    END {
      for (i = 2; i <= n; i++) for (j = i; j > 1 && p[j - 1] > p[j]; j--) { t = p[j]; p[j] = p[j - 1]; p[j - 1] = t; t = s[j]; s[j] = s[j - 1]; s[j - 1] = t }
      m = (n + 1) / 2; m = int(m)
      printf "big-put (layerstore) as a share of single-core SHA-256 (sha2, 1 MiB pieces, measured after it in each round): median %.0f%% of %.1f MiB/s, rounds", p[m], s[m]
      for (i = 1; i <= n; i++) printf " %.0f%%", p[i]
      printf "; target >= 70%%: %s\n", (p[m] >= 70 ? "met" : "NOT met")
    }' "$WORK/sha.tsv" "$RESULTS"
fi
if [ -s "$WORK/fsyncs.txt" ]; then
  echo
  cat "$WORK/fsyncs.txt"
fi
