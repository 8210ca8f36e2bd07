"""A request body as the provider will read it, or a refusal to guess (issue 13).

The sidecar can only hold a provider to policy if it reads the request exactly as the
provider does. Where two readers could disagree, the body is refused as ambiguous,
never guessed:

- content encodings are undone with the response decoder's bounds
  (`sidecar.credentials.decoding`): unknown codings, more than 4 layers, corrupt or
  truncated layers and decompression bombs are refused;
- the JSON must be strict: UTF-8 without a BOM, no duplicate keys (parsers keep the
  first or the last), no lone surrogate escapes, no NaN/Infinity (nesting is bounded
  by the parser's recursion limit here, and to 128 levels by the readers);
- Gemini (protobuf JSON) accepts both `file_data` and `fileData`: an object naming one
  field in both spellings is refused.

Pure: no mitmproxy, no network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from sidecar.credentials.decoding import NotInspectable, decode_layers, parse_codings

__all__ = ["NOT_JSON_TYPES", "Ambiguous", "Uninspectable", "decode_body", "is_json", "parse_json"]

# Content types never read as JSON: file and audio uploads (multipart forms, raw bytes).
NOT_JSON_TYPES = ("multipart/", "application/octet-stream", "audio/", "image/", "video/")

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


class Uninspectable(ValueError):
    """The body cannot be read within bounds. The message is safe to log: it names
    sizes, codings and positions, never content."""


class Ambiguous(Uninspectable):
    """The body could be read more than one way."""


def decode_body(raw: bytes, content_encoding: Iterable[str], limit: int) -> bytes:
    """The body after its content codings, at most `limit` bytes."""
    if len(raw) > limit:
        raise Uninspectable(f"body of {len(raw)} bytes exceeds max_inspected_body ({limit})")
    try:
        return decode_layers(raw, parse_codings(content_encoding), limit=limit)
    except NotInspectable as exc:
        raise Uninspectable(f"request body: {exc}") from None


def is_json(content_type: str, body: bytes) -> bool:
    """Whether the provider may read this body as JSON: anything but an upload type
    whose first non-blank byte opens a JSON value (or whose type says JSON)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind.startswith(NOT_JSON_TYPES):
        return False
    if "json" in kind:
        return True
    head = body[:64].lstrip(b" \t\r\n\xef\xbb\xbf")
    return head[:1] in (b"{", b"[", b'"')


def parse_json(body: bytes, *, proto_names: bool = False) -> Any:
    """Strict JSON. `proto_names`: refuse objects naming a field in two spellings
    (`file_uri` and `fileUri`), as a protobuf JSON reader accepts both."""
    if body.startswith(b"\xef\xbb\xbf"):
        raise Ambiguous("body starts with a byte order mark")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Ambiguous(f"body is not valid UTF-8 (byte {exc.start})") from None
    hook = _proto_pairs if proto_names else _pairs
    try:
        document = json.loads(text, object_pairs_hook=hook, parse_constant=_no_constant)
    except Uninspectable:
        raise
    except RecursionError:
        raise Ambiguous("JSON nests too deeply") from None
    except json.JSONDecodeError as exc:
        raise Ambiguous(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
    except ValueError as exc:  # an integer past Python's digit limit
        raise Ambiguous(f"unreadable JSON value ({type(exc).__name__})") from None
    if _SURROGATE_ESCAPE.search(body):
        _check_surrogates(document)
    return document


def _no_constant(name: str) -> Any:
    raise Ambiguous(f"JSON constant {name} is not standard JSON")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise Ambiguous("duplicate key in a JSON object")
    return out


def _proto_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = _pairs(pairs)
    if len({proto_name(key) for key in out}) != len(out):
        raise Ambiguous("a JSON object names one field in two spellings (snake and camel case)")
    return out


def proto_name(key: str) -> str:
    """`fileUri` and `file_uri` -> `file_uri` (protobuf JSON accepts both)."""
    if key.islower() or not any(c.isupper() for c in key):
        return key
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key).lstrip("_")


def _check_surrogates(document: Any) -> None:
    """Only when the raw body had a surrogate escape: every string and key must encode
    (a lone surrogate is read as U+FFFD by some parsers, refused by others). Iterative:
    no recursion on attacker-chosen depth (the parser's own bound is the recursion
    limit; the readers bound nesting further)."""
    stack: list[Any] = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                _encodable(key)
                stack.append(item)
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            _encodable(value)


def _encodable(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Ambiguous("a JSON string holds a lone surrogate escape") from None
