# den: one static-ish binary on a distroless base.
#   docker build -t den .
#   docker run --rm -e DISCORD_TOKEN=... -p 8080:8080 -v den-data:/var/lib/den den
# The image holds den built with the `aws` feature, so the same image runs
# the one-process shape (SQLite under /var/lib/den) and the AWS shape.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# SQLite and libopus are compiled from source and linked statically (rusqlite's bundled build; .cargo/config.toml).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ libc6-dev cmake make \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked -p den --features aws \
 && strip target/release/den \
 && mkdir -p /out/data \
 && cp target/release/den /out/den

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/den /usr/local/bin/den
COPY --from=build --chown=65532:65532 /out/data /var/lib/den
COPY personas /etc/den/personas
WORKDIR /var/lib/den
ENV DEN_OPS__LISTEN=0.0.0.0:8080 \
    DEN_LOG__FORMAT=json \
    DEN_STORE__PATH=/var/lib/den/den.db \
    DEN_PERSONAS__DIR=/etc/den/personas
USER 65532:65532
EXPOSE 8080
VOLUME ["/var/lib/den"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 CMD ["/usr/local/bin/den", "health"]
ENTRYPOINT ["/usr/local/bin/den"]
CMD ["run"]
