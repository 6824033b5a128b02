# syntax=docker/dockerfile:1
# Labeler (`cdul label`, `cdul label-merge`): a batch job calling the CLIP service over
# gRPC and writing pseudo labels to the object store. No GPU: a slim Python base with
# the CPU build of torch (the package imports torch for the equations; nothing heavy
# runs here).
#
# Build from the repository root:  docker build -f deploy/docker/labeler.Dockerfile -t cdul/labeler:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# The CPU wheels of torch/torchvision (same versions as pyproject.toml's pins; the
# local version tag +cpu satisfies ==2.14.1) keep the image free of CUDA libraries.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" "torch==2.14.1+cpu" "torchvision==0.29.1+cpu" \
 && pip install --extra-index-url "${TORCH_INDEX_URL}" .

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 cdul \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/cdul --shell /usr/sbin/nologin cdul
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/cdul \
    XDG_CACHE_HOME=/tmp/cache \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /home/cdul
HEALTHCHECK NONE
# Shard index from $JOB_COMPLETION_INDEX, shard count from $CDUL_NUM_SHARDS, CLIP
# endpoints from $CDUL_CLIP_ENDPOINTS; `cdul label-merge RUN` runs in the same image.
ENTRYPOINT ["cdul", "label"]
CMD ["--help"]
