"""Where cloud credentials come from, cached and refreshed before they expire (issue 16).

- `aws_sigv4` + `secret`: a JSON access key in the secrets directory, re-read through
  the `SecretStore` (so a rotated Secret is in use within a second).
- `aws_sigv4` + `web_identity` (EKS IRSA): the projected token file is exchanged at STS
  (AssumeRoleWithWebIdentity, unsigned: the token is the credential) for temporary
  credentials, refreshed five minutes before they expire. The sidecar talks to STS
  directly, never through its own proxy: STS is not, and must not be, in the
  gateway's allowlist. `AWS_ENDPOINT_URL_STS` (the SDKs' standard variable) overrides
  the endpoint, `AWS_REGION` picks the regional one.
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
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar.credentials.cloud_signing import AwsKeys, CloudCredentialError, parse_aws_keys
from sidecar.credentials.detect import redact_known_keys
from sidecar.credentials.secrets import Secret, SecretStore
from sidecar.policy.cloud_credentials import AwsWebIdentity, CloudCredential

__all__ = ["CloudCredentialSource"]

log = logging.getLogger("sidecar.credentials")

REFRESH_MARGIN = 300.0  # refresh this long before expiry
MIN_VALID = 30.0  # below this, wait for a fresh credential rather than use the old one
FAILURE_BACKOFF = 1.0
_MAX_TOKEN_FILE = 64 * 1024
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
        self._sts: Any = None
        self._http: Any = None

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
        from botocore.exceptions import BotoCoreError, ClientError

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
        try:
            answer = self._sts_client().assume_role_with_web_identity(
                RoleArn=identity.role_arn,
                RoleSessionName=identity.session_name,
                WebIdentityToken=token,
            )
            found = answer["Credentials"]
            label = "aws-web-identity"
            keys = AwsKeys(
                str(found["AccessKeyId"]),
                Secret(label, str(found["SecretAccessKey"])),
                Secret(label, str(found["SessionToken"])),
                expires_at=_epoch(found["Expiration"]),
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise CloudCredentialError(
                f"STS AssumeRoleWithWebIdentity for {identity.role_arn} refused: {code}"
            ) from None
        except (BotoCoreError, KeyError, TypeError, ValueError) as exc:
            raise CloudCredentialError(
                f"STS AssumeRoleWithWebIdentity for {identity.role_arn} failed: "
                f"{type(exc).__name__}"
            ) from None
        for secret in keys.secrets():
            self._store.remember(secret)
        assert keys.expires_at is not None
        return keys, keys.expires_at

    def _sts_client(self) -> Any:
        if self._sts is None:
            import botocore.session
            from botocore import UNSIGNED
            from botocore.config import Config

            session = botocore.session.get_session()
            region = self._environ.get("AWS_REGION") or self._environ.get(
                "AWS_DEFAULT_REGION", "us-east-1"
            )
            self._sts = session.create_client(
                "sts",
                region_name=region,
                endpoint_url=self._environ.get("AWS_ENDPOINT_URL_STS") or None,
                verify=self._ca_bundle,
                # The web identity token is the credential: nothing to sign with, and
                # no lookup of other credentials (environment, instance metadata).
                config=Config(
                    signature_version=UNSIGNED,
                    connect_timeout=5,
                    read_timeout=10,
                    retries={"max_attempts": 2, "mode": "standard"},
                ),
            )
        return self._sts

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
        if self._http is None:
            import certifi
            import urllib3

            self._http = urllib3.PoolManager(
                cert_reqs="CERT_REQUIRED",
                ca_certs=self._ca_bundle or certifi.where(),
                timeout=urllib3.Timeout(connect=5.0, read=10.0),
                retries=urllib3.Retry(total=2, redirect=0),
            )
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


def _epoch(value: object) -> float:
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
