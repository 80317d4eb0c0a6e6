#!/usr/bin/env bash
# What the kernel does per request, oip-media beside nginx: syscalls, context switches
# and packets per request, and their sizes, under the load bench's request mix.
#
#   sudo benches/kernel_per_request.sh BIN [CONNS...]      (default CONNS: 64 1024)
#
# Each server in turn is pinned to core 0 with one worker (nginx: one worker process,
# the load bench's configuration), wrk with the load bench's mix (benches/load.rs's
# WRK_SCRIPT: 80 % GET, 10 % If-Modified-Since, 10 % 64 KiB ranges) on core 1, over a
# generated 1,000-GIF corpus. `perf stat` counts tracepoints on core 0 during the run,
# `perf record` of `net:net_dev_xmit` sizes the packets sent from it; both are divided by
# the requests wrk saw answered. Needs root (tracepoints), perf, wrk, nginx, taskset.
# Counts, not timings, are the point: they do not move with the machine's noise. They
# are of everything on core 0, though: run it on an otherwise idle machine.
#
# Environment: SECS (default 4), SERVER_ENV (extra `KEY=value` words for oip-media),
# WORK (scratch folder, default a new temp folder; the corpus is kept there).
set -euo pipefail

bin=${1:?usage: $0 OIP_MEDIA_BIN [CONNS...]}
shift
if [ $# -gt 0 ]; then conns=("$@"); else conns=(64 1024); fi
secs=${SECS:-4}
here=$(cd "$(dirname "$0")/.." && pwd)
work=${WORK:-$(mktemp -d)}
for tool in perf wrk nginx taskset; do
  command -v "$tool" >/dev/null || { echo "skipped: $tool is missing"; exit 0; }
done

# The corpus, its targets (path, Last-Modified) and the wrk script, once.
if [ ! -d "$work/media/web" ]; then
  gen=$(dirname "$bin")/gen-media
  [ -x "$gen" ] || gen="$here/target/release/gen-media"
  "$gen" corpus "$work/media" --count 1000 >/dev/null
fi
: >"$work/targets.tsv"
for file in "$work"/media/web/*/*; do
  rel=${file#"$work/media/web/"}
  printf '/media/%s\t%s\n' "$rel" "$(date -u -d "@$(stat -c %Y "$file")" '+%a, %d %b %Y %H:%M:%S GMT')" \
    >>"$work/targets.tsv"
done
awk '/^const WRK_SCRIPT: &str = r#"/ {on=1; next} on && /^"#;/ {exit} on' \
  "$here/benches/load.rs" >"$work/mix.lua"
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
user root; worker_processes 1; daemon off; pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 8192; }
http {
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 10000000; keepalive_timeout 30s;
  open_file_cache max=20000 inactive=60s; open_file_cache_valid 1s;
  client_body_temp_path $work/nginx/b; proxy_temp_path $work/nginx/p; fastcgi_temp_path $work/nginx/f;
  uwsgi_temp_path $work/nginx/u; scgi_temp_path $work/nginx/s;
  types { image/gif gif; } default_type application/octet-stream;
  server { listen 127.0.0.1:18091 reuseport;
    location /media/ { alias $work/media/web/; add_header Cache-Control "public, max-age=31536000, immutable"; } }
}
EOF

events=context-switches,net:net_dev_xmit
for call in sendfile64 sendmsg writev setsockopt recvfrom epoll_wait futex statx; do
  events+=",syscalls:sys_enter_$call"
done

# Runs one server at `conns`; prints one line of counts per request.
measure() {
  local name=$1 port=$2 conns=$3 pid
  shift 3
  "$@" >/dev/null 2>"$work/$name.err" &
  pid=$!
  sleep 1
  BENCH_TARGETS=$work/targets.tsv taskset -c 1 wrk -t1 -c"$conns" -d1s -s "$work/mix.lua" \
    "http://127.0.0.1:$port" >/dev/null 2>&1 # warm-up
  perf stat -x, -o "$work/stat.txt" -C 0 -e "$events" -- sleep "$secs" &
  local stat=$!
  perf record -q -o "$work/xmit.data" -e net:net_dev_xmit -C 0 -- sleep "$secs" >/dev/null 2>&1 &
  local record=$!
  local out
  out=$(BENCH_TARGETS=$work/targets.tsv taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" \
    -s "$work/mix.lua" "http://127.0.0.1:$port" 2>&1 | grep RESULT)
  wait "$stat" "$record"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  local requests
  requests=$(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$out")
  local small
  small=$(perf script -i "$work/xmit.data" 2>/dev/null | sed -n 's/.*len=\([0-9]*\).*/\1/p' |
    awk '$1 > 100 && $1 <= 1500 {n++} END {print n + 0}')
  awk -F, -v name="$name" -v conns="$conns" -v req="$requests" -v small="$small" '
    $1 ~ /^[0-9]+$/ { sub("syscalls:sys_enter_", "", $3); sub("net:net_dev_xmit", "packets", $3);
                     line = line sprintf(" %s=%.2f", $3, $1 / req) }
    END { printf "%-10s conns=%-5d requests=%-7d%s packets_100_1500B=%.2f\n", name, conns, req, line, small / req }
  ' "$work/stat.txt"
}

for c in "${conns[@]}"; do
  measure nginx 18091 "$c" taskset -c 0 nginx -c "$work/nginx/nginx.conf" -p "$work/nginx"
  # shellcheck disable=SC2086 # SERVER_ENV is words on purpose
  measure oip-media 18092 "$c" env MEDIA_DIR="$work/media" PORT=18092 BIND=127.0.0.1 WORKERS=1 \
    RUST_LOG=warn ${SERVER_ENV:-} taskset -c 0 "$bin"
done
echo "scratch: $work"
