# vitnas image: every pipeline stage runs in it (Kubeflow components, or `docker run ... vitnas <stage>`).
# Build: docker build -t REGISTRY/vitnas:$(git rev-parse --short HEAD) .
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM ${CUDA_IMAGE} AS builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON=3.11 \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# Dependencies first (locked, no dev tools): this layer is reused until uv.lock changes.
COPY pyproject.toml uv.lock ./
RUN uv python install 3.11 \
    && uv sync --frozen --no-dev --no-install-project --no-cache
COPY README.md ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
RUN uv sync --frozen --no-dev --no-editable --no-cache

FROM ${CUDA_IMAGE}
COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg
RUN groupadd --gid 10001 vitnas \
    && useradd --uid 10001 --gid 10001 --create-home vitnas
USER 10001:10001
WORKDIR /home/vitnas
ENTRYPOINT ["vitnas"]
CMD ["--help"]
