#!/usr/bin/env bash
# Install what egress-sidecar and its tests need on a Debian machine: the Debian
# packages the tests talk to (root needed), uv, and the locked Python dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install-system.sh
bash .ci/install-python.sh "$@"
