#!/usr/bin/env bash
# No Docker engine here: run the Dockerfile's build-stage commands in a clean directory
# instead (the same commands, in the same order), then check what the image would hold:
# the installed (non-editable) product, no dev tool, the SBOM, and a start with nothing
# writable but a TMPDIR and the alert spool, and a read-only CA directory (what a pod with
# readOnlyRootFilesystem gives it). Also checks images.lock and its kustomize copy.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "-- images.lock"
python3 "$src/k8s/images.py" check

# --- the build context: what .dockerignore lets through ---
mkdir "$work/app"
cp -r "$src/pyproject.toml" "$src/uv.lock" "$src/.python-version" "$src/README.md" \
      "$src/sidecar" "$src/policies" "$work/app/"
find "$work/app" -name __pycache__ -prune -exec rm -rf {} +
cd "$work/app"
export UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
# --- the same commands as the Dockerfile's build stage (uv itself: .ci/install-python.sh) ---
python3 -m uv sync --locked --no-dev --no-editable
python3 -m uv export --locked --no-dev --no-editable --format cyclonedx1.5 \
    --preview-features sbom-export --quiet --output-file "$work/app/sbom.cdx.json"
unset UV_PYTHON_DOWNLOADS UV_COMPILE_BYTECODE UV_LINK_MODE
venv="$work/app/.venv"

echo "-- smoke: installed package, bundled policy, no dev dependency"
cd /
"$venv/bin/egress-sidecar" policy check "$work/app/policies/default.yaml"
"$venv/bin/python" -c "import sidecar.settings as s; d = s.bundled_policy_dir(); \
assert '_bundled_policies' in str(d), d; print('bundled policy:', d)"
for dev in pytest hypothesis ruff mypy uv; do
  if "$venv/bin/python" -c "import $dev" 2>/dev/null; then
    echo "dev dependency $dev present in the runtime install" >&2; exit 1
  fi
done

echo "-- SBOM: CycloneDX 1.5, lists every installed distribution"
"$venv/bin/python" - "$work/app/sbom.cdx.json" <<'PY'
import json, re, sys
from importlib import metadata
bom = json.load(open(sys.argv[1]))
assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.5", bom.get("specVersion")
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
root = bom["metadata"]["component"]
listed = {(norm(c["name"]), c["version"]): c for c in [root, *bom["components"]]}
installed = {(norm(d.metadata["Name"]), d.version) for d in metadata.distributions()}
missing = sorted(installed - set(listed))
assert not missing, f"installed, not in the SBOM: {missing}"
# The SBOM describes the lock: packages for other platforms are listed with their marker.
def marker(c): return {p["name"]: p["value"] for p in c.get("properties", [])}.get("uv:package:marker")
unexplained = sorted(k for k in set(listed) - installed if not marker(listed[k]))
assert not unexplained, f"in the SBOM, not installed, no platform marker: {unexplained}"
other = sorted(f"{k[0]} ({marker(listed[k])})" for k in set(listed) - installed)
print(f"SBOM: {len(installed)} installed distributions listed; other platforms: {other}")
PY

echo "-- start on a read-only filesystem: writable only the spool and TMPDIR; CA dir read-only"
# A private mount namespace where every mount is read-only (even for root) except the alert
# spool and a TMPDIR: what readOnlyRootFilesystem plus the pod's emptyDirs give the sidecar.
# (Root, not UID 1337: this machine's interpreter lives under /root. The image's does not.)
ca="$work/ca" keys="$work/keys" spool="$work/spool" tmpd="$work/tmp"
# The CA as docs/deployment.md makes it; laid out like the Secret volume (fsGroup 1337, 0440).
"$venv/bin/python" -c "import sys; from pathlib import Path; from mitmproxy.certs import CertStore; \
CertStore.create_store(Path(sys.argv[1]), 'mitmproxy', 2048)" "$ca"
rm -f "$ca"/*.p12 "$ca"/*.cer
mkdir "$keys" "$spool" "$tmpd"
printf 'sk-dummy-smoke-test-key\n' > "$keys/openai"
chown -R root:1337 "$ca" "$keys"
chmod 0750 "$ca" "$keys"
chmod 0440 "$ca"/* "$keys"/*
read -r admin tport dport < <("$venv/bin/python" -c "import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(('127.0.0.1', 0))
print(*[s.getsockname()[1] for s in socks])")
unshare --mount --propagation private -- /bin/sh -ec '
  spool=$1 tmpd=$2; shift 2
  for d in "$spool" "$tmpd"; do mount --bind "$d" "$d"; done
  findmnt -rn -o TARGET | while read -r m; do
    case "$m" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|"$spool"|"$tmpd") ;;
      *) mount -o remount,bind,ro "$m" 2>/dev/null || true ;; esac
  done
  if touch /ro-probe 2>/dev/null || touch "$(dirname "$spool")/ro-probe" 2>/dev/null; then
    echo "the root filesystem is still writable" >&2; exit 1
  fi
  exec env -i PATH="$PATH" HOME=/nonexistent TMPDIR="$tmpd" PYTHONDONTWRITEBYTECODE=1 "$@"
' sh "$spool" "$tmpd" \
  "$venv/bin/egress-sidecar" run --policy "$work/app/policies/default.yaml" --listen off \
    --transparent "127.0.0.1:$tport" --dns "127.0.0.1:$dport" --admin "127.0.0.1:$admin" \
    --ca-dir "$ca" --secrets-dir "$keys" --upstream-ca "$ca/mitmproxy-ca-cert.pem" \
    --alert-spool "$spool" >"$work/stdout" 2>"$work/stderr" &
pid=$!
"$venv/bin/python" - "$admin" "$pid" <<'PY' || { cat "$work/stderr" >&2; exit 1; }
import os, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/readyz"
deadline = time.monotonic() + 60
while True:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            print("readyz:", r.status); break
    except OSError as exc:
        if time.monotonic() > deadline or not os.path.exists(f"/proc/{sys.argv[2]}"):
            sys.exit(f"{url}: not ready (60 s, or the sidecar exited): {exc}")
        time.sleep(0.3)
PY
kill -TERM "$pid"
rc=0; wait "$pid" || rc=$?
pid=""
if [ "$rc" != 0 ]; then
  echo "sidecar exited $rc after SIGTERM" >&2; cat "$work/stderr" >&2; exit 1
fi
echo "docker steps: OK"
