#!/usr/bin/env bash
# The same Python install steps the Dockerfile's build stage runs: uv, then the
# locked dependency set with hashes checked (drift fails the build).
# Usage: install-python.sh [--no-dev]
set -euo pipefail
export UV_PYTHON_DOWNLOADS=never
# Bytecode written at install, as the Dockerfile does: with PYTHONDONTWRITEBYTECODE set
# (as on our build machines) every process otherwise compiles mitmproxy and the rest
# from source at start, about 1.5 s of CPU each; the suite starts hundreds.
export UV_COMPILE_BYTECODE=1
UV_VERSION=0.13.9
if ! python3 -m uv --version 2>/dev/null | grep -q " ${UV_VERSION}"; then
  python3 -m pip install --quiet --disable-pip-version-check "uv==${UV_VERSION}"
fi
python3 -m uv sync --locked "$@"
# The project's own tree is an editable install: uv compiles site-packages only.
.venv/bin/python -m compileall -q -j 0 sidecar tests bench >/dev/null
