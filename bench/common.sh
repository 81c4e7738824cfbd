# shellcheck shell=bash
# Helpers shared by bench/rss.sh and bench/compare.sh (sourced, not run).
# Everything here talks to 127.0.0.1 only, and every wait is bounded.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LS_BIN=${LAYERSTORE_BIN:-$ROOT/target/release/layerstore}
LOADGEN=${LOADGEN_BIN:-$ROOT/target/release/examples/loadgen}
export CLK_TCK
CLK_TCK=$(getconf CLK_TCK)

# Builds the release server and load generator unless both are given or already built.
build_release() {
  if [ ! -x "$LS_BIN" ] || [ ! -x "$LOADGEN" ]; then
    (cd "$ROOT" && cargo build --release --bin layerstore --example loadgen)
  fi
}

# cpu_ticks PID: user + system CPU of the process so far, in clock ticks.
cpu_ticks() {
  # The command name (field 2) may hold spaces: drop everything up to its closing ')'.
  sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# reset_peak PID: restart the VmHWM high-water mark (Linux >= 4.0), if allowed.
reset_peak() {
  echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true
}

# peak_kib PID: VmHWM, the peak resident set since start or the last reset_peak, in KiB.
peak_kib() {
  awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"
}

# start_layerstore ROOT_DIR LOG_PREFIX: starts the release server on an ephemeral port;
# sets LS_PID and LS_URL.
start_layerstore() {
  RUST_LOG=${RUST_LOG:-warn} "$LS_BIN" serve --addr 127.0.0.1:0 --root "$1" >"$2.out" 2>"$2.err" &
  LS_PID=$!
  LS_URL=
  for _ in $(seq 1 300); do
    kill -0 "$LS_PID" 2>/dev/null || { echo "layerstore exited; see $2.err" >&2; return 1; }
    LS_URL=$(sed -n 's/^layerstore listening on //p' "$2.out")
    [ -n "$LS_URL" ] && return 0
    sleep 0.1
  done
  echo "layerstore did not start within 30 s" >&2
  return 1
}

# stop_pid PID: SIGTERM, then wait for it.
stop_pid() {
  if [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; then
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
  fi
}

# free_port: a TCP port on 127.0.0.1 that nothing answers on.
free_port() {
  local port
  for _ in $(seq 1 100); do
    port=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  echo "no free port found" >&2
  return 1
}

# field NAME LINE: the value of NAME=... in a loadgen result line.
field() {
  tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"
}
