#!/usr/bin/env bash
# The same Python install steps the Dockerfile's build stage runs: uv, then the
# locked dependency set with hashes checked (drift fails the build).
# Usage: install-python.sh [--no-dev]
set -euo pipefail
export UV_PYTHON_DOWNLOADS=never
UV_VERSION=0.13.9
if ! python3 -m uv --version 2>/dev/null | grep -q " ${UV_VERSION}"; then
  python3 -m pip install --quiet --disable-pip-version-check "uv==${UV_VERSION}"
fi
python3 -m uv sync --locked "$@"
