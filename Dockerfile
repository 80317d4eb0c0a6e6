# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run in a slim Debian with only the binary.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY benches ./benches
COPY media ./media
# The commit oip_media_build_info reports (the build context has no .git).
ARG OIP_MEDIA_COMMIT=unknown
# The commit's date `--version` reports: `--build-arg OIP_MEDIA_BUILD_DATE=$(git log -1 --format=%cs)`.
ARG OIP_MEDIA_BUILD_DATE=
# The registry and the target folder are build caches (BuildKit or buildah), so a rebuild
# after a source edit compiles only this crate; the binary is copied out of the cache.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin oip-media \
    && cp target/release/oip-media /usr/local/bin/oip-media

# `--target no-ffmpeg`: the service without ffmpeg, for hosts that pre-make variants
# elsewhere (`oip-media transcode`) or serve no `?format=` (it answers 501 then).
FROM debian:bookworm-slim AS no-ffmpeg
# curl for the HEALTHCHECK; ca-certificates: the system roots an `https://`
# ELASTICSEARCHHOST is checked against (the HTTP client loads them at start-up;
# ELASTIC_CA_FILE adds Elasticsearch's own CA).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=202* curl=7.88.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin oip
COPY --from=build /usr/local/bin/oip-media /usr/local/bin/oip-media
# The bundled samples, so the image answers out of the box; mount the real roots over them.
COPY --from=build /src/media /srv/media
ENV BIND=0.0.0.0 \
    PORT=8080 \
    MEDIA_DIR=/srv/media \
    GENERATED_MEDIA_DIR=/srv/generated \
    DERIVED_DIR=/var/cache/oip-media \
    LOG_FORMAT=json
# The derived folder (stills, variants) is private to the service: 0700, files 0600.
RUN mkdir -p /srv/generated /var/cache/oip-media && chown oip /var/cache/oip-media && chmod 0700 /var/cache/oip-media
VOLUME ["/srv/media", "/srv/generated", "/var/cache/oip-media"]
USER 10001
EXPOSE 8080
# Follows PORT (set at run time too); BIND must include loopback (0.0.0.0 or 127.0.0.1).
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["sh", "-c", "exec curl -fsS -o /dev/null \"http://127.0.0.1:${PORT:-8080}/readyz\""]
# SIGTERM starts a graceful shutdown (responses under way finish, up to SHUTDOWN_GRACE).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/oip-media"]

# The default image: the same, plus ffmpeg for the MP4/WebM/WebP variants of GIFs.
# Debian's ffmpeg includes h264_nvenc, used when a GPU is handed to the container (see
# compose.yaml) and MP4_ENCODER=h264_nvenc.
FROM no-ffmpeg AS runtime
USER 0
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg=7:5.1.* \
    && rm -rf /var/lib/apt/lists/*
USER 10001
