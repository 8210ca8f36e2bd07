"""Credential core (S7, S8): secret sources, key injection, virtual keys, reflection guard.

Pure: no mitmproxy import, no network. The mitmproxy adapter calls, per request,
`prepare_request()` (inject.py) and, per response, `ReflectionGuard` (reflection.py).
See docs/credentials.md.
"""

from sidecar.credentials.detect import CredentialFinding
from sidecar.credentials.inject import (
    CredentialResult,
    HeaderList,
    MultiMap,
    Outcome,
    prepare_request,
)
from sidecar.credentials.reflection import (
    REDACTED,
    RedactionPatterns,
    ReflectionGuard,
    StreamRedactor,
    compile_patterns,
)
from sidecar.credentials.secret_store import Secret, SecretError, SecretStore
from sidecar.credentials.virtual_keys import (
    Tenant,
    VirtualKeyError,
    VirtualKeys,
    VirtualKeySource,
    generate_virtual_key,
    hash_virtual_key,
    load_virtual_keys,
)

__all__ = [
    "REDACTED",
    "CredentialFinding",
    "CredentialResult",
    "HeaderList",
    "MultiMap",
    "Outcome",
    "RedactionPatterns",
    "ReflectionGuard",
    "Secret",
    "SecretError",
    "SecretStore",
    "StreamRedactor",
    "Tenant",
    "VirtualKeyError",
    "VirtualKeySource",
    "VirtualKeys",
    "compile_patterns",
    "generate_virtual_key",
    "hash_virtual_key",
    "load_virtual_keys",
    "prepare_request",
]
