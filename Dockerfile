# syntax=docker/dockerfile:1
# egress-sidecar images, one Dockerfile, two targets:
#   sidecar (default, the last stage): the proxy. UID 1337, no build tools, no netfilter tools.
#   init:    `egress-sidecar init` with iptables/ip6tables; the pod's init container runs it as root.
#
# The base image is pinned by digest in images.lock, the one place images are named:
#   docker build $(python3 k8s/images.py build-args) --target sidecar -t egress-sidecar .
#   docker build $(python3 k8s/images.py build-args) --target init    -t egress-sidecar-init .
# images.py refuses while images.lock says UNPINNED (no digest is ever guessed), and a build
# without the argument stops at the first FROM ("base name should not be blank").
#
# Read-only root filesystem: the process writes only to /tmp (the upstream trust bundle when
# --upstream-ca is set), the alert spool and, if it must create the CA, the CA directory:
# all three are VOLUMEs (emptyDir or a mounted Secret in Kubernetes).
#
# .ci/docker-steps.sh runs the build stage's RUN commands in CI, from a clean directory.
ARG PYTHON_IMAGE

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
WORKDIR /app
RUN pip install --no-cache-dir uv==0.13.9
COPY pyproject.toml uv.lock .python-version README.md ./
COPY sidecar ./sidecar
COPY policies ./policies
# The locked dependency set, hashes checked (drift from pyproject fails); then its SBOM.
RUN python3 -m uv sync --locked --no-dev --no-editable \
 && python3 -m uv export --locked --no-dev --no-editable --format cyclonedx1.5 \
      --preview-features sbom-export --quiet --output-file /app/sbom.cdx.json

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS init
# iptables ships both backends (nft, legacy) and ip6tables. Version of Debian 12 (bookworm).
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables=1.8.9-2 \
 && rm -rf /var/lib/apt/lists/* /usr/local/bin/pip* /usr/local/lib/python3.12/site-packages/pip
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1
# Runs as root (iptables needs it) with only NET_ADMIN and NET_RAW: see k8s/components/egress-sidecar/pod.yaml.
ENTRYPOINT ["egress-sidecar"]
CMD ["init"]

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS sidecar
LABEL org.opencontainers.image.title="egress-sidecar" \
      org.opencontainers.image.description="Egress-enforcing mitmproxy sidecar for LLM gateways" \
      org.opencontainers.image.licenses="Apache-2.0"
# No installer in the runtime image; the directories that may be written belong to UID 1337.
RUN rm -rf /usr/local/bin/pip* /usr/local/lib/python3.12/site-packages/pip \
 && mkdir -p /var/run/egress-sidecar/ca /var/spool/egress-sidecar \
 && chown -R 1337:1337 /var/run/egress-sidecar /var/spool/egress-sidecar \
 && chmod 0700 /var/run/egress-sidecar/ca
COPY --from=build /app/.venv /app/.venv
COPY --from=build /app/sbom.cdx.json /usr/share/doc/egress-sidecar/sbom.cdx.json
COPY policies /etc/egress-sidecar/policies
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    EGRESS_SIDECAR_POLICY=/etc/egress-sidecar/policies/default.yaml \
    EGRESS_SIDECAR_CA_DIR=/var/run/egress-sidecar/ca \
    EGRESS_SIDECAR_ALERT_SPOOL=/var/spool/egress-sidecar \
    EGRESS_SIDECAR_LISTEN=127.0.0.1:15080 \
    EGRESS_SIDECAR_ADMIN=0.0.0.0:15020
VOLUME ["/tmp", "/var/run/egress-sidecar", "/var/spool/egress-sidecar"]
USER 1337:1337
EXPOSE 15020
ENTRYPOINT ["egress-sidecar"]
# --workers auto (the default): the container's CPU limit (`docker run --cpus N`), no more
# than its memory limit fits; one worker without a CPU limit (docs/performance.md#workers)
CMD ["run"]
