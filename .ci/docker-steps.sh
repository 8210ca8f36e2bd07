#!/usr/bin/env bash
# No Docker engine here: run the Dockerfile's build-stage commands in a clean
# directory instead, then smoke-test the installed (non-editable) product.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$src/pyproject.toml" "$src/uv.lock" "$src/.python-version" "$src/README.md" \
      "$src/sidecar" "$src/policies" "$work/"
cd "$work"
export UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
# --- the same commands as the Dockerfile's build stage ---
python3 -m uv sync --locked --no-dev --no-editable
# --- smoke: the installed package finds its bundled policy, and no dev tool leaked in ---
cd /
"$work/.venv/bin/egress-sidecar" policy check "$work/policies/default.yaml"
"$work/.venv/bin/python" -c "import sidecar.settings as s; d = s.bundled_policy_dir(); \
assert '_bundled_policies' in str(d), d; print('bundled policy:', d)"
if "$work/.venv/bin/python" -c "import pytest" 2>/dev/null; then
  echo "dev dependency pytest present in the runtime install" >&2; exit 1
fi
