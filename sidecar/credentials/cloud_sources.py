"""Where cloud credentials come from, cached and refreshed before they expire (issue 16).

- `aws_sigv4` + `secret`: a JSON access key in the secrets directory, re-read through
  the `SecretStore` (so a rotated Secret is in use within a second).
- `aws_sigv4` + `web_identity` (EKS IRSA): the projected token file is exchanged at STS
  (AssumeRoleWithWebIdentity, unsigned: the token is the credential) for temporary
  credentials, refreshed five minutes before they expire. The sidecar talks to STS
  directly, never through its own proxy: STS is not, and must not be, in the
  gateway's allowlist. Only official endpoints (or ones named in the sidecar's own
  settings), at vetted addresses, whatever the environment says: cloud_endpoints.py.
- `google_oauth`: a service-account key or a workload identity federation config
  (`external_account` with a `credential_source.file`), given to google-auth, which
  mints access tokens at the `token_uri` / `token_url` the file names.

Every network call runs in a worker thread (`asyncio.to_thread`): a slow token
endpoint delays the requests that need its token, never the event loop. One fetch per
credential at a time; a token close to expiry is refreshed in the background while
the current one is still used.

Every secret value produced here (secret access keys, session tokens, access tokens,
private key lines) is handed to `SecretStore.remember`, so the reflection guard
redacts it and the gateway presenting it is `gateway_holds_credential`.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree

from sidecar.credentials.cloud_endpoints import EndpointRules, sts_url, vetted_pool
from sidecar.credentials.cloud_signing import AwsKeys, CloudCredentialError, parse_aws_keys
from sidecar.credentials.detect import redact_known_keys
from sidecar.credentials.secret_store import Secret, SecretStore
from sidecar.policy.cloud_credentials import AwsWebIdentity, CloudCredential

__all__ = ["CloudCredentialSource"]

log = logging.getLogger("sidecar.credentials")

REFRESH_MARGIN = 300.0  # refresh this long before expiry
MIN_VALID = 30.0  # below this, wait for a fresh credential rather than use the old one
FAILURE_BACKOFF = 1.0
_MAX_TOKEN_FILE = 64 * 1024
_MAX_ANSWER = 64 * 1024  # an STS answer is about 2 KiB
_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
_GOOGLE_TYPES = ("service_account", "external_account")


@dataclass(frozen=True, slots=True)
class _Entry:
    version: str
    value: Any
    expires_at: float | None


class CloudCredentialSource:
    """Produces the credential a request needs; call from the event loop."""

    def __init__(
        self,
        store: SecretStore,
        *,
        ca_bundle: str | None = None,
        clock: Callable[[], float] = time.time,
        environ: dict[str, str] | None = None,
    ) -> None:
        self._store = store
        self._ca_bundle = ca_bundle
        self._clock = clock
        self._environ = dict(os.environ if environ is None else environ)
        self._cache: dict[str, _Entry] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[Any]] = {}
        # A failed fetch is not retried for FAILURE_BACKOFF seconds: requests arriving
        # meanwhile get the same refusal instead of each calling the endpoint again.
        self._failed: dict[tuple[str, str], tuple[float, BaseException]] = {}
        self._http: Any = None
        # STS and token endpoints: official, or named in our own settings; vetted.
        self._rules = EndpointRules()
        self._rules_error: str | None = None
        try:
            self._rules = EndpointRules.from_environ(self._environ)
        except ValueError as exc:
            self._rules_error = str(exc)
            log.error("cloud credentials unavailable: %s", exc)

    # -- per request ---------------------------------------------------------------

    async def aws_keys(self, credential: CloudCredential) -> AwsKeys:
        if credential.web_identity is not None:
            identity = credential.web_identity
            key = f"aws:{identity.role_arn}:{identity.token_file}:{identity.session_name}"
            value = await self._cached(key, "", lambda: self._assume_role(identity))
            assert isinstance(value, AwsKeys)
            return value
        document = self._document(credential)
        entry = self._cache.get(f"aws:{document.name}")
        if entry is not None and entry.version == document.fingerprint:
            assert isinstance(entry.value, AwsKeys)
            return entry.value
        keys = parse_aws_keys(document)
        for secret in keys.secrets():
            self._store.remember(secret)
        self._cache[f"aws:{document.name}"] = _Entry(document.fingerprint, keys, None)
        return keys

    async def google_token(self, credential: CloudCredential) -> Secret:
        document = self._document(credential)
        value = await self._cached(
            f"google:{document.name}", document.fingerprint, lambda: self._mint_google(document)
        )
        assert isinstance(value, Secret)
        return value

    def _document(self, credential: CloudCredential) -> Secret:
        assert credential.secret is not None
        document = self._store.get_document(credential.secret)
        if document is None:
            raise CloudCredentialError(f"secret {credential.secret!r} is missing or invalid")
        return document

    # -- cache ---------------------------------------------------------------------

    async def _cached(self, key: str, version: str, fetch: Callable[[], tuple[Any, float]]) -> Any:
        entry = self._cache.get(key)
        now = self._clock()
        if entry is not None and entry.version == version:
            left = (entry.expires_at or float("inf")) - now
            if left > REFRESH_MARGIN:
                return entry.value
            if left > MIN_VALID:
                self._start(key, version, fetch)  # refresh ahead; use this one meanwhile
                return entry.value
        failed = self._failed.get((key, version))
        if failed is not None and failed[0] > now:
            raise failed[1]
        return await asyncio.shield(self._start(key, version, fetch))

    def _start(
        self, key: str, version: str, fetch: Callable[[], tuple[Any, float]]
    ) -> asyncio.Future[Any]:
        running = self._inflight.get((key, version))
        if running is not None:
            return running

        async def run() -> Any:
            try:
                value, expires_at = await asyncio.to_thread(fetch)
            except CloudCredentialError as exc:
                self._failed[(key, version)] = (self._clock() + FAILURE_BACKOFF, exc)
                raise
            finally:
                self._inflight.pop((key, version), None)
            self._failed.pop((key, version), None)
            self._cache[key] = _Entry(version, value, expires_at)
            return value

        task = asyncio.ensure_future(run())
        task.add_done_callback(_log_failure)
        self._inflight[(key, version)] = task
        return task

    # -- fetches (worker threads) ----------------------------------------------------

    def _assume_role(self, identity: AwsWebIdentity) -> tuple[AwsKeys, float]:
        try:
            with open(identity.token_file, "rb") as fh:
                token = fh.read(_MAX_TOKEN_FILE).decode("ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not ASCII"
            raise CloudCredentialError(
                f"web identity token file {identity.token_file} unreadable: {why}"
            ) from None
        if not token:
            raise CloudCredentialError(f"web identity token file {identity.token_file} is empty")
        # Called directly, not with botocore: its session takes the endpoint, the CA
        # bundle and proxies from AWS_* variables and config files (cloud_endpoints.py).
        form = urlencode({"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
                          "RoleArn": identity.role_arn,
                          "RoleSessionName": identity.session_name,
                          "WebIdentityToken": token})  # fmt: skip
        status, data = self._post(sts_url(self._rules), form)
        what = f"STS AssumeRoleWithWebIdentity for {identity.role_arn}"
        try:
            # At most 64 KiB from a vetted endpoint; expat resolves no external entity
            # and refuses entity expansion bombs (Python >= 3.12 bundles expat 2.6).
            answer = ElementTree.fromstring(data)  # noqa: S314
        except ElementTree.ParseError:
            raise CloudCredentialError(f"{what} failed: HTTP {status}, not XML") from None
        if status != 200:
            code = re.sub(r"[^A-Za-z0-9.]", "", _xml_text(answer, "Code") or "error")[:64]
            raise CloudCredentialError(f"{what} refused: {code}")
        try:
            label = "aws-web-identity"
            keys = AwsKeys(
                _xml_text(answer, "AccessKeyId") or "",
                Secret(label, _xml_text(answer, "SecretAccessKey") or ""),
                Secret(label, _xml_text(answer, "SessionToken") or ""),
                expires_at=_epoch(_xml_text(answer, "Expiration")),
            )
        except ValueError:
            raise CloudCredentialError(f"{what} failed: an incomplete answer") from None
        if not keys.access_key_id or not all(s.reveal() for s in keys.secrets()):
            raise CloudCredentialError(f"{what} failed: an incomplete answer")
        for secret in keys.secrets():
            self._store.remember(secret)
        assert keys.expires_at is not None
        return keys, keys.expires_at

    def _post(self, url: str, form: str) -> tuple[int, bytes]:
        """POST to a vetted endpoint; a bounded answer. Errors are named, never quoted."""
        import urllib3.exceptions

        try:
            answer = self._http_pool().request(
                "POST",
                url,
                body=form.encode(),
                headers={"content-type": "application/x-www-form-urlencoded; charset=utf-8"},
                preload_content=False,
                redirect=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise CloudCredentialError(f"{url} unreachable: {type(exc).__name__}") from None
        try:
            return answer.status, answer.read(_MAX_ANSWER)
        except urllib3.exceptions.HTTPError as exc:
            why = f"{url}: reading the answer failed: {type(exc).__name__}"
            raise CloudCredentialError(why) from None
        finally:
            answer.release_conn()

    def _mint_google(self, document: Secret) -> tuple[Secret, float]:
        import google.auth.exceptions
        import google.auth.transport.urllib3

        name = document.name
        try:
            info = json.loads(document.reveal())
        except ValueError:
            raise CloudCredentialError(f"secret {name!r} is not JSON") from None
        kind = info.get("type") if isinstance(info, dict) else None
        if kind not in _GOOGLE_TYPES:
            raise CloudCredentialError(
                f"secret {name!r} is not a service-account key or an external_account "
                "(workload identity federation) config"
            )
        if kind == "external_account":
            source = info.get("credential_source")
            if not isinstance(source, dict) or set(source) - {"file", "format"}:
                # url / environment_id sources query metadata servers: never from here.
                raise CloudCredentialError(
                    f"secret {name!r}: only a file credential_source (a projected token) "
                    "is supported"
                )
        else:
            self._remember_private_key(name, info.get("private_key"))
        try:
            credentials = _google_credentials(info)
            transport = google.auth.transport.urllib3.Request(self._http_pool())  # type: ignore[no-untyped-call]
            credentials.refresh(transport)
        except google.auth.exceptions.GoogleAuthError as exc:
            raise CloudCredentialError(
                f"minting a Google token from secret {name!r} failed: {type(exc).__name__}"
                f"{_first_words(exc)}"
            ) from None
        except (ValueError, KeyError, OSError) as exc:
            raise CloudCredentialError(
                f"minting a Google token from secret {name!r} failed: {type(exc).__name__}"
            ) from None
        token = credentials.token
        if not isinstance(token, str) or not token:
            raise CloudCredentialError(f"the token endpoint gave no token for secret {name!r}")
        expiry = credentials.expiry
        expires_at = (
            expiry.replace(tzinfo=datetime.UTC).timestamp()
            if expiry is not None
            else self._clock() + 3600.0
        )
        secret = Secret(name, token)
        self._store.remember(secret)
        return secret, expires_at

    def _remember_private_key(self, name: str, pem: object) -> None:
        if not isinstance(pem, str):
            return
        for line in pem.splitlines():
            if len(line) >= 16 and not line.startswith("-----"):
                self._store.remember(Secret(name, line.strip()))

    def _http_pool(self) -> Any:
        if self._rules_error is not None:
            raise CloudCredentialError(self._rules_error)
        if self._http is None:
            import certifi

            self._http = vetted_pool(self._rules, self._ca_bundle or certifi.where())
        return self._http


def _google_credentials(info: dict[str, Any]) -> Any:
    """Built directly, not with `load_credentials_from_dict`: that also looks up the
    project id (a call to cloudresourcemanager.googleapis.com) for external accounts."""
    from google.auth import identity_pool
    from google.oauth2 import service_account

    scopes = list(_SCOPES)
    if info.get("type") == "service_account":
        make: Any = service_account.Credentials.from_service_account_info
    else:
        make = identity_pool.Credentials.from_info
    return make(info, scopes=scopes)


def _xml_text(root: Any, name: str) -> str | None:
    """The text of the first element named `name`, in any namespace."""
    for element in root.iter():
        if element.tag == name or element.tag.endswith("}" + name):
            return str(element.text or "").strip()
    return None


def _epoch(value: object) -> float:
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return value.timestamp()
    raise ValueError("Expiration is not a time")


def _first_words(exc: Exception) -> str:
    """google-auth's error text names the OAuth error ("invalid_grant: ..."); keep a
    short, key-scrubbed first line of it, never a response body."""
    first = exc.args[0] if exc.args else ""
    if not isinstance(first, str):
        return ""
    text = redact_known_keys(first.splitlines()[0] if first else "")[:120]
    return f" ({text})" if text else ""


def _log_failure(task: asyncio.Future[Any]) -> None:
    # Retrieve the exception (a background refresh has no awaiter); the requests that
    # wait for it report it in their decision lines. Anything unexpected is logged by
    # type only: its text may hold what a token endpoint answered.
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, CloudCredentialError):
        log.error("cloud credential fetch failed: %s", type(exc).__name__)
