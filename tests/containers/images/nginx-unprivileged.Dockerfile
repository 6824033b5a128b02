# Test-only stand-in for nginxinc/nginx-unprivileged (no registry is reachable on the
# development machines): Debian's nginx laid out as that image is, so the TorchServe pod's
# auth-proxy sidecar runs its own config: listens unprivileged, pid and temp files under
# /tmp, /etc/nginx/templates/*.template rendered into /etc/nginx/conf.d by envsubst of the
# variables that are set (the official entrypoint's rule), user 101.
ARG PYTHON_IMAGE=cdul-base:bookworm
FROM ${PYTHON_IMAGE}
RUN apt-get update \
 && apt-get install --yes --no-install-recommends nginx gettext-base \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled /etc/nginx/conf.d/* \
 && groupadd --system --gid 101 nginx-unprivileged \
 && useradd --system --uid 101 --gid 101 --no-create-home --shell /usr/sbin/nologin nginx-unprivileged
COPY nginx.conf /etc/nginx/nginx.conf
COPY entrypoint.sh /docker-entrypoint.sh
USER 101:101
ENTRYPOINT ["/docker-entrypoint.sh"]
CMD ["nginx", "-g", "daemon off;"]
