# syntax=docker/dockerfile:1
# Labeler (`cdul label`, `cdul label-merge`): a batch job calling the CLIP service over
# gRPC and writing pseudo labels to the object store. No GPU: by default the CPU build of
# torch from PyTorch's index (the local version 2.14.1+cpu satisfies pyproject's ==2.14.1
# and pip prefers it), which keeps the image free of CUDA libraries. Where that index is
# out of reach, `--build-arg TORCH_INDEX_URL=` takes PyPI's (CUDA) build instead.
#
# Build from the repository root (`make images` builds every image; see the README):
#   docker build -f deploy/docker/labeler.Dockerfile -t cdul/labeler:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# ---- shared layers: these lines are the same in every image's Dockerfile (a test checks),
# so Docker builds them once and every image shares them, torch included (~6 GB with CUDA).
FROM ${PYTHON_IMAGE}
# Where pip finds packages: PyPI unless these build arguments say otherwise (`make images
# PACKAGES=host` serves this machine's local package indexes on loopback through them).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
COPY pyproject.toml /src/pyproject.toml
COPY requirements/torch-base.txt /src/requirements/torch-base.txt
# What torch needs and the core dependencies, from the lock (versions and hashes,
# `make lock`), then torch and torchvision at the versions pyproject.toml pins (the one
# place the pins live), finding those already installed: only torch's build comes from
# the index (TORCH_INDEX_URL adds one such as PyTorch's CPU wheels; its files differ
# from PyPI's, so they are pinned by version, not hash).
RUN pip install --require-hashes --no-deps -r /src/requirements/torch-base.txt
ARG TORCH_INDEX_URL
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} $(python -c "import tomllib; print(*(d for d in tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies'] if d.startswith(('torch==', 'torchvision=='))))")
# ---- end of the shared layers

RUN groupadd --gid 10001 cdul \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/cdul --shell /usr/sbin/nologin cdul
# The component's extra from its lock (requirements/, `make lock`), then the package
# itself (no dependency resolved at build time; pip check proves the set whole); the
# sources go.
COPY README.md /src/README.md
COPY requirements/labeler.txt /src/requirements/labeler.txt
COPY services /src/services
RUN pip install --require-hashes --no-deps -r /src/requirements/labeler.txt \
 && pip install --no-deps --no-build-isolation /src && pip check && rm -rf /src
ENV HOME=/home/cdul \
    XDG_CACHE_HOME=/tmp/cache
USER 10001:10001
WORKDIR /home/cdul
HEALTHCHECK NONE
# Shard index from $JOB_COMPLETION_INDEX, shard count from $CDUL_NUM_SHARDS, CLIP
# endpoints from $CDUL_CLIP_ENDPOINTS; `cdul label-merge RUN` runs in the same image.
ENTRYPOINT ["cdul", "label"]
CMD ["--help"]
