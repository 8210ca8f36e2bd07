"""Provider keys for the key-injection tests, mounted the way Kubernetes mounts a Secret."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

KEYS = {
    "openai": "sk-proj-" + "A1b2C3d4" * 6,
    "anthropic": "sk-ant-api03-" + "Zy9Xw8Vu" * 6,
    "gemini": "AIzaSy" + "Q1w2E3r4T5y6U7i8O9p0A1s2D3f4G5h6J7k",
    "azure": "0123456789abcdef0123456789abcdef",
}
# A real-looking key the gateway should never hold (not one of ours).
LEAKED_GATEWAY_KEY = "sk-proj-" + "LeAkEd00" * 6


class SecretMount:
    """/var/run/secrets/... as the kubelet writes it: files -> ..data/ -> ..<timestamp>/."""

    def __init__(self, root: Path, values: dict[str, str]) -> None:
        self.root = root
        root.mkdir()
        self.generation = 0
        self.swap(values)
        for name in values:
            (root / name).symlink_to(f"..data/{name}")

    def swap(self, values: dict[str, str]) -> None:
        self.generation += 1
        target = self.root / f"..2026_11_22_{self.generation:04d}"
        target.mkdir()
        for name, value in values.items():
            (target / name).write_text(value + "\n")
        staging = self.root / "..data_tmp"
        staging.symlink_to(target.name)
        os.replace(staging, self.root / "..data")


def key_policy(port: int) -> str:
    def provider(name: str, hosts: str, header: str, fmt: str) -> str:
        return (
            f"  {name}:\n    hosts: [{hosts}]\n    ports: [{port}]\n"
            f"    addresses: [127.0.0.0/8]\n"
            f'    credential: {{header: {header}, format: "{fmt}", secret: {name}}}\n'
        )

    return (
        "version: 1\nproviders:\n"
        + provider(
            "openai", "api.openai.com, rebind.openai.com", "authorization", "Bearer {secret}"
        )
        + provider("anthropic", "api.anthropic.com", "x-api-key", "{secret}")
        + provider("gemini", "generativelanguage.googleapis.com", "x-goog-api-key", "{secret}")
        + provider("azure", "myres.openai.azure.com", "api-key", "{secret}")
        + provider("mistral", "api.mistral.ai", "authorization", "Bearer {secret}")
        + f"allow:\n  - host: unlisted.example.com\n    ports: [{port}]\n"
        "    addresses: [127.0.0.0/8]\n"
    )


def assert_not_in_outputs(sidecar: Any, values: dict[str, str]) -> None:
    """No value (nor its base64 form) in anything the sidecar wrote: its stdout (decision
    lines, events), stderr (logs, tracebacks) and metrics. `values`: label -> value."""
    outputs = {
        "stdout": "".join(sidecar.stdout_lines),
        "stderr": "".join(sidecar.stderr_lines),
        "metrics": sidecar.metrics(),
    }
    for name, value in values.items():
        forms = {value, base64.b64encode(value.encode()).decode()}
        for where, text in outputs.items():
            for form in forms:
                assert form not in text, f"{name} found in {where}"
