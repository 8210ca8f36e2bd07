"""`egress-sidecar keys list | suspend TENANT | resume TENANT` (issue 15).

Talks to the running sidecar's admin listener with the token from
`--admin-token-file` (sidecar/admin_keys.py): run it in the sidecar's container,
e.g. `kubectl exec deploy/litellm -c egress-sidecar -- egress-sidecar keys list`.
With a Redis backend, one sidecar's answer holds for every replica.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from sidecar.admin_keys import read_admin_token
from sidecar.settings import DEFAULT_ADMIN_LISTEN, ENV_PREFIX, SettingsError
from sidecar.usage_settings import from_values

EXIT_FAILED = 1
EXIT_USAGE = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    if parser.prog.split()[-1] in ("suspend", "resume"):
        parser.add_argument("tenant", help="tenant name, as in the virtual keys file")
    parser.add_argument(
        "--admin",
        default=None,
        help=f"the sidecar's admin ADDRESS:PORT (default {DEFAULT_ADMIN_LISTEN}) "
        f"[env {ENV_PREFIX}ADMIN]",
    )
    parser.add_argument(
        "--admin-token-file",
        default=None,
        help=f"the token file the sidecar uses (default STATE_DIR/admin-token) "
        f"[env {ENV_PREFIX}ADMIN_TOKEN_FILE]",
    )
    parser.add_argument(
        "--state-dir", default=None, help=f"the sidecar's --state-dir [env {ENV_PREFIX}STATE_DIR]"
    )


def main(args: argparse.Namespace) -> int:
    def option(name: str, env: str) -> str | None:
        value: str | None = getattr(args, name)
        return value or os.environ.get(ENV_PREFIX + env) or None

    settings = from_values(
        {
            "--state-dir": option("state_dir", "STATE_DIR"),
            "--admin-token-file": option("admin_token_file", "ADMIN_TOKEN_FILE"),
        }
    )
    try:
        token = read_admin_token(settings.admin_token_file, create=False)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    admin = option("admin", "ADMIN") or DEFAULT_ADMIN_LISTEN
    base = admin if admin.startswith("http") else f"http://{admin}"
    action = args.keys_command
    if action == "list":
        status, body = _call("GET", f"{base}/keys", token)
    else:
        status, body = _call("POST", f"{base}/keys/{args.tenant}/{action}", token)
    if status != 200:
        print(f"error: {status}: {body.get('error', body)}", file=sys.stderr)
        return EXIT_FAILED
    if action == "list":
        print(f"backend: {body['backend']}")
        if not body["suspended"]:
            print("no tenant is suspended")
        for item in body["suspended"]:
            print(f"{item['tenant']}\tsuspended since {item['since']} by {item['by']}")
            if item.get("detail"):
                print(f"\t{item['detail']}")
    else:
        what = "suspended" if action == "suspend" else "resumed"
        note = ""
        if action == "resume" and not body.get("changed"):
            note = " (it was not suspended)"
        if action == "suspend" and not body.get("changed"):
            note = " (it was already suspended)"
        print(f"{body['tenant']}: {what}{note}")
    return 0


def _call(method: str, url: str, token: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(  # noqa: S310 - http:// only, see main
        url, method=method, data=b"" if method == "POST" else None,
        headers={"authorization": f"Bearer {token}"},
    )  # fmt: skip
    try:
        # Only http:// URLs are built here (main), never a user-given scheme.
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {"error": exc.reason}
    except (urllib.error.URLError, OSError) as exc:
        return 0, {"error": f"cannot reach the sidecar's admin listener at {url}: {exc}"}
