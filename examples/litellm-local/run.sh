#!/usr/bin/env bash
# Local trial: fake provider + egress-sidecar + LiteLLM's proxy server + a client, on
# 127.0.0.1, no provider account. Needs the dev environment: bash scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
exec .venv/bin/python examples/litellm-local/trial.py "$@"
