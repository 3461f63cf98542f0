# syntax=docker/dockerfile:1
# Every tapbus binary in one small image (compose/docker-compose.yml runs each as its own
# service): tapbus-broker, tapbus-tail, tapbus-reduce, tapbus-aggregate, tapbus-mimir, and
# whatever other binaries the workspace has (tapbus-loki, tapbus-top). libssl3: the TLS of
# mqtts:// (rumqttc's native-tls backend, see docs/supply-chain.md).
#   docker build -t tapbus:latest .

FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && find target/release -maxdepth 1 -type f -executable -name 'tapbus-*' -exec cp {} /out/ \;

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 # 10053: the group of the broker's dnstap socket, shared with named's image.
 && groupadd -g 10053 dnstap \
 && groupadd -g 10001 tapbus \
 && useradd -u 10001 -g tapbus -G dnstap -M -d /nonexistent -s /usr/sbin/nologin tapbus \
 && mkdir -p /run/dnstap /etc/tapbus \
 && chown root:dnstap /run/dnstap && chmod 2770 /run/dnstap
COPY --from=build /out/ /usr/local/bin/
COPY config/ /etc/tapbus/examples/
USER tapbus:tapbus
# broker: dnstap TCP 6000, /metrics 9634; aggregate 9635, reduce 9636, mimir 9637, loki 9638
EXPOSE 6000 9634 9635 9636 9637 9638
CMD ["tapbus-broker", "--help"]
