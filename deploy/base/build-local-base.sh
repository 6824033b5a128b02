#!/usr/bin/env bash
# A local stand-in for the official python:3.11-slim image, for machines that reach Debian's
# package mirror but no container registry (the development machines and CI of this project).
#
#   deploy/base/build-local-base.sh [IMAGE]        # default IMAGE: cdul-base:bookworm
#
# Debian bookworm (Python 3.11) from the host's apt sources with mmdebstrap, imported as IMAGE,
# then laid out as the official image is: a Python environment at /usr/local, so `python` and
# `pip` are on PATH. If the host trusts extra certificate authorities (a TLS-inspecting proxy:
# the file PIP_CERT names), that bundle goes in too, so pip inside a build reaches PyPI as the
# host's does. Needs root, mmdebstrap and a running Docker daemon; ~30 s, ~230 MB.
# Nothing here is used in production: there, PYTHON_IMAGE stays the official slim image.
set -euo pipefail
image=${1:-cdul-base:bookworm}
command -v mmdebstrap >/dev/null || { echo "needs mmdebstrap (apt-get install mmdebstrap)" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "needs a running Docker daemon" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$work/rootfs.tar"
docker import "$work/rootfs.tar" "$image-rootfs" >/dev/null

cert=${PIP_CERT:-}
cp "${cert:-/etc/ssl/certs/ca-certificates.crt}" "$work/host-ca.crt"
cat > "$work/Dockerfile" <<DOCKERFILE
FROM $image-rootfs
# The official image's layout: python and pip on PATH from /usr/local.
RUN python3 -m venv /usr/local && /usr/local/bin/python -m pip --version
COPY host-ca.crt /usr/local/share/ca-certificates/cdul-host-ca.crt
ENV PIP_CERT=/usr/local/share/ca-certificates/cdul-host-ca.crt LANG=C.UTF-8
CMD ["python3"]
DOCKERFILE
DOCKER_BUILDKIT=0 docker build --quiet --network host -t "$image" "$work" >/dev/null
docker image rm "$image-rootfs" >/dev/null
docker run --rm --network none "$image" python -c 'import sys; print("base ready:", sys.version.split()[0])'
echo "$image"
