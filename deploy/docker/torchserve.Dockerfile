# syntax=docker/dockerfile:1
# TorchServe 0.12.0 serving the CDUL multi-label classifier (the handler inside the
# .mar built by `cdul archive` / the trainer imports the `cdul` package).
# Inference 8080, management 8081 (loopback), Prometheus metrics 8082.
#
# Build from the repository root (`make images` builds every image; see the README):
#   docker build -f deploy/docker/torchserve.Dockerfile -t cdul/torchserve:0.1.0 .
#
# Base: NOT pytorch/torchserve:0.12.0-cpu|gpu. Its interpreter is Python 3.9 with an
# older torch, and the handler's `cdul` package requires Python 3.11 and torch 2.14.1,
# so workers started by that image cannot import the handler. Instead: the same
# torchserve==0.12.0 / torch-model-archiver==0.12.0 wheels the official image installs
# (the `serving` extra in pyproject.toml), Debian's OpenJDK 17 (the JVM the project tests
# TorchServe with), torch as in the CLIP service's image. Layout follows the official
# image: /home/model-server.
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

RUN apt-get update \
 && apt-get install --yes --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 model-server \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/model-server --shell /usr/sbin/nologin model-server \
 && mkdir -p /home/model-server/model-store /home/model-server/work \
 && chown -R 10001:10001 /home/model-server
# The component's extra from its lock (requirements/, `make lock`), then the package
# itself (no dependency resolved at build time; pip check proves the set whole); the
# sources go.
COPY README.md /src/README.md
COPY requirements/serving.txt /src/requirements/serving.txt
COPY services /src/services
RUN pip install --require-hashes --no-deps -r /src/requirements/serving.txt \
 && pip install --no-deps --no-build-isolation /src && pip check && rm -rf /src
COPY --chown=10001:10001 services/cdul/serving/config.properties /home/model-server/config.properties
# TorchServe writes key_file.json (token auth) into its working directory and logs to
# LOG_LOCATION / METRICS_LOCATION: all writable paths are under work/ and /tmp, which
# Kubernetes mounts as emptyDirs over a read-only root filesystem.
ENV HOME=/home/model-server \
    LOG_LOCATION=/home/model-server/work/logs \
    METRICS_LOCATION=/home/model-server/work/logs \
    XDG_CACHE_HOME=/tmp/cache \
    TEMP=/tmp
USER 10001:10001
WORKDIR /home/model-server/work
EXPOSE 8080 8082
# Healthy once the model has a READY worker (the management API with the key TorchServe
# writes; /ping answers 200 even while the workers crash-loop).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["cdul", "serve-ready", "--key-file", "/home/model-server/work/key_file.json"]
ENTRYPOINT ["torchserve", "--foreground", "--no-config-snapshots", "--ts-config", "/home/model-server/config.properties"]
CMD ["--model-store", "/home/model-server/model-store", "--models", "cdul=cdul.mar"]
