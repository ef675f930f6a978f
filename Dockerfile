# syntax=docker/dockerfile:1
# Build once: the three services and the `ap2` tool in one release build.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p key-directory -p wallet -p merchant -p ap2-cli

# A small runtime image holding the four binaries, run as a non-root user. Which service a
# container runs is its command; configuration comes only from the environment.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /data ap2 \
 && mkdir -p /data/keys /data/wallet /data/merchant \
 && chown -R ap2:ap2 /data
COPY --from=build /src/target/release/key-directory /src/target/release/wallet \
     /src/target/release/merchant /src/target/release/ap2 /usr/local/bin/
USER ap2
WORKDIR /data
ENV LOG_FORMAT=json
