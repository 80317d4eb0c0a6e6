#!/usr/bin/env bash
# CI: builds the Dockerfile as written with Debian's podman and runs the image.
#
# Registry images cannot be pulled on these machines, so the two base images the
# Dockerfile names are made here from Debian's own packages and tagged with exactly those
# names (nothing in the Dockerfile is CI-only):
#   debian:bookworm-slim  debootstrap --variant=minbase bookworm, from the mirror apt uses
#   rust:1.95-bookworm    that, plus gcc/make/libc6-dev and the Rust toolchain this machine
#                         already has (rustc/cargo 1.95, docs left out), and this machine's
#                         CA bundle so that cargo inside reaches crates.io
# Then: `podman build --format docker` (HEALTHCHECK kept), and checks on the running
# image, each printing one `ok:`/`FAIL:` line. Everything targets 127.0.0.1.
# Needs root. Run from anywhere: `bash .ci/image.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

PODMAN=(podman --runtime runc)
IMAGE=localhost/oip-media:ci
SLIM=docker.io/library/debian:bookworm-slim
RUST=docker.io/library/rust:1.95-bookworm
RUST_VERSION=1.95
# The debootstrap tarball is kept here between runs when the machine keeps /var/cache;
# nothing relies on it (a missing or unreadable tarball is made again).
CACHE=/var/cache/oip-media-ci
WORK=$(mktemp -d /var/tmp/oip-media-image.XXXXXX)
NAME=oip-media-ci-$$
cleanup() {
    "${PODMAN[@]}" rm -f -v -t 0 "$NAME" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
step() { echo "-- $* ($((SECONDS - started)) s)"; }

step "podman, runc and debootstrap from Debian"
need=()
for tool in podman runc debootstrap curl; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if ((${#need[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends podman runc debootstrap uidmap curl >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends podman runc debootstrap uidmap curl >/dev/null; }
fi
podman --version

# The mirror apt already uses here (deb822 or one-line sources), for debootstrap.
mirror=$(grep -rhoE '^(URIs:|deb) +[^ ]*debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | awk '{print $2}' | head -n1 || true)
mirror=${mirror:-http://deb.debian.org/debian}
security=$(grep -rhoE '^(URIs:|deb) +[^ ]*debian-security/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | awk '{print $2}' | head -n1 || true)
security=${security:-http://deb.debian.org/debian-security}

step "stand-in $SLIM (debootstrap minbase from $mirror)"
if ! "${PODMAN[@]}" image exists "$SLIM"; then
    mkdir -p "$CACHE"
    tarball=$CACHE/bookworm-minbase.tar
    if ! tar -tf "$tarball" >/dev/null 2>&1; then
        rm -f "$tarball"
        debootstrap --variant=minbase --make-tarball="$tarball.part" bookworm "$WORK/dl" "$mirror" >/dev/null
        mv "$tarball.part" "$tarball"
    fi
    rootfs=$WORK/rootfs
    debootstrap --variant=minbase --unpack-tarball="$tarball" bookworm "$rootfs" "$mirror" >/dev/null
    # As the official slim image: the same three suites, no docs or man pages, no apt cache.
    rm -f "$rootfs/etc/apt/sources.list"
    cat > "$rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    cat > "$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
DPKG
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    tar -C "$rootfs" -c . | "${PODMAN[@]}" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' - "$SLIM" >/dev/null
    rm -rf "$rootfs"
fi
ok "$SLIM stand-in: $("${PODMAN[@]}" image inspect --format '{{.Size}}' "$SLIM") bytes"

step "stand-in $RUST (the slim stand-in + gcc, make + this machine's Rust $RUST_VERSION)"
toolchain=$(rustc --print sysroot)
rustc --version | grep -q "^rustc $RUST_VERSION\." || fail "the host's rustc is not $RUST_VERSION: $(rustc --version)"
if ! "${PODMAN[@]}" image exists "$RUST"; then
    ctx=$WORK/rust-context
    mkdir -p "$ctx/toolchain"
    # rustc, cargo and the standard library; share/ (docs, 800 MB) is left out.
    cp -a "$toolchain/bin" "$toolchain/lib" "$toolchain/libexec" "$toolchain/etc" "$ctx/toolchain/" 2>/dev/null \
        || cp -a "$toolchain/bin" "$toolchain/lib" "$ctx/toolchain/"
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
    cat > "$ctx/Containerfile" <<CONTAINERFILE
FROM $SLIM
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev make pkg-config \
    && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY toolchain /usr/local/rustup/toolchains/$RUST_VERSION-x86_64-unknown-linux-gnu
RUN mkdir -p /usr/local/cargo/bin \
    && for tool in cargo rustc rustdoc; do ln -s /usr/local/rustup/toolchains/$RUST_VERSION-x86_64-unknown-linux-gnu/bin/\$tool /usr/local/cargo/bin/\$tool; done
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RUST_VERSION=$RUST_VERSION.0 SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
CONTAINERFILE
    "${PODMAN[@]}" build --quiet --pull=never --network host -t "$RUST" "$ctx" >/dev/null
    rm -rf "$ctx"
fi
"${PODMAN[@]}" run --rm --network host --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 "$RUST" cargo --version
ok "$RUST stand-in"
step "stand-ins ready"

step "podman build --format docker (the Dockerfile as written; HEALTHCHECK kept)"
build_started=$SECONDS
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
"${PODMAN[@]}" build --format docker --pull=never --network host --build-arg OIP_MEDIA_COMMIT="$commit" \
    -t "$IMAGE" . >"$WORK/build.log" 2>&1 \
    || { tail -n 40 "$WORK/build.log"; fail "podman build"; }
grep -E '^(STEP [0-9]+/[0-9]+: FROM|COMMIT)|Finished .release' "$WORK/build.log" || true
ok "image built in $((SECONDS - build_started)) s"
"${PODMAN[@]}" build --format docker --pull=never --network host --target no-ffmpeg \
    --build-arg OIP_MEDIA_COMMIT="$commit" \
    -t "$IMAGE-no-ffmpeg" . >/dev/null
size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
size_slim=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE-no-ffmpeg")
ok "image size: $((size / 1000000)) MB (default, with ffmpeg); $((size_slim / 1000000)) MB (--target no-ffmpeg)"
healthcheck=$("${PODMAN[@]}" image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE")
echo "$healthcheck" | grep -q 'readyz' || fail "the image has no HEALTHCHECK (not built in docker format?): $healthcheck"
ok "HEALTHCHECK kept: $healthcheck"

# A free loopback port that is not 8080, so the health check must follow PORT.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
# The file under media/ and its URL (web/ is the root of /media/).
gif=web/fitnessally/13261301-Jump-Rope_Cardio_720.gif
url=/media/fitnessally/13261301-Jump-Rope_Cardio_720.gif
grace=20

step "podman run: read-only root, media bind-mounted read-only, PORT=$port on loopback"
"${PODMAN[@]}" run -d --name "$NAME" --network host --read-only \
    --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
    -v "$PWD/media:/srv/media:ro" \
    -e BIND=127.0.0.1 -e PORT="$port" -e SHUTDOWN_GRACE=${grace}s -e SEND_BUFFER=64KiB \
    -e JWT_SECRET=ci-placeholder \
    "$IMAGE" >/dev/null 2>"$WORK/run.err" || { cat "$WORK/run.err"; fail "podman run"; }
# (podman logs an error that it cannot add a systemd timer for the health check: no
# systemd here; `podman healthcheck run` below runs the check itself.)
for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$base/healthz" 2>/dev/null && break
    sleep 0.2
done
curl -fsS -o /dev/null "$base/healthz" || { "${PODMAN[@]}" logs "$NAME" | tail -20; fail "the container does not answer /healthz on $base"; }

if "${PODMAN[@]}" healthcheck run "$NAME" >/dev/null 2>&1; then
    ok "podman healthcheck run: healthy (the HEALTHCHECK on PORT=$port)"
else
    fail "podman healthcheck run: unhealthy"
fi

uid=$("${PODMAN[@]}" exec "$NAME" sh -c 'grep "^Uid:" /proc/1/status' | awk '{print $2 " " $3}')
[[ $uid == "10001 10001" ]] || fail "the service runs as uid '$uid', not 10001"
ok "the process runs as uid 10001 (not root)"

got=$(curl -fsS -D "$WORK/gif.headers" -o "$WORK/gif" -w '%{http_code}' "$base$url")
[[ $got == 200 ]] && cmp -s "$WORK/gif" "media/$gif" || fail "GIF from the read-only mount: $got"
grep -qi '^content-type: image/gif' "$WORK/gif.headers" || fail "GIF content type: $(cat "$WORK/gif.headers")"
ok "GIF served from the read-only bind mount ($(stat -c %s "$WORK/gif") bytes, identical)"

got=$(curl -sS -m 120 -D "$WORK/mp4.headers" -o "$WORK/mp4" -w '%{http_code}' "$base$url?format=mp4")
[[ $got == 200 ]] || fail "?format=mp4: $got $(cat "$WORK/mp4.headers")"
grep -qi '^content-type: video/mp4' "$WORK/mp4.headers" || fail "mp4 content type"
[[ $(head -c 8 "$WORK/mp4" | tail -c 4) == ftyp ]] || fail "the mp4 variant has no ftyp box"
ok "?format=mp4 made by the image's ffmpeg ($(stat -c %s "$WORK/mp4") bytes, video/mp4)"

modes=$("${PODMAN[@]}" exec "$NAME" sh -c 'cd /var/cache/oip-media && stat -c "%a %u %n" . && find . -mindepth 1 -type d -exec stat -c "%a %u dir %n" {} + ; find . -type f -exec stat -c "%a %u file %n" {} +')
echo "$modes" | sed 's/^/   /'
echo "$modes" | head -n1 | grep -q '^700 10001 \.$' || fail "the derived folder is not 0700 owned by 10001"
echo "$modes" | grep -q ' file ' || fail "no derived file was written"
bad=$(echo "$modes" | awk '($3 == "file" && ($1 != "600" || $2 != "10001")) || ($3 == "dir" && ($1 != "700" || $2 != "10001"))')
[[ -z $bad ]] || fail "derived entries with other modes or owners: $bad"
ok "derived folder 0700, its files 0600, owned by 10001"

step "SIGTERM during a slow download"
size_gif=$(stat -c %s "media/$gif")
# A client with a 16 KiB receive buffer reading 16 KiB every 0.1 s (~160 KB/s: the GIF
# takes ~7 s), so the response is still being sent, not sitting in kernel buffers,
# when SIGTERM comes 1 s in. It prints the status line, the body's length and when it
# finished.
python3 - "$port" "$url" "$WORK/slow" >"$WORK/slow.result" <<'PY' &
import socket, sys, time
port, path, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
s.connect(("127.0.0.1", port))
s.sendall(f"GET {path} HTTP/1.1\r\nHost: ci\r\nConnection: close\r\n\r\n".encode())
data = b""
while True:
    chunk = s.recv(16384)
    if not chunk:
        break
    data += chunk
    time.sleep(0.1)
head, _, body = data.partition(b"\r\n\r\n")
open(out, "wb").write(body)
print(head.split(b"\r\n")[0].decode(), len(body), time.time())
PY
client=$!
sleep 1
term_at=$(date +%s.%N)
term_s=$SECONDS
"${PODMAN[@]}" kill --signal TERM "$NAME" >/dev/null
wait "$client" || fail "the slow client failed after SIGTERM (exit $?)"
exit_code=$("${PODMAN[@]}" wait "$NAME")
took=$((SECONDS - term_s))
read -r _ status _ length done_at <"$WORK/slow.result"
[[ $status == 200 && $length == "$size_gif" ]] && cmp -s "$WORK/slow" "media/$gif" \
    || fail "the slow download was cut: $(cat "$WORK/slow.result") (want 200 and $size_gif bytes)"
after=$(python3 -c "print(f'{$done_at - $term_at:.1f}')")
python3 -c "import sys; sys.exit(0 if $done_at > $term_at + 1 else 1)" \
    || fail "the download ended ${after} s after SIGTERM: it was not under way (too fast to test)"
ok "the slow response finished ${after} s after SIGTERM ($size_gif bytes, identical)"
[[ $exit_code == 0 ]] || { "${PODMAN[@]}" logs "$NAME" | tail -5; fail "exit status $exit_code after SIGTERM"; }
((took <= grace)) || fail "exit took ${took} s, past the ${grace} s grace"
ok "exit 0, ${took} s after SIGTERM (grace ${grace} s)"

# The build stages' layers (~2 GB) go; the tagged images and the cargo cache stay.
"${PODMAN[@]}" image prune -f >/dev/null 2>&1 || true
echo "image checks passed in $((SECONDS - started)) s"
