#!/usr/bin/env bash
# CI: compose.yaml's `oip-media` + `gun-relay` services under podman-compose (Debian's),
# and a GUN put and get through oip-media to the relay. Runs after .ci/image.sh (it uses
# that image, tagged `oip-media:latest` as compose.yaml names it). The relay's image,
# `node:20-bookworm-slim`, cannot be pulled here: its stand-in is the debootstrap slim
# stand-in plus this machine's Node 20 and npm, and its CA bundle (the relay's
# `npm ci` reaches the npm registry from inside). compose.yaml runs unchanged, from a
# scratch copy of the project folder (so `./data/media` and the relay's node_modules are
# made there, not in the checkout). Targets 127.0.0.1:8080 (compose's published port).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

PODMAN=(podman --runtime runc)
NODE=docker.io/library/node:20-bookworm-slim
SLIM=docker.io/library/debian:bookworm-slim
"${PODMAN[@]}" image exists localhost/oip-media:ci || fail "run .ci/image.sh first"
"${PODMAN[@]}" tag localhost/oip-media:ci localhost/oip-media:latest

need=()
command -v podman-compose >/dev/null 2>&1 || need+=(podman-compose)
# Service names resolve on a compose network through CNI's dnsname plugin.
[[ -e /usr/lib/cni/dnsname ]] || need+=(golang-github-containernetworking-plugin-dnsname)
if ((${#need[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
fi
if curl -s -o /dev/null --max-time 2 http://127.0.0.1:8080/ 2>/dev/null; then
    fail "127.0.0.1:8080 (compose.yaml's published port) is taken on this machine"
fi

if ! "${PODMAN[@]}" image exists "$NODE"; then
    node --version | grep -q '^v20\.' || fail "the host's node is not 20: $(node --version)"
    ctx=$(mktemp -d /var/tmp/oip-media-node.XXXXXX)
    cp "$(command -v node)" "$ctx/node"
    npm_root=$(npm root -g)/npm
    cp -a "$npm_root" "$ctx/npm"
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
    cat > "$ctx/Containerfile" <<CONTAINERFILE
FROM $SLIM
RUN apt-get update && apt-get install -y --no-install-recommends libstdc++6 \
    && rm -rf /var/lib/apt/lists/*
COPY node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
CMD ["node"]
CONTAINERFILE
    "${PODMAN[@]}" build --quiet --pull=never --network host -t "$NODE" "$ctx" >/dev/null
    rm -rf "$ctx"
fi
ok "$NODE stand-in: node $("${PODMAN[@]}" run --rm --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 "$NODE" node --version)"

project=$(mktemp -d /var/tmp/oip-media-compose.XXXXXX)
cp compose.yaml "$project/"
mkdir -p "$project/tests" "$project/data/media" "$project/media"
cp -a tests/relay "$project/tests/relay"
rm -rf "$project/tests/relay/node_modules"
cp -a media/web "$project/data/media/web"
export JWT_SECRET=ci-placeholder
# podman-compose passes no --runtime: runc is the one that works here (containers.conf).
# Podman's default limits are above this machine's hard limits, so every container gets
# nofile and nproc of 4096 (podman-compose's --podman-run-args). oip-media's nofile is
# compose.yaml's own too: OIP_MEDIA_NOFILE=4096, below the defaults' 29,200, so start-up
# lowers its bounds.
export CONTAINERS_CONF=$project/containers.conf OIP_MEDIA_NOFILE=4096
printf '[engine]\nruntime = "runc"\n' >"$CONTAINERS_CONF"
compose() {
    (cd "$project" && podman-compose --podman-run-args='--ulimit nofile=4096:4096 --ulimit nproc=4096:4096' \
        -f compose.yaml "$@")
}
# The project's containers, volumes and network, by the labels podman-compose sets.
mine=(--filter "label=com.docker.compose.project.working_dir=$project")
service() { "${PODMAN[@]}" ps -a -q "${mine[@]}" --filter "label=com.docker.compose.service=$1"; }
down() {
    local relay
    relay=$(service gun-relay)
    [[ -n $relay ]] && "${PODMAN[@]}" logs "$relay" 2>&1 | tail -n 3 | sed 's/^/   gun-relay: /'
    compose down -t 5 >/dev/null 2>&1 || true
    "${PODMAN[@]}" ps -a -q "${mine[@]}" | xargs -r "${PODMAN[@]}" rm -f -v -t 0 >/dev/null 2>&1 || true
    project_name=$(basename "$project" | tr 'A-Z' 'a-z' | tr -dc 'a-z0-9_-')
    "${PODMAN[@]}" volume ls -q --filter "label=io.podman.compose.project=$project_name" \
        | xargs -r "${PODMAN[@]}" volume rm -f >/dev/null 2>&1 || true
    "${PODMAN[@]}" network rm "${project_name}_oip" >/dev/null 2>&1 || true
    rm -rf "$project"
}
trap down EXIT

compose up -d oip-media gun-relay >"$project/up.log" 2>&1 || { cat "$project/up.log"; fail "podman-compose up"; }
[[ -n $(service oip-media) && -n $(service gun-relay) ]] || { cat "$project/up.log"; fail "podman-compose made no containers"; }
ok "podman-compose up -d oip-media gun-relay"

for _ in $(seq 1 150); do
    curl -fsS -o /dev/null http://127.0.0.1:8080/healthz 2>/dev/null && break
    sleep 0.4
done
curl -fsS -o /dev/null http://127.0.0.1:8080/healthz || fail "oip-media does not answer on 127.0.0.1:8080"
ok "oip-media answers on 127.0.0.1:8080"
lowered=$("${PODMAN[@]}" logs "$(service oip-media)" 2>&1 | grep '"open_file_limit":4096' || true)
[[ $lowered == *'"level":"ERROR"'* && $lowered == *'"max_stalled":271'* ]] \
    || fail "no error line about compose's nofile 4096: $lowered"
ok "compose's ulimits (nofile 4096) reached the service: one error line, the stalled pool 2048 -> 271"

soul="oip-media-ci-$$:record"
put=''
# The relay installs its packages (npm ci) before it listens: allow a minute.
for _ in $(seq 1 60); do
    put=$(curl -sS -X POST -H 'Content-Type: application/json' \
        --data "{\"soul\":\"$soul\",\"data\":{\"name\":\"compose\",\"n\":1}}" \
        http://127.0.0.1:8080/gun-relay/put || true)
    [[ $put == *'"success":true'* ]] && break
    sleep 2
done
[[ $put == *'"success":true'* ]] || fail "GUN put through oip-media: $put"
ok "GUN put through oip-media to gun-relay: $put"
got=$(curl -sS "http://127.0.0.1:8080/gun-relay/get?soul=$soul")
[[ $got == *'"success":true'* && $got == *'"name":"compose"'* ]] || fail "GUN get through oip-media: $got"
ok "GUN get through oip-media from gun-relay: $got"
miss=$(curl -sS -w ' %{http_code}' "http://127.0.0.1:8080/gun-relay/get?soul=oip-media-ci-$$:absent")
[[ $miss == *' 404' ]] || fail "a miss: $miss"
ok "a missing soul: $miss"
echo "compose checks passed in $((SECONDS - started)) s"
