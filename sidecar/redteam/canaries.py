"""Canary values shaped like the real credentials a compromised gateway would steal.

Shaped so that the sidecar's detectors treat them as real (a canary that no detector
would flag proves nothing), and marked with the run id so that whoever finds one in a
log, an alert or a provider's dashboard knows where it came from. None of them is a
working credential. Pure: no network.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
import string

MARK = "egress-redteam"
_ALNUM = string.ascii_letters + string.digits


def _random(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


@dataclasses.dataclass(frozen=True, slots=True)
class Canaries:
    run_id: str
    openai_key: str
    anthropic_key: str
    aws_access_key_id: str
    aws_secret_access_key: str
    github_token: str
    kube_token: str

    @classmethod
    def new(cls, run_id: str | None = None) -> Canaries:
        run = run_id or secrets.token_hex(4)
        return cls(
            run_id=run,
            openai_key="sk-proj-" + _random(_ALNUM, 48) + "T3BlbkFJ" + _random(_ALNUM, 20),
            anthropic_key="sk-ant-api03-" + _random(_ALNUM + "-_", 93) + "AA",
            aws_access_key_id="AKIA" + _random(string.ascii_uppercase + "234567", 16),
            aws_secret_access_key=_random(_ALNUM + "+/", 40),
            github_token="ghp_" + _random(_ALNUM, 36),
            kube_token=_jwt_shaped(run),
        )

    def harvest(self) -> bytes:
        """What the 2026 gateway compromise POSTed: environment, cloud and Kubernetes
        credentials, as JSON."""
        dump = {
            "marker": f"{MARK}-{self.run_id}",
            "env": {
                "OPENAI_API_KEY": self.openai_key,
                "ANTHROPIC_API_KEY": self.anthropic_key,
                "GITHUB_TOKEN": self.github_token,
            },
            "aws_credentials": (
                "[default]\n"
                f"aws_access_key_id = {self.aws_access_key_id}\n"
                f"aws_secret_access_key = {self.aws_secret_access_key}\n"
            ),
            "kubernetes_service_account_token": self.kube_token,
        }
        return json.dumps(dump).encode()

    def values(self) -> tuple[str, ...]:
        return (
            self.openai_key,
            self.anthropic_key,
            self.aws_access_key_id,
            self.aws_secret_access_key,
            self.github_token,
            self.kube_token,
        )


def _jwt_shaped(run_id: str) -> str:
    def part(obj: dict[str, object]) -> str:
        raw = json.dumps(obj, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = part({"alg": "RS256", "kid": MARK})
    claims = part({
        "iss": "kubernetes/serviceaccount",
        "sub": f"system:serviceaccount:{MARK}:{run_id}",
    })  # fmt: skip
    return f"{header}.{claims}.{_random(_ALNUM + '-_', 86)}"
