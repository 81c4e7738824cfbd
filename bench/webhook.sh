#!/usr/bin/env bash
# What webhook notifications cost a push (issue 15, part 6): small pushes (POST + PUT
# ?digest= with a 1 KiB body, one client, `loadgen small-put`) against a filesystem store
#   none   no notifications section
#   fast   one endpoint whose receiver answers 200 at once
#   dead   one endpoint whose receiver accepts connections and never answers (Distribution's
#          defaults: timeout 1s, threshold 10, backoff 1s; queuesize QUEUE, so that the run
#          fills it and drops)
# Prints, per case, the push latency (first request sent to the commit's response) median and
# p99 over N pushes, pushes per second, and for `dead` the events dropped and pending from
# /metrics. Results: bench/README.md.
#
# Usage: bench/webhook.sh   Environment: N (1000 pushes per case), SIZE (1024), QUEUE (100)
set -euo pipefail
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

N=${N:-1000}
SIZE=${SIZE:-1024}
QUEUE=${QUEUE:-100}
build_release

WORK=$(mktemp -d "${TMPDIR:-/tmp}/layerstore-webhook.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# receiver MODE PORT: a webhook receiver on 127.0.0.1:PORT (fast: 200 at once; dead: accepts,
# reads, never answers).
receiver() {
  python3 - "$1" "$2" <<'EOF' &
import socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
mode, port = sys.argv[1], int(sys.argv[2])
if mode == "fast":
    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
        def log_message(self, *a): pass
    ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
else:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(128); held = []
    def hold(c):
        while c.recv(65536): pass
    while True:
        c, _ = s.accept(); held.append(c)
        threading.Thread(target=hold, args=(c,), daemon=True).start()
EOF
  PIDS+=($!)
}

# run CASE [ENDPOINT_URL [ENDPOINT_YAML]]: one server, N pushes; prints the result row.
run() {
  local name=$1 url=${2:-} extra=${3:-} dir debug config trace out
  dir=$WORK/$name
  mkdir -p "$dir"
  debug=$(free_port)
  config=$dir/config.yml
  cat >"$config" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: 127.0.0.1:0
  debug:
    addr: 127.0.0.1:$debug
    prometheus:
      enabled: true
log:
  accesslog:
    disabled: true
EOF
  if [ -n "$url" ]; then
    printf 'notifications:\n  endpoints:\n    - name: hook\n      url: %s\n%s' "$url" "$extra" >>"$config"
  fi
  RUST_LOG=${RUST_LOG:-warn} "$LS_BIN" serve --config "$config" >"$dir/out" 2>"$dir/err" &
  local pid=$!
  PIDS+=("$pid")
  local ls_url=
  for _ in $(seq 1 300); do
    ls_url=$(sed -n 's/^layerstore listening on //p' "$dir/out")
    [ -n "$ls_url" ] && break
    sleep 0.1
  done
  [ -n "$ls_url" ] || { echo "layerstore did not start; see $dir/err" >&2; exit 1; }
  trace=$dir/trace
  out=$("$LOADGEN" --url "$ls_url" --workload small-put --repo bench/webhook --size "$SIZE" \
    --count "$N" --concurrency 1 --seed 7 --trace "$trace")
  # One client: the run's requests alternate POST, PUT; a push is the pair.
  local lat
  lat=$(awk -F'\t' '$5 == "run" { if (n % 2 == 0) s = $1; else print ($2 - s) * 1000; n++ }' "$trace" |
    sort -n | awk '{ v[NR] = $1 } END {
      p50 = v[int((NR + 1) / 2)]; i = int(NR * 0.99 + 0.999); if (i > NR) i = NR
      printf "%.2f %.2f", p50, v[i] }')
  local secs metrics dropped pending
  secs=$(field secs "$out")
  metrics=$(curl -s "http://127.0.0.1:$debug/metrics" || true)
  dropped=$(awk '/^layerstore_notifications_dropped_total/ { print $2 }' <<<"$metrics")
  pending=$(awk '/^layerstore_notifications_pending/ { print $2 }' <<<"$metrics")
  printf '| %-5s | %s | %s | %.0f | %s | %s |\n' "$name" "${lat% *}" "${lat#* }" \
    "$(awk -v n="$N" -v s="$secs" 'BEGIN { print n / s }')" "${dropped:--}" "${pending:--}"
  stop_pid "$pid"
}

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $N pushes of $SIZE bytes per case, one client"
echo "| case | push p50 ms | push p99 ms | pushes/s | dropped | pending |"
echo "| --- | --- | --- | --- | --- | --- |"
run none
fast_port=$(free_port)
receiver fast "$fast_port"
sleep 0.5
run fast "http://127.0.0.1:$fast_port/events"
dead_port=$(free_port)
receiver dead "$dead_port"
sleep 0.5
run dead "http://127.0.0.1:$dead_port/events" "      queuesize: $QUEUE
"
