# egress-sidecar: the proxy image. Build stage installs the locked dependency set
# (hashes checked); the final stage has no build tools and runs as UID 1337.
# .ci/docker-steps.sh runs the build stage's commands in CI (no Docker engine there).
# Base image digests: see issue "Kubernetes and container packaging" (not pinned yet).

FROM python:3.12-slim-bookworm AS build
ENV UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
WORKDIR /app
RUN pip install --no-cache-dir uv==0.13.9
COPY pyproject.toml uv.lock .python-version README.md ./
COPY sidecar ./sidecar
COPY policies ./policies
RUN python3 -m uv sync --locked --no-dev --no-editable

FROM python:3.12-slim-bookworm AS sidecar
COPY --from=build /app/.venv /app/.venv
COPY policies /etc/egress-sidecar/policies
ENV PATH=/app/.venv/bin:$PATH \
    EGRESS_SIDECAR_POLICY=/etc/egress-sidecar/policies/default.yaml \
    EGRESS_SIDECAR_CA_DIR=/var/run/egress-sidecar/ca \
    EGRESS_SIDECAR_LISTEN=127.0.0.1:15080 \
    EGRESS_SIDECAR_ADMIN=0.0.0.0:15020
USER 1337:1337
EXPOSE 15020
ENTRYPOINT ["egress-sidecar"]
CMD ["run"]
