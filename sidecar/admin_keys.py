"""The admin listener's key-suspension API (issue 15), behind a bearer token.

    GET  /keys                    -> {"backend": ..., "suspended": [...]}
    POST /keys/TENANT/suspend     -> {"tenant": ..., "suspended": true, "changed": ...}
    POST /keys/TENANT/resume      -> {"tenant": ..., "suspended": false, "changed": ...}

Who can reach it: in transparent mode the pod's init rules reject the gateway's
connections to the admin port (docs/pod-contract.md), and every request must carry
`Authorization: Bearer TOKEN`, the token read from `--admin-token-file`: a file of the
sidecar's UID that no other UID may read (created 0600 if missing; refused at start if
others can read or write it). `egress-sidecar keys ...` (sidecar/keys_cli.py) reads the
same file, so it runs in the sidecar's container (`kubectl exec -c egress-sidecar`).
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

from aiohttp import web

from sidecar.decision import iso_time
from sidecar.settings import SettingsError
from sidecar.usage_store import BackendUnavailable, Suspension

_TENANT = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")  # as in the virtual keys file
MIN_TOKEN_CHARS = 32


class TokenUnavailable(OSError):
    """The token file is missing and cannot be created (a read-only state directory)."""


def read_admin_token(path: str | os.PathLike[str], *, create: bool) -> str:
    """The admin token; with `create`, a new random one is written if the file is missing.

    Refused (SettingsError) when another UID could read or change it."""
    path = Path(path)
    if create and not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another worker process wrote it first
        except OSError as exc:
            message = f"--admin-token-file {path}: cannot create: {exc.strerror}"
            raise TokenUnavailable(message) from None
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32) + "\n")
    try:
        info = path.stat()
        token = path.read_text().strip()
    except OSError as exc:
        raise SettingsError(
            f"--admin-token-file {path}: cannot read: {exc.strerror}; the `keys` commands "
            "need it (it is created when the sidecar starts)"
        ) from None
    if info.st_mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP):
        raise SettingsError(
            f"--admin-token-file {path}: readable or writable by other users (mode "
            f"{stat.S_IMODE(info.st_mode):o}); chmod 600 it (a Secret volume: defaultMode 0400)"
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise SettingsError(
            f"--admin-token-file {path}: the token must have at least {MIN_TOKEN_CHARS} "
            "characters (delete the file and the sidecar writes a random one)"
        )
    return token


class KeysApi:
    """aiohttp routes over a `UsageGate` (sidecar/addons/usage.py)."""

    def __init__(self, gate: Any, token: str | None) -> None:
        self._gate = gate
        self._token = token.encode() if token else None  # None: /keys answers 503

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/keys", self._list)
        app.router.add_post("/keys/{tenant}/suspend", self._suspend)
        app.router.add_post("/keys/{tenant}/resume", self._resume)

    def _authorized(self, request: web.Request) -> bool:
        if self._token is None:
            raise _error(503, "no admin token: --admin-token-file could not be created")
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(presented.strip().encode(), self._token)

    def _check(self, request: web.Request) -> str | None:
        if not self._authorized(request):
            raise _error(401, "missing or wrong admin token (see --admin-token-file)")
        tenant = request.match_info.get("tenant")
        if tenant is not None and not _TENANT.match(tenant):
            raise _error(400, "not a tenant name")
        return tenant

    async def _list(self, request: web.Request) -> web.Response:
        self._check(request)
        try:
            found = await self._gate.store.suspensions()
        except BackendUnavailable as exc:
            raise _error(503, str(exc)) from None
        body = {"backend": self._gate.store.name, "suspended": [_shown(s) for s in found]}
        return web.json_response(body)

    async def _suspend(self, request: web.Request) -> web.Response:
        tenant = self._check(request)
        assert tenant is not None
        try:
            changed = await self._gate.suspend_by_admin(tenant, "suspended by an admin")
        except BackendUnavailable as exc:
            raise _error(503, str(exc)) from None
        return web.json_response({"tenant": tenant, "suspended": True, "changed": changed})

    async def _resume(self, request: web.Request) -> web.Response:
        tenant = self._check(request)
        assert tenant is not None
        try:
            changed = await self._gate.resume(tenant)
        except BackendUnavailable as exc:
            raise _error(503, str(exc)) from None
        return web.json_response({"tenant": tenant, "suspended": False, "changed": changed})


def _shown(suspension: Suspension) -> dict[str, Any]:
    return {
        "tenant": suspension.tenant,
        "since": iso_time(suspension.since),
        "by": suspension.by,
        "detail": suspension.detail,
        "evidence": suspension.evidence,
    }


def _error(status: int, message: str) -> web.HTTPException:
    body = json.dumps({"error": message}) + "\n"
    kinds = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 503: web.HTTPServiceUnavailable}
    return kinds[status](text=body, content_type="application/json")
