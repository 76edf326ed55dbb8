# Eddy in a container: the `eddy` binary with its embedded Kafka-compatible broker.
#   docker build -t eddy .
#   docker run -it -v eddy-data:/data eddy                              # REPL on the embedded broker
#   docker run -it eddy --bootstrap-servers kafka:9092                  # REPL on an existing Kafka
# The embedded broker listens on the container's 127.0.0.1 only: clients outside the container cannot
# reach it (publishing its port needs an advertised-listener option, not there yet).
FROM rust:1.95-bookworm AS build
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends cmake libclang-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p eddy && cp target/release/eddy /usr/local/bin/eddy

FROM debian:bookworm-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/eddy /usr/local/bin/eddy
WORKDIR /data
ENTRYPOINT ["eddy", "--data-dir", "/data"]
