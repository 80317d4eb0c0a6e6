#!/usr/bin/env bash
# CPU per request, pinned, side by side: each server on core 0 (`taskset -c 0`), one
# worker; `wrk -t1` on core 1; user and system CPU of the server process (and its
# children: nginx's worker) read from /proc/<pid>/stat before and after each run.
# Servers take turns (A B C A B C ...) so that noise from a shared box hits each alike.
#
#   benches/cpu_per_request.sh NAME=BINARY [NAME=BINARY ...]
#
# Each NAME=BINARY is an oip-media binary to compare (e.g. a build of main and one of
# this branch); `nginx` is added when installed (`sendfile on; tcp_nopush on;`, the
# same configuration as `cargo bench --bench load`). A NAME=BINARY may carry extra
# environment as NAME=BINARY@VAR=VALUE,VAR=VALUE (e.g. `copy=target/release/oip-media@SENDFILE_MIN_BYTES=1GiB`).
#
# Settings (environment): CONNS (default "64 256"), SECS (15), ROUNDS (2), WARM_SECS (3),
# CORPUS (a media dir; default: 1,000 GIFs from `gen-media corpus`, the load bench's
# corpus), SIZE (instead of CORPUS: 200 files of exactly SIZE bytes, for the
# writev/sendfile crossover), MIX (`bench`: the load bench's 80 % GET / 10 % 304 /
# 10 % 64 KiB range; `get`: plain GETs only; default bench).
#
# Prints one line per run and a summary of µs per request (user, system, total) and
# req/s per server and connection count, with the spread over rounds.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-"64 256"}
SECS=${SECS:-15}
ROUNDS=${ROUNDS:-2}
WARM_SECS=${WARM_SECS:-3}
MIX=${MIX:-bench}
TICK=$(getconf CLK_TCK)

for tool in wrk taskset; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[ "$#" -ge 1 ] || { sed -n '2,20p' "$0"; exit 1; }

SCRATCH=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$SCRATCH"
}
trap cleanup EXIT

# ---------------------------------------------------------------- corpus and targets
if [ -n "${SIZE:-}" ]; then
    CORPUS="$SCRATCH/corpus"
    mkdir -p "$CORPUS/web/bench"
    for i in $(seq 1 200); do
        head -c "$SIZE" /dev/urandom > "$CORPUS/web/bench/f$i.gif"
    done
elif [ -z "${CORPUS:-}" ]; then
    CORPUS="$SCRATCH/corpus"
    cargo run -q --release --bin gen-media -- corpus "$CORPUS" --count 1000 >/dev/null
fi
TARGETS="$SCRATCH/targets.tsv"
for f in "$CORPUS"/web/*/*; do
    rel=${f#"$CORPUS"/web/}
    path="/media/$(printf '%s' "$rel" | sed 's/(/%28/g; s/)/%29/g')"
    printf '%s\t%s\n' "$path" "$(TZ=GMT date -r "$f" '+%a, %d %b %Y %H:%M:%S GMT')"
done > "$TARGETS"
cat "$CORPUS"/web/*/* > /dev/null # warm the page cache

cat > "$SCRATCH/mix.lua" <<EOF
local paths, dates = {}, {}
init = function(args)
  for line in io.lines("$TARGETS") do
    local p, d = line:match("([^\t]+)\t(.+)")
    paths[#paths + 1] = p
    dates[#dates + 1] = d
  end
  math.randomseed(os.time() + (tonumber(tostring({}):sub(8)) or 0))
end
request = function()
  local i = math.random(1, #paths)
  local r = math.random(100)
  if "$MIX" == "bench" and r <= 10 then
    return wrk.format("GET", paths[i], { ["If-Modified-Since"] = dates[i] })
  elseif "$MIX" == "bench" and r <= 20 then
    return wrk.format("GET", paths[i], { ["Range"] = "bytes=0-65535" })
  end
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status))
end
EOF

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
    for _ in $(seq 1 100); do
        (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listening on $1" >&2
    return 1
}

# utime+stime (ticks) of a process and its children, split: "user system".
cpu_of() {
    local pids="$1 $(pgrep -P "$1" | tr '\n' ' ')" user=0 sys=0
    for p in $pids; do
        read -r u s < <(awk '{ sub(/^.*\) /, ""); print $12, $13 }' "/proc/$p/stat")
        user=$((user + u)); sys=$((sys + s))
    done
    echo "$user $sys"
}

start_server() { # name spec port -> pid
    local name=$1 spec=$2 port=$3
    if [ "$name" = nginx ]; then
        local dir="$SCRATCH/nginx-$port"
        mkdir -p "$dir"
        cat > "$dir/nginx.conf" <<EOF
user root;
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 10000000;
  keepalive_timeout 30s;
  open_file_cache max=20000 inactive=60s;
  open_file_cache_valid 1s;
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy; fastcgi_temp_path $dir/fcgi;
  uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
  types { image/gif gif; }
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$port;
    location /media/ {
      alias $CORPUS/web/;
      add_header Cache-Control "public, max-age=31536000, immutable";
    }
  }
}
EOF
        taskset -c 0 nginx -c "$dir/nginx.conf" -p "$dir" >/dev/null 2>&1 &
    else
        local bin=${spec%%@*} extra=""
        [ "$spec" != "$bin" ] && extra=${spec#*@}
        (
            IFS=','
            for kv in $extra; do export "${kv?}"; done
            MEDIA_DIR="$CORPUS" PORT=$port BIND=127.0.0.1 WORKERS=1 RUST_LOG=warn \
                exec taskset -c 0 "$bin" >/dev/null 2>&1
        ) &
    fi
    echo $!
}

declare -A SPEC
NAMES=()
for arg in "$@"; do
    NAMES+=("${arg%%=*}")
    SPEC[${arg%%=*}]=${arg#*=}
done
if command -v nginx >/dev/null && [ -z "${SKIP_NGINX:-}" ]; then
    NAMES+=(nginx)
    SPEC[nginx]=nginx
fi

RESULTS="$SCRATCH/results"
: > "$RESULTS"
echo "corpus: $(find "$CORPUS"/web -type f | wc -l) files, $(du -sh --apparent-size "$CORPUS"/web | cut -f1); mix: $MIX; ${SECS}s per run, $ROUNDS rounds; server on core 0, wrk -t1 on core 1"
for round in $(seq 1 "$ROUNDS"); do
    for conns in $CONNS; do
        for name in "${NAMES[@]}"; do
            port=$(free_port)
            pid=$(start_server "$name" "${SPEC[$name]}" "$port")
            PIDS+=("$pid")
            wait_port "$port"
            taskset -c 1 wrk -t1 -c"$conns" -d"${WARM_SECS}s" -s "$SCRATCH/mix.lua" "http://127.0.0.1:$port" >/dev/null
            read -r u0 s0 < <(cpu_of "$pid")
            out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${SECS}s" --timeout 10s -s "$SCRATCH/mix.lua" "http://127.0.0.1:$port")
            read -r u1 s1 < <(cpu_of "$pid")
            kill "$pid"; wait "$pid" 2>/dev/null || true
            read -r requests duration_us socket_errors status_errors < <(echo "$out" | awk '/^RESULT/ { print $2, $3, $4, $5 }')
            awk -v n="$name" -v c="$conns" -v r="$round" -v req="$requests" -v d="$duration_us" \
                -v du=$((u1 - u0)) -v ds=$((s1 - s0)) -v t="$TICK" -v se="$socket_errors" -v st="$status_errors" 'BEGIN {
                us = du / t * 1e6 / req; ss = ds / t * 1e6 / req
                printf "round %d  %-10s %4d conns  %8.0f req/s  user %6.1f  sys %6.1f  total %6.1f µs/req  (errors: socket %d, status %d)\n",
                    r, n, c, req / (d / 1e6), us, ss, us + ss, se, st
                printf "%s %d %f %f %f\n", n, c, req / (d / 1e6), us, ss >> "'"$RESULTS"'"
            }'
        done
    done
done

echo
echo "summary: mean over $ROUNDS rounds [min–max of total µs/req]"
for conns in $CONNS; do
    for name in "${NAMES[@]}"; do
        awk -v n="$name" -v c="$conns" '$1 == n && $2 == c {
            k++; rps += $3; u += $4; s += $5; t = $4 + $5
            if (k == 1 || t < lo) lo = t; if (k == 1 || t > hi) hi = t
        } END {
            printf "%-10s %4d conns  %8.0f req/s  user %6.1f  sys %6.1f  total %6.1f µs/req  [%.1f–%.1f]\n",
                n, c, rps / k, u / k, s / k, (u + s) / k, lo, hi
        }' "$RESULTS"
    done
done
