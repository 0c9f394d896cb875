# syntax=docker/dockerfile:1.7
# vitnas image: every pipeline stage runs in it (Kubeflow components, or `docker run ... vitnas <stage>`).
# Build and push (the tag is the commit, which `vitnas pipeline compile` uses by default):
#   TAG=$(git rev-parse --short HEAD)
#   docker build --build-arg VITNAS_CODE_VERSION=$TAG -t REGISTRY/vitnas:$TAG . && docker push REGISTRY/vitnas:$TAG
# The CUDA "base" flavour is enough: PyTorch's wheels bring their own CUDA libraries (cuBLAS, cuDNN,
# NCCL; see uv.lock), so the "runtime" flavour would only add a second copy of them. The base image
# supplies what the NVIDIA container runtime needs to expose the host driver.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM ${CUDA_IMAGE} AS builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_PYTHON=3.11 \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# Dependencies first (locked, no dev tools): this layer is reused until uv.lock changes. The uv
# cache is a build cache mount, so it never lands in a layer.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv python install 3.11 \
    && uv sync --frozen --no-dev --no-install-project
COPY README.md ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

FROM ${CUDA_IMAGE}
ARG VITNAS_CODE_VERSION=""
LABEL org.opencontainers.image.title="vitnas" \
      org.opencontainers.image.description="Vision Transformer architecture search pipeline stages" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${VITNAS_CODE_VERSION}"
COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg \
    VITNAS_CODE_VERSION=${VITNAS_CODE_VERSION}
# Non-root user. The KFP v2 launcher stages artifacts under /minio, /s3 and /gcs, which a non-root
# user could not create, so they exist and belong to it.
RUN groupadd --gid 10001 vitnas \
    && useradd --uid 10001 --gid 10001 --create-home vitnas \
    && mkdir -p /minio /s3 /gcs \
    && chown 10001:10001 /minio /s3 /gcs
USER 10001:10001
WORKDIR /home/vitnas
ENTRYPOINT ["vitnas"]
CMD ["--help"]
