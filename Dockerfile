# Hearth images: the inference server and the operator, built from one workspace.
#   docker build --target server   -t hearth-server .
#   docker build --target operator -t hearth-operator .
#   docker build --target server-cuda --build-arg CUDA_VERSION=12.4.1 -t hearth-server:cuda .
# Both run as a non-root user (65532) on a read-only root filesystem.

ARG RUST_VERSION=1.89
ARG CUDA_VERSION=12.4.1

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Generic x86-64 / arm64 code: kernels pick SIMD paths at run time, never target-cpu=native.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p hearth-server -p hearth-operator \
 && mkdir -p /out && cp target/release/hearth-server target/release/hearth-operator /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS server
COPY --from=build /out/hearth-server /usr/local/bin/hearth-server
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/hearth-server"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/hearth-operator /usr/local/bin/hearth-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/hearth-operator"]

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu22.04 AS build-cuda
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config \
 && rm -rf /var/lib/apt/lists/*
ARG RUST_VERSION
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain ${RUST_VERSION}
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/root/.cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p hearth-server --features cuda \
 && mkdir -p /out && cp target/release/hearth-server /out/

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu22.04 AS server-cuda
COPY --from=build-cuda /out/hearth-server /usr/local/bin/hearth-server
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/hearth-server"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
