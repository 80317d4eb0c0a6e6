#!/bin/bash
# What a per-connection send-buffer ceiling (--send-buffer, SO_SNDBUF) costs and saves
# (BENCHMARKS.md, "Kernel memory of non-reading clients"): for each SEND_BUFFER given,
# starts the binary over a scratch media root, downloads a 512 MiB sparse file with curl
# three times over loopback, then holds 100 clients (4 KiB receive buffers) that ask for a
# 20 MB file and never read, and reads the host's kernel TCP memory (/proc/net/sockstat)
# 3 s later, before any write-stall drop. Loopback only.
#
#   benches/send_buffer.sh [BIN] [SEND_BUFFER…]     (defaults: target/debug/oip-media; 0 262144 1048576)
set -euo pipefail
BIN=${1:-target/debug/oip-media}
shift || true
SIZES=("$@")
[ ${#SIZES[@]} -eq 0 ] && SIZES=(0 262144 1048576)
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
mkdir -p "$DIR/media/web/p"
truncate -s 512M "$DIR/media/web/p/big.bin"
truncate -s 20000000 "$DIR/media/web/p/twenty.bin"
for SB in "${SIZES[@]}"; do
  MEDIA_DIR="$DIR/media" DERIVED_DIR="$DIR/derived" BIND=127.0.0.1 PORT=0 WORKERS=2 \
    SEND_BUFFER=$SB RUST_LOG=info NO_COLOR=1 "$BIN" > "$DIR/log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do grep -q "listening on" "$DIR/log" && break; sleep 0.1; done
  ADDR=$(grep -o "listening on http://[0-9.:]*" "$DIR/log" | head -1 | sed 's|listening on http://||')
  for r in 1 2 3; do
    curl -s -o /dev/null -w "SEND_BUFFER=$SB run $r: %{speed_download} B/s\n" "http://$ADDR/media/p/big.bin"
  done
  python3 - "$ADDR" "$SB" <<'PY'
import socket, sys, time
host, port = sys.argv[1].split(':')
page = __import__('os').sysconf('SC_PAGE_SIZE')
def mem():
    for line in open('/proc/net/sockstat'):
        if line.startswith('TCP:'):
            f = line.split()
            return int(f[f.index('mem') + 1]) * page
idle = mem()
held = []
for _ in range(100):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port)))
    s.sendall(b"GET /media/p/twenty.bin HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
    held.append(s)
time.sleep(3)
print(f"SEND_BUFFER={sys.argv[2]}: 100 non-readers of 20 MB hold "
      f"{(mem() - idle) / 2**20:.1f} MiB of kernel TCP memory before any drop")
for s in held:
    s.close()
PY
  kill $PID
  wait $PID 2>/dev/null || true
done
