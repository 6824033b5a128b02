# Test-only stand-in for MinIO (which cannot be installed on the development machines):
# moto's S3 server, the same one the rest of the suite talks to, at the version
# pyproject.toml pins for tests. Built FROM the local base by tests/containers.
ARG PYTHON_IMAGE=cdul-base:bookworm
FROM ${PYTHON_IMAGE}
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
COPY pyproject.toml /src/pyproject.toml
RUN python -m venv /opt/s3 \
 && /opt/s3/bin/pip install --no-cache-dir $(python -c "import tomllib; print(*(d for d in tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['optional-dependencies']['dev'] if d.startswith('moto')))") \
 && rm -rf /src
USER 10001:10001
ENTRYPOINT ["/opt/s3/bin/moto_server"]
CMD ["-H", "127.0.0.1", "-p", "9000"]
