#!/usr/bin/env bash
# The cost of garbage collection (issue 12, part 8), with `examples/gc_cost.rs`:
#   fs  populate a filesystem store (default 1,000 repositories, 100,000 blobs), then the
#       ceilings (find: list, stat), then one `Store::gc` run (grace 0s) in its own process:
#       time by phase, VmHWM, mark-set bytes, object_store calls per blob, per-call latency
#   s3  the same on SeaweedFS (default 100 repositories, 10,000 blobs) under a fresh key
#       prefix that is deleted afterwards: HTTP requests per blob by kind, per-request
#       latency of the emulator, and the time those requests take one after another
# Population is timed separately, synced to disk, and excluded from the GC figures; the GC
# process also reports the Rust heap it holds beside VmHWM. Results: bench/README.md.
#
# Usage: bench/gc.sh [fs|s3|all]      (default all)
# Environment: FS_REPOS (1000), S3_REPOS (100), FS_RUNS (1), PROBE (200 requests per kind),
#   EXTRA (more gc_cost shape options, e.g. "--session-layers 0"), GC_DRY_RUN=1 to also time
#   a dry run before the real one, S3_ENV (/work/emu/emulators.env), KEEP=1 to keep the
#   filesystem store. Runs each step once: on a shared machine, note the load average it prints.
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

WHAT=${1:-all}
FS_REPOS=${FS_REPOS:-1000}
S3_REPOS=${S3_REPOS:-100}
FS_RUNS=${FS_RUNS:-1}
PROBE=${PROBE:-200}
EXTRA=${EXTRA:-}
GC_COST=${GC_COST_BIN:-$ROOT/target/release/examples/gc_cost}

if [ ! -x "$GC_COST" ] || [ -n "$(find "$ROOT/examples/gc_cost.rs" "$ROOT/src" -newer "$GC_COST" -print -quit)" ]; then
  (cd "$ROOT" && cargo build --release --example gc_cost)
fi

FS_DIR= S3_PREFIX=
cleanup() {
  if [ -n "$FS_DIR" ] && [ "${KEEP:-}" != 1 ]; then rm -rf "$FS_DIR"; fi
  if [ -n "$S3_PREFIX" ]; then "$GC_COST" cleanup --backend s3 --prefix "$S3_PREFIX" || true; fi
  FS_DIR= S3_PREFIX=
}
trap cleanup EXIT

load() { cut -d' ' -f1-3 /proc/loadavg; }
say() { printf '\n== %s (load average %s)\n' "$*" "$(load)"; }

# secs CMD...: runs CMD with stdout discarded, prints its wall time in seconds.
secs() {
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'
}

fs_run() { # RUN_NUMBER
  local dir
  dir=$(mktemp -d "${TMPDIR:-/tmp}/layerstore-gc.XXXXXX")
  FS_DIR=$dir
  say "filesystem run $1: populate $FS_REPOS repositories into $dir"
  # shellcheck disable=SC2086
  "$GC_COST" populate --backend fs --root "$dir" --repos "$FS_REPOS" $EXTRA
  echo "on disk: $(du -sh "$dir" | cut -f1), $(find "$dir" -type f | wc -l) files, $(find "$dir" -type d | wc -l) directories"
  # The population leaves dirty pages whose writeback would slow the run's fsyncs.
  echo "sync after the population: $(secs sync -f "$dir") s"

  say "filesystem run $1: ceilings (page cache warm from the population)"
  local n
  n=$(find "$dir/blobs" -type f -name data | wc -l)
  echo "find blobs/ -type f (list ${n} blob files):          $(secs find "$dir/blobs" -type f) s"
  echo "find blobs/ -type f -printf %s (list + stat):      $(secs find "$dir/blobs" -type f -printf '%s\n') s"
  echo "find repositories/ -name link (every link):        $(secs find "$dir/repositories" -name link) s"
  echo "find . -type f -printf %s (every file, list+stat): $(secs find "$dir" -type f -printf '%s\n') s"

  if [ "${GC_DRY_RUN:-}" = 1 ]; then
    say "filesystem run $1: gc --dry-run"
    "$GC_COST" gc --backend fs --root "$dir" --dry-run
  fi
  say "filesystem run $1: gc (grace 0s)"
  /usr/bin/time -f 'time(1): %e s wall, %U s user, %S s system, max RSS %M KiB' \
    "$GC_COST" gc --backend fs --root "$dir" --probe "$PROBE"
  echo "after: $(find "$dir" -type f | wc -l) files, $(du -sh "$dir" | cut -f1); load average $(load)"
  cleanup
}

s3_run() {
  # shellcheck disable=SC1090
  source "${S3_ENV:-/work/emu/emulators.env}"
  local prefix
  prefix="gc-cost-$(date +%s)-$RANDOM"
  S3_PREFIX=$prefix
  say "S3 at $LAYERSTORE_TEST_S3_ENDPOINT, bucket $LAYERSTORE_TEST_S3_BUCKET, prefix $prefix: populate $S3_REPOS repositories"
  # shellcheck disable=SC2086
  "$GC_COST" populate --backend s3 --prefix "$prefix" --repos "$S3_REPOS" $EXTRA
  echo "sync after the population: $(secs sync) s"
  if [ "${GC_DRY_RUN:-}" = 1 ]; then
    say "S3: gc --dry-run"
    "$GC_COST" gc --backend s3 --prefix "$prefix" --dry-run
  fi
  say "S3: gc (grace 0s)"
  /usr/bin/time -f 'time(1): %e s wall, %U s user, %S s system, max RSS %M KiB' \
    "$GC_COST" gc --backend s3 --prefix "$prefix" --probe "$PROBE"
  cleanup
}

case $WHAT in
  fs) for r in $(seq 1 "$FS_RUNS"); do fs_run "$r"; done ;;
  s3) s3_run ;;
  all)
    for r in $(seq 1 "$FS_RUNS"); do fs_run "$r"; done
    s3_run
    ;;
  *) echo "usage: $0 [fs|s3|all]" >&2; exit 2 ;;
esac
