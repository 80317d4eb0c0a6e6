#!/usr/bin/env bash
# Instructions per GIF request, counted by callgrind on the release binary.
#
#   [RUST_LOG=warn] benches/callgrind_per_request.sh [BINARY] [N]
#
# Runs the server twice under `valgrind --tool=callgrind` on the bundled media with one
# worker thread and the log level of RUST_LOG (the service's default, `info`, if unset;
# the load bench runs with `warn`): once idle (start-up, one request, shutdown)
# and once serving N+1 keep-alive GETs of one GIF on a single connection. The difference
# of the two totals divided by N is the user-space cost of one request (hyper's parsing,
# routing, the file lookup, headers, the body and the writes), without start-up.
# Needs valgrind and python3; binds 127.0.0.1 on a free port; leaves nothing running.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$here/target/release/oip-media}"
n="${2:-2000}"
path="/media/fitnessally/02891301-Dumbbell-Bench-Press_Chest_180.gif"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# One run: start under callgrind, send `count` GETs on one keep-alive connection (plus
# one to warm caches, in both runs), stop with SIGTERM, print the instruction total.
run() {
    local count="$1" out="$work/cg.$1"
    local port
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    MEDIA_DIR="$here/media" PORT="$port" WORKERS=1 RUST_LOG="${RUST_LOG:-info}" \
        valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" >"$work/log.$count" 2>&1 &
    local pid=$!
    python3 - "$port" "$count" "$path" <<'EOF'
import http.client, socket, sys, time
port, count, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
deadline = time.time() + 120
while True:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
    except OSError:
        if time.time() > deadline:
            sys.exit("server did not start")
        time.sleep(0.2)
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
for i in range(count + 1):
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    if r.status != 200 or not body:
        sys.exit(f"request {i}: status {r.status}")
conn.close()
EOF
    kill -TERM "$pid"
    wait "$pid" || true
    grep -E '^(summary|totals):' "$out" | head -1 | awk '{print $2}'
}

idle="$(run 0)"
busy="$(run "$n")"
per=$(( (busy - idle) / n ))
if [ -n "${CALLGRIND_OUT:-}" ]; then
    mkdir -p "$CALLGRIND_OUT"
    cp "$work/cg.0" "$CALLGRIND_OUT/idle.callgrind"
    cp "$work/cg.$n" "$CALLGRIND_OUT/busy.callgrind"
fi
echo "binary: $bin (RUST_LOG=${RUST_LOG:-info})"
echo "idle run: $idle instructions; $n-request run: $busy instructions"
echo "instructions per GIF request: $per"
