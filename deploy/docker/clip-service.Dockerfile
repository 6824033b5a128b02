# syntax=docker/dockerfile:1
# CLIP similarity service (`cdul clip-serve`): gRPC 51000, Prometheus metrics 9100.
#
# Build from the repository root (`make images` builds every image; see the README):
#   docker build -f deploy/docker/clip-service.Dockerfile -t cdul/clip-service:0.1.0 .
#
# torch 2.14.1 from PyPI, whose wheels carry the CUDA 13.0 runtime, cuDNN and NCCL as pip
# packages (nvidia-*-cu13), on the official Python 3.11 slim image. The node only needs the
# NVIDIA driver and container toolkit. The pytorch/pytorch images are not used: none
# matches the project's pins (Python 3.11, torch 2.14.1, torchvision 0.29.1) and
# reinstalling torch on top of one doubles the CUDA libraries. The same image runs on CPU
# (`--device auto`). Bases are pinned by tag; pin by digest in your registry mirror
# (`docker buildx imagetools inspect python:3.11.13-slim-bookworm`): none is stated here
# unverified. Machines that reach no registry build PYTHON_IMAGE with
# deploy/base/build-local-base.sh.
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
COPY requirements/clip-service.txt /src/requirements/clip-service.txt
COPY services /src/services
RUN pip install --require-hashes --no-deps -r /src/requirements/clip-service.txt \
 && pip install --no-deps --no-build-isolation /src && pip check && rm -rf /src
# Caches go to /tmp (an emptyDir under a read-only root filesystem); nothing is
# downloaded at start when --pretrained names a local checkpoint (e.g. on a PVC).
ENV HOME=/home/cdul \
    XDG_CACHE_HOME=/tmp/cache \
    HF_HUB_OFFLINE=1
USER 10001:10001
WORKDIR /home/cdul
EXPOSE 51000 9100
# Standard gRPC health (grpc.health.v1): SERVING only once the model is loaded.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import grpc, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; r = g.HealthStub(grpc.insecure_channel('127.0.0.1:51000')).Check(h.HealthCheckRequest(), timeout=4); sys.exit(r.status != h.HealthCheckResponse.SERVING)"]
ENTRYPOINT ["cdul", "clip-serve"]
# Weights: override --model/--pretrained, e.g. --model RN50 --pretrained /models/RN50-openai.pt
CMD ["--host", "0.0.0.0", "--port", "51000", "--metrics-port", "9100", "--device", "auto", "--model", "RN50", "--pretrained", "/models/clip/RN50-openai.pt"]
