# syntax=docker/dockerfile:1
# CLIP similarity service (`cdul clip-serve`): gRPC 51000, Prometheus metrics 9100.
#
# Build from the repository root:  docker build -f deploy/docker/clip-service.Dockerfile -t cdul/clip-service:0.1.0 .
#
# The CUDA PyTorch base: torch 2.14.1+cu130 from PyPI, whose wheels carry the CUDA 13.0
# runtime, cuDNN and NCCL as pip packages (nvidia-*-cu13), on the official Python 3.11
# slim image. The node only needs the NVIDIA driver and container toolkit. The
# pytorch/pytorch images are not used: none matches the project's pins (Python 3.11,
# torch 2.14.1, torchvision 0.29.1) and reinstalling torch on top of one doubles the
# CUDA libraries. The same image runs on CPU (`--device auto`).
# Bases are pinned by tag; pin by digest in your registry mirror (`docker buildx
# imagetools inspect python:3.11.13-slim-bookworm`), none is stated here unverified.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (cached while only the code changes), then the package itself.
COPY pyproject.toml README.md ./
COPY services ./services
RUN pip install .

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 cdul \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/cdul --shell /usr/sbin/nologin cdul
COPY --from=build /opt/venv /opt/venv
# Caches go to /tmp (an emptyDir under a read-only root filesystem); nothing is
# downloaded at start when --pretrained names a local checkpoint (e.g. on a PVC).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/cdul \
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
