"""The clouds, faked on loopback (issue 16): Bedrock runtime, STS, a Google token endpoint.

- `FakeBedrock`: TLS (test CA), the bedrock-runtime paths boto3 calls (invoke, converse
  and their streaming forms, in AWS event-stream framing). It checks every request's
  SigV4 signature against the credentials the test says the sidecar must use,
  recomputing it with botocore, and answers 403 like AWS when it does not match.
- `FakeSts`: AssumeRoleWithWebIdentity (the XML protocol), issuing fresh temporary
  credentials each call and recording the web identity tokens it was given.
- `FakeGoogleToken`: the OAuth token endpoint of a service-account key (JWT bearer
  grant, signature checked with the key's public half) and of workload identity
  federation (token exchange), issuing `ya29.` tokens it remembers.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import json
import secrets
import struct
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import trustme
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.fakes import BackgroundLoop, LoopbackServer, Received


@dataclasses.dataclass
class SignedRequest(Received):
    raw_path: str = ""  # the path exactly as sent (percent-encoding kept): SigV4 signs it


@dataclasses.dataclass
class AwsCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def document(self) -> str:
        """The secret file the sidecar reads (the export-credentials JSON shape)."""
        data = {"AccessKeyId": self.access_key_id, "SecretAccessKey": self.secret_access_key}
        if self.session_token:
            data["SessionToken"] = self.session_token
        return json.dumps(data, indent=2)  # several lines, as a file would be


def new_aws_credentials(session: bool = False) -> AwsCredentials:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    key_id = ("ASIA" if session else "AKIA") + "".join(secrets.choice(letters) for _ in range(16))
    token = base64.b64encode(secrets.token_bytes(180)).decode() if session else None
    return AwsCredentials(key_id, base64.b64encode(secrets.token_bytes(30)).decode(), token)


def expected_signature(request: SignedRequest, host: str, creds: AwsCredentials) -> str | None:
    """What the Authorization signature must be for these credentials (botocore), or None
    if the request is not SigV4-signed with this access key id and a sane scope."""
    auth = request.headers.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return None
    parts = auth[len("AWS4-HMAC-SHA256 ") :].split(",")
    fields = dict(part.strip().split("=", 1) for part in parts)
    key_id, date, region, service, terminator = fields["Credential"].split("/")
    if key_id != creds.access_key_id or terminator != "aws4_request":
        return None
    signed = fields["SignedHeaders"].split(";")
    if "host" not in signed or "x-amz-date" not in signed:
        return None
    headers = {name: request.headers.get(name, "") for name in signed}
    path = request.raw_path + (f"?{request.query}" if request.query else "")
    aws = AWSRequest(method=request.method, url=f"https://{host}{path}", headers=headers)
    aws.data = request.body
    aws.context["timestamp"] = request.headers["x-amz-date"]
    if not aws.context["timestamp"].startswith(date):
        return None
    signer = SigV4Auth(
        ReadOnlyCredentials(creds.access_key_id, creds.secret_access_key, creds.session_token),
        service,
        region,
    )
    canonical = signer.canonical_request(aws)
    return signer.signature(signer.string_to_sign(aws, canonical), aws)


def event_message(event_type: str, payload: dict[str, Any]) -> bytes:
    """One AWS event-stream message (prelude, headers, payload, CRCs)."""
    headers = b""
    for name, value in ((":event-type", event_type), (":content-type", "application/json"),
                        (":message-type", "event")):  # fmt: skip
        raw = value.encode()
        headers += bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(raw)) + raw
    body = json.dumps(payload).encode()
    total = 12 + len(headers) + len(body) + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    message = prelude + headers + body
    return message + struct.pack(">I", binascii.crc32(message))


class FakeBedrock(LoopbackServer):
    """bedrock-runtime on 127.0.0.1 (TLS), verifying SigV4 with `self.expect`."""

    client_max_size = 64 * 1024 * 1024

    def __init__(self, bg: BackgroundLoop, ca: trustme.CA, names: list[str]) -> None:
        super().__init__(bg, ca, names)
        # host name -> the credentials a request to it may be signed with (called per
        # request: STS issues new ones).
        self.expect: dict[str, Callable[[], list[AwsCredentials]]] = {}
        self.received: list[Received] = []
        self.verdicts: list[bool] = []  # per request: the signature matched

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = SignedRequest.of(request, body, raw_path=request.raw_path.split("?", 1)[0])
        self.received.append(seen)
        host = request.headers.get("host", "")
        expect = self.expect.get(host.split(":", 1)[0])
        signature = _signature(seen.headers.get("authorization", ""))
        ok = signature is not None and any(
            expected_signature(seen, host, creds) == signature
            and seen.headers.get("x-amz-security-token") == creds.session_token
            for creds in (expect() if expect is not None else [])
        )
        self.verdicts.append(ok)
        if not ok:
            mismatch = "The request signature we calculated does not match the signature."
            return web.json_response(
                {"message": mismatch},
                status=403,
                headers={"x-amzn-errortype": "InvalidSignatureException"},
            )
        tail = request.path.rsplit("/", 1)[-1]
        if tail == "invoke":
            return web.json_response({"completion": "signed by the sidecar", "echo": len(body)})
        if tail == "converse":
            return web.json_response(
                {
                    "output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}},
                    "stopReason": "end_turn",
                    "usage": {"inputTokens": 3, "outputTokens": 1, "totalTokens": 4},
                    "metrics": {"latencyMs": 1},
                }
            )
        if tail in ("invoke-with-response-stream", "converse-stream"):
            return await self._stream(request, tail)
        return web.json_response({"message": "unknown operation"}, status=404)

    async def _stream(self, request: web.Request, tail: str) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"content-type": "application/vnd.amazon.eventstream"}
        )
        await response.prepare(request)
        if tail == "invoke-with-response-stream":
            events = [
                ("chunk", {"bytes": base64.b64encode(json.dumps({"text": t}).encode()).decode()})
                for t in ("one", "two", "three")
            ]
        else:
            events = [
                ("messageStart", {"role": "assistant"}),
                ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "one "}}),
                ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "two"}}),
                ("contentBlockStop", {"contentBlockIndex": 0}),
                ("messageStop", {"stopReason": "end_turn"}),
                (
                    "metadata",
                    {
                        "usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5},
                        "metrics": {"latencyMs": 1},
                    },
                ),
            ]
        if "reflect" in request.path:
            # A hostile or buggy upstream echoing the secret that signed the request
            # (as a chunk's text), between two clean events.
            host = request.headers.get("host", "").split(":", 1)[0]
            secret = self.expect[host]()[-1].secret_access_key
            leak = {"contentBlockIndex": 0, "delta": {"text": f"key {secret}"}}
            events.insert(1, ("contentBlockDelta", leak))
        for event_type, payload in events:
            await response.write(event_message(event_type, payload))
        await response.write_eof()
        return response


def _signature(authorization: str) -> str | None:
    _, _, signature = authorization.partition("Signature=")
    return signature.strip() or None


class _PlainServer(LoopbackServer):
    """An HTTP server on 127.0.0.1 (the sidecar reaches these directly, not via itself)."""

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/{tail:.*}", self._handle)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        raise NotImplementedError


class FakeSts(_PlainServer):
    """AssumeRoleWithWebIdentity: new temporary credentials per call."""

    def __init__(self, bg: BackgroundLoop) -> None:
        super().__init__(bg)
        self.calls: list[dict[str, str]] = []
        self.issued: list[AwsCredentials] = []
        self.lifetime = 3600.0
        self.refuse = False

    async def _handle(self, request: web.Request) -> web.Response:
        form = {k: v[0] for k, v in parse_qs((await request.read()).decode()).items()}
        self.calls.append(form)
        if self.refuse or form.get("Action") != "AssumeRoleWithWebIdentity":
            return web.Response(
                status=400,
                content_type="text/xml",
                text="<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken"
                "</Code><Message>no</Message></Error><RequestId>1</RequestId></ErrorResponse>",
            )
        creds = new_aws_credentials(session=True)
        self.issued.append(creds)
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=self.lifetime)
        xml = f"""<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:llm:egress-sidecar</SubjectFromWebIdentityToken>
    <AssumedRoleUser>
      <Arn>{form.get("RoleArn", "")}/{form.get("RoleSessionName", "")}</Arn>
      <AssumedRoleId>AROAEXAMPLE:{form.get("RoleSessionName", "")}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>{creds.access_key_id}</AccessKeyId>
      <SecretAccessKey>{creds.secret_access_key}</SecretAccessKey>
      <SessionToken>{creds.session_token}</SessionToken>
      <Expiration>{expires.strftime("%Y-%m-%dT%H:%M:%SZ")}</Expiration>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"""
        return web.Response(text=xml, content_type="text/xml")


class FakeGoogleToken(_PlainServer):
    """Token endpoint for a service-account key (JWT bearer) and for workload identity
    federation (token exchange)."""

    def __init__(self, bg: BackgroundLoop) -> None:
        super().__init__(bg)
        self.public_keys: list[Any] = []  # service-account keys whose JWTs are accepted
        self.issued: list[str] = []
        self.subject_tokens: list[str] = []
        self.lifetime = 3600

    def service_account(self, email: str = "sidecar@proj.iam.gserviceaccount.com") -> str:
        """A new service-account key file (JSON text) whose token_uri is this endpoint."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_keys.append(key.public_key())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        info = {
            "type": "service_account",
            "project_id": "proj",
            "private_key_id": secrets.token_hex(20),
            "private_key": pem,
            "client_email": email,
            "client_id": "1234567890",
            "token_uri": f"{self.url}/token",
        }
        return json.dumps(info, indent=2)

    def external_account(self, token_file: str) -> str:
        info = {
            "type": "external_account",
            "audience": "//iam.googleapis.com/projects/1/locations/global/"
            "workloadIdentityPools/pool/providers/eks",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": f"{self.url}/v1/token",
            "credential_source": {"file": token_file},
        }
        return json.dumps(info, indent=2)

    async def _handle(self, request: web.Request) -> web.Response:
        form = {k: v[0] for k, v in parse_qs((await request.read()).decode()).items()}
        grant = form.get("grant_type", "")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            if not self._valid_assertion(form.get("assertion", "")):
                return web.json_response(
                    {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
                    status=400,
                )
        elif grant == "urn:ietf:params:oauth:grant-type:token-exchange":
            self.subject_tokens.append(form.get("subject_token", ""))
        else:
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        token = "ya29." + secrets.token_urlsafe(120)
        self.issued.append(token)
        return web.json_response(
            {
                "access_token": token,
                "expires_in": self.lifetime,
                "token_type": "Bearer",
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            }
        )

    def _valid_assertion(self, assertion: str) -> bool:
        try:
            head, claims, signature = assertion.split(".")
            signed = f"{head}.{claims}".encode()
            raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        except ValueError:
            return False
        for key in self.public_keys[-1:]:  # only the newest key: a rotated-out key fails
            try:
                key.verify(raw, signed, padding.PKCS1v15(), hashes.SHA256())
                return True
            except Exception:
                continue
        return False


def fake_endpoints(sts: str | None = None, *tokens: str) -> dict[str, str]:
    """The sidecar settings that let its STS / token calls reach these loopback fakes
    (otherwise: official endpoints only, at public addresses only)."""
    env = {
        "EGRESS_SIDECAR_CLOUD_TOKEN_ENDPOINTS": ",".join(tokens),
        "EGRESS_SIDECAR_CLOUD_ENDPOINT_ADDRESSES": "127.0.0.0/8",
    }
    if sts:
        env["EGRESS_SIDECAR_STS_ENDPOINT"] = sts
    return env
