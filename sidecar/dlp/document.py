"""A request body as DLP sees it: every JSON string (keys too), or the body as text.

`scan_body()` decodes the body's content codings (bounded, `credentials.decoding`),
parses it as JSON when it is JSON, runs the detectors over every string *after* JSON
unescaping (so `\\u0041KIA...` is `AKIA...`), and returns a `BodyScan`: findings that
name a kind, a confidence and a location (the JSON path of the field), never a value.
`BodyScan.redacted()` gives the body with chosen hits replaced by a marker; a JSON body
keeps its formatting, only the affected string tokens are rewritten.

Pure: no mitmproxy, no network.
"""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from sidecar.credentials.decoding import (
    DECODED_BODY_LIMIT,
    NotInspectable,
    decode_layers,
    needs_decoding,
)
from sidecar.dlp.detectors import GCP_TYPES, Detector, Hit
from sidecar.dlp.kinds import Confidence, SecretKind

__all__ = ["BodyScan", "DlpFinding", "HeadScan", "read_egress_document", "scan_body", "scan_head"]

# A JSON string token in raw JSON text. Outside strings, valid JSON has no '"', so the
# n-th match is the n-th string of the document (keys included), in document order.
_STRING_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_SAFE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,39}")
LOCATION_LIMIT = 200
BODY = "body"

# allowed(kind, value, location) -> True to drop a hit (the policy's allow patterns).
AllowCheck = Callable[[SecretKind, str, str], bool]


@dataclasses.dataclass(frozen=True, slots=True)
class DlpFinding:
    """One secret found in a request. Safe to log: a kind and a location, no value."""

    kind: SecretKind
    confidence: Confidence
    location: str  # "$.messages[0].content", "body", "$.input (base64)"

    def describe(self) -> str:
        return f"{self.kind.value} at {self.location}"


class _Number:
    """A JSON number, kept as written (never scanned, never re-rendered)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class _Object(list[tuple[str, Any]]):
    """A JSON object as its pairs, in order, duplicates kept (each value is scanned)."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_egress_document(body: bytes) -> Any | None:
    """Request DLP's own body parse, for the bodies request inspection did not parse
    (it left no document in `flow.metadata["egress_request_document"]`: not a provider
    API it reads, or a body it refused in audit mode) and for JSON inside strings:
    strict JSON (no NaN/Infinity, objects as ordered pairs with duplicates kept), or
    None when the body is not JSON (it is then scanned as text). In the encoding `text_encoding()`
    finds: UTF-8, or UTF-16/32 (which Python-based servers also accept). Bounded: the
    body is at most the provider's request body limit; nesting past Python's recursion
    limit is not JSON here (scanned as text)."""
    return _parse(body)[0]


def _parse(body: bytes) -> tuple[Any | None, str]:
    """(document, the encoding it was read in): JSON's own detection first (UTF-16/32
    by their NUL bytes, which are valid UTF-8 too), then UTF-8."""
    for encoding in dict.fromkeys((json.detect_encoding(body), "utf-8")):
        try:
            text = body.decode(encoding)
        except UnicodeDecodeError:
            continue
        if text.lstrip()[:1] not in ("{", "["):
            continue
        try:
            return json.loads(
                text,
                object_pairs_hook=_Object,
                parse_float=_Number,
                parse_int=_Number,
                parse_constant=_no_constant,
            ), encoding
        except (ValueError, RecursionError):
            continue
    return None, "utf-8"


def text_encoding(body: bytes) -> str | None:
    """UTF-8 if the body is valid UTF-8; else the UTF-16/32 form JSON's own detection
    sees (NUL bytes, a BOM), if the body decodes strictly in it; else None."""
    for encoding in ("utf-8", json.detect_encoding(body)):
        try:
            body.decode(encoding)
        except UnicodeDecodeError:
            continue
        return encoding
    return None


@dataclasses.dataclass(slots=True)
class _StringHits:
    index: (
        int  # n-th string of the document (keys included); -1: a text body, -2: its UTF-16/32 view
    )
    text: str
    hits: list[Hit]


@dataclasses.dataclass(slots=True)
class BodyScan:
    findings: tuple[DlpFinding, ...]
    body: bytes  # the body as scanned (content codings undone)
    decoded: bool  # content codings were undone: a rewritten body goes out decoded
    parsed: bool  # this scan parsed the body (no caller's document served, or none could)
    _strings: list[_StringHits] = dataclasses.field(default_factory=list)
    _json: bool = False
    _encoding: str = "utf-8"

    @property
    def kinds(self) -> frozenset[SecretKind]:
        return frozenset(f.kind for f in self.findings)

    def redacted(self, kinds: frozenset[SecretKind]) -> bytes | None:
        """The body with every hit of `kinds` replaced by `[REDACTED:<kind>]`; None
        when that cannot be done exactly (the caller then refuses instead)."""
        chosen = {
            s.index: (s.text, [h for h in s.hits if h.kind in kinds])
            for s in self._strings
            if any(h.kind in kinds for h in s.hits)
        }
        if not chosen:
            return self.body
        if not self._json:
            if -2 in chosen:
                return None
            text, hits = chosen[-1]
            return _redact_text(text, hits).encode(self._encoding, "surrogateescape")
        raw = self.body.decode(self._encoding)
        tokens = list(_STRING_TOKEN.finditer(raw))
        if max(chosen) >= len(tokens):
            return None  # the tokens do not line up with the parsed strings
        out: list[str] = []
        pos = 0
        for index in sorted(chosen):
            token = tokens[index]
            text, hits = chosen[index]
            if json.loads(token.group()) != text:
                return None
            out.append(raw[pos : token.start()])
            out.append(json.dumps(_redact_text(text, hits), ensure_ascii=False))
            pos = token.end()
        out.append(raw[pos:])
        return "".join(out).encode(self._encoding)


def marker(kind: SecretKind) -> str:
    return f"[REDACTED:{kind.value}]"


# Markers name the most telling kind: where an env dump's value is also an AWS key,
# the marker says aws_secret_access_key.
_GENERIC = frozenset({SecretKind.ENV_DUMP, SecretKind.SECRET_ASSIGNMENT})


def _redact_text(text: str, hits: list[Hit]) -> str:
    spans = sorted((h.start, h.kind in _GENERIC, -h.end, h.kind) for h in hits)
    out: list[str] = []
    pos = 0
    for start, _, negative_end, kind in spans:
        end = -negative_end
        if end <= pos:
            continue  # inside a span already replaced
        out.append(text[pos : max(pos, start)])
        out.append(marker(kind))
        pos = end
    out.append(text[pos:])
    return "".join(out)


def scan_body(
    body: bytes,
    detector: Detector,
    *,
    content_encoding: list[str] | None = None,
    transfer_encoding: list[str] | None = None,
    document: Any = None,
    allowed: AllowCheck | None = None,
    decode_limit: int | None = None,
) -> BodyScan:
    """Scan a request body. `content_encoding`, `transfer_encoding`: the codings of the
    body as received (HTTP/1.1 transfer codings other than chunked, like `gzip,
    chunked`, are undone too: the provider would). `document`: the JSON the caller
    parsed already from the body after its content codings (request inspection's,
    strict UTF-8), so the body is not parsed twice."""
    codings, transfer = content_encoding or [], transfer_encoding or []
    decoded = False
    if needs_decoding(codings, transfer):
        try:
            body = decode_layers(body, codings, transfer, decode_limit or DECODED_BODY_LIMIT)
            decoded = True
        except NotInspectable:
            finding = DlpFinding(SecretKind.UNSCANNABLE_BODY, Confidence.HIGH, BODY)
            return BodyScan((finding,), body, False, parsed=False)
        if needs_decoding([], transfer):
            document = None  # the caller's document was parsed from other bytes
    encoding = "utf-8"
    parsed = document is None
    if parsed:
        document, encoding = _parse(body)
    strings: list[_StringHits] = []
    findings: dict[DlpFinding, None] = {}

    def keep(index: int, text: str, location: str, hits: list[Hit]) -> None:
        if allowed is not None:
            hits = [h for h in hits if not allowed(h.kind, text[h.start : h.end], location)]
        if not hits:
            return
        strings.append(_StringHits(index, text, hits))
        for hit in hits:
            where = f"{location} ({hit.encoding})" if hit.encoding else location
            findings[DlpFinding(hit.kind, hit.confidence, where)] = None

    if document is None:
        encoding = text_encoding(body) or "utf-8"
        text = body.decode(encoding, "surrogateescape")
        keep(-1, text, BODY, detector.scan(text))
        # Bytes that read as UTF-8 (or as bytes) to one reader and as UTF-16/32 to
        # another: both views are scanned. Hits of the second cannot be redacted in
        # place (the request is refused instead).
        other = "utf-8" if encoding != "utf-8" else json.detect_encoding(body)
        if other != encoding:
            view = body.decode(other, "replace")
            keep(-2, view, f"{BODY} (as {other})", detector.scan(view))
        return BodyScan(tuple(findings), body, decoded, parsed, strings, False, encoding)
    quiet = detector.quiet(list(_every_string(document)))
    for index, text, location, key, gcp in _strings_of(document, detector, quiet):
        if not quiet:
            hits = detector.scan(text, key, gcp_object=gcp)
        elif key is not None:
            hits = detector.scan_named(text, key, gcp_object=gcp)
        else:
            hits = []
        keep(index, text, location, hits + _nested_json(text, detector, hits))
    return BodyScan(tuple(findings), body, decoded, parsed, strings, True, encoding)


def _every_string(document: Any) -> Iterator[str]:
    """Every object key and string value of the document (what `_strings_of` yields,
    without paths): for one `Detector.quiet` pass."""
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            yield node
        elif isinstance(node, _Object | dict):
            for name, value in node.items() if isinstance(node, dict) else node:
                yield name
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)


def _nested_json(text: str, detector: Detector, hits: list[Hit]) -> list[Hit]:
    """A string that is itself JSON (tool-call arguments, a pasted credentials file):
    its strings are scanned after *their* unescaping too, one level deep, so a
    `\\u0067hp_...` escaped twice is seen. A hit covers the whole outer string."""
    stripped = text.strip()
    if len(stripped) < 2 or stripped[0] + stripped[-1] not in ("{}", "[]"):
        return []
    nested = read_egress_document(text.encode("utf-8", "surrogatepass"))
    if nested is None:
        return []
    seen = {h.kind for h in hits}
    found: list[Hit] = []
    for _, inner, _, key, gcp in _strings_of(nested, detector):
        for hit in detector.scan(inner, key, gcp_object=gcp, depth=1):
            if hit.kind not in seen:
                seen.add(hit.kind)
                found.append(Hit(hit.kind, hit.confidence, 0, len(text), "json in a string"))
    return found


def _strings_of(
    document: Any, detector: Detector, quiet: bool = False
) -> Iterator[tuple[int, str, str, Any, bool]]:
    """(index, string, JSON path, object key or None, in a GCP credential object) for
    every string of the document, keys included, in document order. Iterative: depth is
    whatever the parser accepted. `quiet`: no key holds a secret (`Detector.quiet`)."""
    index = 0
    stack: list[tuple[Any, str, str | None, bool]] = [(document, "$", None, False)]
    while stack:
        node, path, key, gcp = stack.pop()
        if isinstance(node, str):
            yield index, node, path, key, gcp
            index += 1
        elif isinstance(node, _Object | dict):
            pairs = list(node.items()) if isinstance(node, dict) else list(node)
            is_gcp = any(k == "type" and v in GCP_TYPES for k, v in pairs if isinstance(v, str))
            children: list[tuple[Any, str, str | None, bool]] = []
            for name, value in pairs:
                label = _key_label(name, None if quiet else detector)
                children.append((_KeyString(name), f"{path}{label} (key)", None, False))
                children.append((value, _truncate(path + label), name, is_gcp))
            stack.extend(reversed(children))
        elif isinstance(node, list):
            stack.extend(
                (item, _truncate(f"{path}[{i}]"), None, False)
                for i, item in reversed(list(enumerate(node)))
            )
        elif isinstance(node, _KeyString):
            yield index, node.text, path, None, False
            index += 1


class _KeyString:
    """An object key on the walk stack (scanned like any string, reported as a key)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _key_label(name: str, detector: Detector | None) -> str:
    """`.name` when the key is a short identifier with nothing secret in it; else `[?]`:
    a key is gateway-chosen text and could itself be the secret. `detector` None: the
    key is known to hold none."""
    if _SAFE_KEY.fullmatch(name) and (detector is None or not detector.scan(name)):
        return f".{name}"
    return "[?]"


def _truncate(path: str) -> str:
    return path if len(path) <= LOCATION_LIMIT else path[: LOCATION_LIMIT - 3] + "..."


@dataclasses.dataclass(slots=True)
class HeadScan:
    """Secrets in the request line and headers (a harvest can ride there as well)."""

    findings: tuple[DlpFinding, ...]
    url_kinds: frozenset[SecretKind]  # kinds found in the URL: not redactable, refused instead
    _headers: list[tuple[int, bool, str, list[Hit]]]  # (field index, in name?, text, hits)

    def header_rewrites(self, kinds: frozenset[SecretKind]) -> dict[int, str | None]:
        """Field index -> its value with `kinds` redacted, or None to drop the header
        (a secret in a header *name*: a name cannot carry the marker)."""
        out: dict[int, str | None] = {}
        for index, in_name, text, hits in self._headers:
            chosen = [h for h in hits if h.kind in kinds]
            if not chosen:
                continue
            if in_name:
                out[index] = None
            elif out.get(index, "") is not None:
                out[index] = _redact_text(text, chosen)
        return out


def scan_head(
    path: str,
    headers: list[tuple[str, str]],
    detector: Detector,
    *,
    skip_header: Callable[[str], bool] = lambda name: False,
    skip_param: Callable[[str], bool] = lambda name: False,
    allowed: AllowCheck | None = None,
) -> HeadScan:
    """Scan the path and query (percent-decoded) and every header name and value, but
    the headers and query parameters that carry credentials to the provider: those are
    the credential layer's (S7: stripped, replaced, or the gateway's own authentication
    to a provider without an injected key, like SigV4 or an OAuth token)."""
    findings: dict[DlpFinding, None] = {}
    url_kinds: set[SecretKind] = set()
    scanned: list[tuple[int, bool, str, list[Hit]]] = []

    def keep(text: str, location: str, hits: list[Hit]) -> list[Hit]:
        if allowed is not None:
            hits = [h for h in hits if not allowed(h.kind, text[h.start : h.end], location)]
        for hit in hits:
            where = f"{location} ({hit.encoding})" if hit.encoding else location
            findings[DlpFinding(hit.kind, hit.confidence, where)] = None
        return hits

    parts = urllib.parse.urlsplit(path)
    params = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    url = "\n".join(
        [urllib.parse.unquote(parts.path)] + [f"{k}={v}" for k, v in params if not skip_param(k)]
    )
    scanned_fields = [field for field in headers if not skip_header(field[0])]
    if detector.quiet([url, *(text for field in scanned_fields for text in field)]):
        return HeadScan((), frozenset(), [])  # the common case: nothing to look at twice
    for hit in keep(url, "url", detector.scan(url)):
        url_kinds.add(hit.kind)
    for index, (name, value) in enumerate(headers):
        if skip_header(name):
            continue
        name_hits = keep(name, "header [?]", detector.scan(name))
        label = (
            "header [?]" if name_hits or not _SAFE_KEY.fullmatch(name) else f"header {name.lower()}"
        )
        if name_hits:
            scanned.append((index, True, name, name_hits))
        value_hits = keep(value, label, detector.scan(value))
        if value_hits:
            scanned.append((index, False, value, value_hits))
    return HeadScan(tuple(findings), frozenset(url_kinds), scanned)
