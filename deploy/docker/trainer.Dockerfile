# syntax=docker/dockerfile:1
# Trainer (`cdul train`): a batch job, no server. One process by default; several GPUs
# with torchrun (the Kubernetes Job runs `torchrun --nproc-per-node N --no-python cdul train ...`).
#
# Build from the repository root (`make images` builds every image; see the README):
#   docker build -f deploy/docker/trainer.Dockerfile -t cdul/trainer:0.1.0 .
#
# torch as in the CLIP service's image (CUDA 13.0 wheels from PyPI on the official Python
# 3.11 slim image); see clip-service.Dockerfile for why not a pytorch/pytorch tag.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG TORCH_INDEX_URL=

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
COPY requirements/trainer.txt /src/requirements/trainer.txt
COPY services /src/services
RUN pip install --require-hashes --no-deps -r /src/requirements/trainer.txt \
 && pip install --no-deps --no-build-isolation /src && pip check && rm -rf /src
# torchvision's ImageNet weights (--backbone-weights imagenet) would be fetched into
# TORCH_HOME: offline clusters pass a state_dict path on a volume instead.
ENV HOME=/home/cdul \
    XDG_CACHE_HOME=/tmp/cache \
    TORCH_HOME=/tmp/cache/torch \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /home/cdul
HEALTHCHECK NONE
ENTRYPOINT ["cdul", "train"]
CMD ["--help"]
