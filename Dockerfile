# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run in a slim Debian with only the binary.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not refetch the registry.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY media ./media
RUN cargo build --release --locked --bin oip-media

FROM debian:bookworm-slim AS runtime
# curl for the HEALTHCHECK; ffmpeg for the MP4/WebM/WebP variants of GIFs (optional at
# run time: without it `?format=` answers 501). Debian's ffmpeg includes h264_nvenc,
# used when a GPU is handed to the container (see compose.yaml) and MP4_ENCODER=h264_nvenc.
# ca-certificates: the system roots an `https://` ELASTICSEARCHHOST is checked against
# (the HTTP client loads them at start-up; ELASTIC_CA_FILE adds Elasticsearch's own CA).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=202* curl=7.88.* ffmpeg=7:5.1.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin oip
COPY --from=build /src/target/release/oip-media /usr/local/bin/oip-media
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
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8080/readyz"]
# SIGTERM starts a graceful shutdown (responses under way finish, up to SHUTDOWN_GRACE).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/oip-media"]
