# syntax=docker/dockerfile:1
# Trainer (`cdul train`): a batch job, no server. One process by default; several GPUs
# with torchrun (the Kubernetes Job runs `torchrun --nproc-per-node N --no-python cdul train ...`).
#
# Build from the repository root:  docker build -f deploy/docker/trainer.Dockerfile -t cdul/trainer:0.1.0 .
#
# The CUDA PyTorch base is the same as the CLIP service's: torch 2.14.1+cu130 from PyPI
# (CUDA 13.0 runtime, cuDNN, NCCL as pip packages) on the official Python 3.11 slim
# image; see clip-service.Dockerfile for why not a pytorch/pytorch tag.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
RUN pip install .

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 cdul \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/cdul --shell /usr/sbin/nologin cdul
COPY --from=build /opt/venv /opt/venv
# torchvision's ImageNet weights (--backbone-weights imagenet) would be fetched into
# TORCH_HOME: offline clusters pass a state_dict path on a volume instead.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/cdul \
    XDG_CACHE_HOME=/tmp/cache \
    TORCH_HOME=/tmp/cache/torch \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /home/cdul
HEALTHCHECK NONE
ENTRYPOINT ["cdul", "train"]
CMD ["--help"]
