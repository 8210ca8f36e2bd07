"""Secret detectors for one string of a request body (issue 13, request DLP). Pure.

`Detector.scan(text, key=...)` returns `Hit`s: a kind, a confidence and the span of the
secret in `text`. Spans never leave the core (the addon sees `DlpFinding`s, which hold a
location and no value); they exist so that a hit can be checked against the policy's
allow patterns and redacted.

Key shapes are not repeated here: the provider, GitHub and AWS key-id families are
`sidecar.credentials.detect.FAMILIES` (with their trigger literals), JWTs are its `JWT`
pattern, and the sidecar's own keys are the reflection guard's needles
(`sidecar.credentials.reflection.compile_patterns`: raw and base64 at every alignment),
given hex forms here. `_EXTRA` holds only the shapes nothing else needs.

Cost (issue 10: bounded work per byte). Every regex runs only when a literal it needs
is in the text (a C substring search), and each is linear: no nested quantifiers, no
alternation whose branches can match the same text, quantified runs followed by a
class they cannot contain. The Python work is per match (each match consumes the bytes
it covers) and per line for the assignment scanner. A long base64 run is decoded and
scanned once more (never deeper) only when it decodes to text.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import dataclasses
import itertools
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

import ahocorasick_rs

from sidecar.credentials.detect import FAMILIES, JWT, TRIGGERS, looks_random
from sidecar.credentials.reflection import RedactionPatterns, compile_patterns
from sidecar.credentials.secret_store import Secret
from sidecar.dlp.kinds import Confidence, SecretKind

__all__ = ["Detector", "Hit", "own_key_patterns"]

HIGH, LOW = Confidence.HIGH, Confidence.LOW


@dataclasses.dataclass(frozen=True, slots=True)
class Hit:
    """A secret in one string: `text[start:end]`. Internal to the core: never logged."""

    kind: SecretKind
    confidence: Confidence
    start: int
    end: int
    encoding: str = ""  # "" (as written), "base64", "percent-encoded"


_B = r"(?<![A-Za-z0-9_-])"

# credentials.detect family name -> DLP kind (every other family is a provider key).
_FAMILY_KINDS = {
    "github_token": SecretKind.GITHUB_TOKEN,
    "aws_access_key_id": SecretKind.AWS_ACCESS_KEY_ID,
}

# Shapes only DLP needs: (kind, confidence, trigger literals, regex).
_EXTRA: tuple[tuple[SecretKind, Confidence, tuple[str, ...], str], ...] = (
    (SecretKind.GITHUB_TOKEN, HIGH, ("github_pat_",), _B + r"github_pat_[A-Za-z0-9_]{40,}"),
    (
        SecretKind.GITLAB_TOKEN,
        HIGH,
        ("glpat-", "gldt-", "glrt-", "glptt-", "glcbt-", "gloas-", "glsoat-", "glft-", "glimt-"),
        _B + r"gl(?:pat|dt|rt|ptt|cbt|oas|soat|ft|imt)-[A-Za-z0-9_-]{20,}",
    ),
    (
        SecretKind.SLACK_TOKEN,
        HIGH,
        ("xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-", "xoxe", "xapp-"),
        _B + r"(?:xox[abeprs](?:\.xox[a-z])?-[A-Za-z0-9-]{10,}|xapp-[0-9]-[A-Za-z0-9-]{10,})",
    ),
    (
        SecretKind.SLACK_WEBHOOK,
        HIGH,
        ("hooks.slack.com/",),
        r"hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/-]{20,}",
    ),
    (SecretKind.STRIPE_KEY, HIGH, ("sk_live_", "rk_live_"), _B + r"[sr]k_live_[A-Za-z0-9]{20,}"),
    (SecretKind.STRIPE_KEY, LOW, ("sk_test_", "rk_test_"), _B + r"[sr]k_test_[A-Za-z0-9]{20,}"),
    (SecretKind.GOOGLE_OAUTH_TOKEN, HIGH, ("ya29.",), _B + r"ya29\.[A-Za-z0-9_-]{30,}"),
    (SecretKind.GOOGLE_OAUTH_TOKEN, HIGH, ("1//0",), r"(?<![A-Za-z0-9/])1//0[A-Za-z0-9_-]{30,}"),
)

# (kind, confidence, triggers, compiled): the shared families first, then ours.
_PREFIXED: tuple[tuple[SecretKind, Confidence, tuple[str, ...], re.Pattern[str]], ...] = tuple(
    (_FAMILY_KINDS.get(f.name, SecretKind.PROVIDER_API_KEY), HIGH, TRIGGERS[f.name], f.pattern)
    for f in FAMILIES
) + tuple((kind, conf, trig, re.compile(rx)) for kind, conf, trig, rx in _EXTRA)

# Well-known documentation values (AWS's own examples): never a live secret.
_DOC_EXAMPLES = frozenset(
    {
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "ASIAIOSFODNN7EXAMPLE",
    }
)

# PEM private keys. A base64 line of 40+ characters must follow BEGIN (a code sample's
# "-----BEGIN PRIVATE KEY-----\n...\n" is not a key). Escaped newlines ("\n" as two
# characters: a key pasted inside JSON text) separate lines too.
_PEM_BEGIN = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ ){0,3})PRIVATE KEY(?: BLOCK)?-----")
_PEM_LINE = re.compile(r"[A-Za-z0-9+/]{40,}")  # one line of a key's base64 body
_PEM_BODY = re.compile(r"[A-Za-z0-9+/=\s\\]*")  # base64 lines, newlines, escaped "\n"
_PEM_END = re.compile(r"-----END [A-Z0-9 ]{0,40}-----")
PEM_SPAN_LIMIT = 64 * 1024
_PUTTY = re.compile(r"PuTTY-User-Key-File-[0-9]+:[^\n]*")
_PUTTY_END = re.compile(r"Private-MAC:[ \t]*[0-9a-fA-F]*")

# GCP credential JSON written as text (pasted into a prompt): the secret fields' values.
_GCP_TYPE = re.compile(
    r'"type"[ \t]*:[ \t]*"(?:service_account|authorized_user|external_account|'
    r'impersonated_service_account)"'
)
_GCP_FIELD = re.compile(
    r'"(?:private_key_id|private_key|client_secret|refresh_token)"[ \t]*:[ \t]*"'
    r'((?:[^"\\\n]|\\.){8,})"'
)
GCP_TYPES = frozenset(
    {"service_account", "authorized_user", "external_account", "impersonated_service_account"}
)
GCP_SECRET_FIELDS = frozenset({"private_key_id", "private_key", "client_secret", "refresh_token"})

# AWS secrets named inline (`"SecretAccessKey": "..."`, `aws_secret_access_key=...`).
_AWS_SECRET_NAMED = re.compile(
    r"(?i)(?:aws_?)?secret_?access_?key[\"']?[ \t]*[:=][ \t]*[\"']?([A-Za-z0-9/+]{40})"
    r"(?![A-Za-z0-9/+=])"
)
_AWS_SESSION_NAMED = re.compile(
    r"(?i)(?:aws_?)?session_?token[\"']?[ \t]*[:=][ \t]*[\"']?([A-Za-z0-9/+=]{100,})"
)
_AWS_SECRET_SHAPE = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
AWS_PAIR_WINDOW = 256  # a secret key within this many characters after a key id

# Kubeconfig credential fields (YAML or JSON form).
_KUBE_FIELD = re.compile(
    r"(?m)^[ \t-]*[\"']?(?:client-key-data|token|password|id-token|refresh-token|"
    r"client-secret)[\"']?[ \t]*:[ \t]*[\"']?([^\s\"',]{8,})"
)

# KEY=value / key: value lines (env dumps, ~/.aws/credentials, .env files, YAML).
_ASSIGN = re.compile(
    r"(?m)^[ \t]*(?:export[ \t]+)?[\"']?([A-Za-z_][A-Za-z0-9_.-]{0,127})[\"']?[ \t]*[=:][ \t]*"
    r"([^\n]*)"
)
# A name is secret-looking when one of its words (split at _ . - and camelCase) is one
# of these, and its last word does not say it is about something else (`token_count`,
# `private_key_id`, `session_ttl`).
_SECRET_WORDS = frozenset(
    {
        "key", "apikey", "secret", "token", "password", "passwd", "pwd", "pass",
        "passphrase", "credential", "credentials", "auth", "dsn", "cookie", "session",
        "salt", "private", "privatekey", "secretkey", "accesskey", "clientsecret",
    }
)  # fmt: skip
_QUALIFIERS = frozenset(
    {
        "id", "ids", "file", "path", "name", "type", "count", "ttl", "url", "uri", "host",
        "endpoint", "expiry", "expires", "length", "len", "size", "region", "limit",
        "header", "prefix", "format", "version", "algorithm", "alg", "enabled", "mode",
        "dir", "timeout", "usage", "tokens", "index", "field", "env", "var", "public",
    }
)  # fmt: skip
_SECRET_WORD = re.compile(
    "key|secret|token|pass|pwd|credential|auth|dsn|cookie|session|salt|private"
)
_WORD_SPLIT = re.compile(r"[_.\-]+|(?<=[a-z0-9])(?=[A-Z])")
_URL_PASSWORD = re.compile(r"://[^:/\s@]+:[^@/\s]+@")
_PLACEHOLDER = re.compile(
    r"(?i)^(?:<.*>|\$.*|%\(.*|\{\{.*|x+|\*+|\.+|-+|your[_-].*|change[_-]?me|example|"
    r"placeholder|none|null|nil|true|false|dummy|redacted|\[redacted.*|todo|fixme|"
    r"test|secret|password|string|str|bytes|int)$"
)
_CODE_MARKS = ("(", "[", "{", "os.environ", "process.env", "getenv", " ")
ENV_DUMP_LINES = 4  # assignment lines in one string ...
ENV_DUMP_SECRETS = 2  # ... of which this many secret-named with real values

# Base64 runs worth decoding (a credentials file or key encoded once).
_B64_RUN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{64,}={0,2}")
_NON_PRINTABLE = bytes(b for b in range(256) if not (32 <= b < 127 or b in (9, 10, 13)))
B64_SAMPLE = 512  # decoded bytes checked for text before decoding a whole run


# Every literal a detector starts from, found (with positions) in one Aho-Corasick
# pass; the family regexes then run only where their trigger is, anchored there.
_LITERALS: tuple[str, ...] = tuple(
    sorted(
        {t for _, _, triggers, _ in _PREFIXED for t in triggers}
        | {"eyJ", "PRIVATE KEY", "PuTTY-User-Key-File-", '"type"', "clusters", "%"}
    )
)
_LITERAL_SEARCH = ahocorasick_rs.AhoCorasick(list(_LITERALS))
# Words that open the named-secret detectors, searched in the lower-cased text.
_SECRET_WORD_GATES = (
    "key", "secret", "token", "pass", "pwd", "credential", "auth", "dsn", "cookie",
    "session", "salt", "private", "://",
)  # fmt: skip
_WORD_SEARCH = ahocorasick_rs.AhoCorasick(list(_SECRET_WORD_GATES))
# Invisible format characters a key can be salted with: zero-width space/joiners,
# direction marks, word joiner, BOM, soft hyphen, invisible operators, tag characters.
_INVISIBLE = re.compile(
    "[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff\U000e0000-\U000e007f]"
)
_SURROGATE = re.compile("[\ud800-\udfff]")
# Base64 runs: bytes mapped to "a" (base64 character) or " ", then one substring search.
_B64_CLASSES = bytes(
    97 if chr(i).isascii() and (chr(i).isalnum() or chr(i) in "+/_-") else 32 for i in range(256)
)
_B64_GATE = b"a" * 64


def own_key_patterns(secrets: Iterable[Secret | bytes | str]) -> RedactionPatterns:
    """The reflection guard's needles for the sidecar's keys, plus their hex forms."""
    values: list[Secret | bytes | str] = []
    for secret in secrets:
        raw = secret.reveal_bytes() if isinstance(secret, Secret) else secret
        raw = raw.encode() if isinstance(raw, str) else raw
        if raw:
            values += [secret, raw.hex().encode(), raw.hex().upper().encode()]
    return compile_patterns(values)


def is_secret_name(name: str) -> bool:
    if _SECRET_WORD.search(name.lower()) is None:
        return False  # the common case, without splitting the name into words
    words = [w for w in _WORD_SPLIT.split(name[:128]) if w]
    lower = [w.lower() for w in words]
    if not lower or lower[-1] in _QUALIFIERS or "public" in lower:
        return False
    return any(w in _SECRET_WORDS for w in lower)


def real_value(value: str) -> str | None:
    """The value of an assignment without quotes, or None for placeholders and code."""
    value = value.strip().rstrip(",;").strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'`":
        value = value[1:-1]
    if not 8 <= len(value) <= 4096 or _PLACEHOLDER.match(value):
        return None
    if any(mark in value for mark in _CODE_MARKS) or value.isdigit():
        return None
    return value


class Detector:
    """Scans strings. One per set of own-key patterns (rebuilt when the keys change)."""

    def __init__(self, own: RedactionPatterns | None = None) -> None:
        self._own_search = None
        if own is not None and own.needles:
            self._own_search = ahocorasick_rs.BytesAhoCorasick(
                list(own.needles), matchkind=ahocorasick_rs.MATCHKIND_LEFTMOST_LONGEST
            )

    def scan(
        self, text: str, key: str | None = None, *, gcp_object: bool = False, depth: int = 0
    ) -> list[Hit]:
        """Every secret in `text`. `key` is the JSON object key the string is the value
        of (context for named secrets); `gcp_object`: that object is a GCP credential."""
        hits: list[Hit] = []
        if key is not None:
            hits += self._named_value(text, key, gcp_object)
        if len(text) < 8:
            return hits
        found = _search(_LITERAL_SEARCH, text, overlapping=True)
        starts: dict[str, list[int]] = {}
        for index, start, _ in found:
            starts.setdefault(_LITERALS[index], []).append(start)
        if starts:
            self._from_literals(text, starts, hits)
        words = frozenset(_search(_WORD_SEARCH, text.lower(), overlapping=True, strings=True))
        if "secret" in words or "session" in words:
            self._aws_named(text, hits)
        if words and "\n" in text:
            self._assignments(text, hits)
        if self._own_search is not None:
            self._own_keys(text, "%" in starts, hits)
        if (
            depth == 0
            and len(text) >= 64
            and _B64_GATE in text.encode("utf-8", "surrogatepass").translate(_B64_CLASSES)
        ):
            self._base64_runs(text, hits)
        if depth == 0 and not text.isascii() and _INVISIBLE.search(text):
            self._invisible(text, key, gcp_object, hits)
        return _distinct([h for h in hits if text[h.start : h.end] not in _DOC_EXAMPLES])

    def quiet(self, texts: Sequence[str]) -> bool:
        """True when `scan(text)` (no object key, top level) finds nothing in any of
        `texts`, decided in one pass over them all: most requests hold no secret, and
        one pass costs about what one `scan` does (issue 17). Every gate `scan` opens is
        checked on the texts joined by NUL, which no literal, word, own key or base64
        run spans: a gate that opens in one text opens here (False also when `scan`
        might still find nothing: then the caller scans each text)."""
        joined = "\x00".join(texts)
        if _search(_LITERAL_SEARCH, joined):
            return False
        if "\n" in joined and _search(_WORD_SEARCH, joined.lower()):
            return False
        words = frozenset(_search(_WORD_SEARCH, joined.lower(), overlapping=True, strings=True))
        if "secret" in words or "session" in words:
            return False
        data = joined.encode("utf-8", "surrogatepass")
        if self._own_search is not None and self._own_search.find_matches_as_indexes(data):
            return False
        if len(joined) >= 64 and _B64_GATE in data.translate(_B64_CLASSES):
            return False
        return joined.isascii() or _INVISIBLE.search(joined) is None

    def scan_named(self, text: str, key: str, *, gcp_object: bool = False) -> list[Hit]:
        """What `scan(text, key)` finds when `quiet([text])`: only what the object key
        names."""
        hits = self._named_value(text, key, gcp_object)
        return _distinct([h for h in hits if text[h.start : h.end] not in _DOC_EXAMPLES])

    def _invisible(self, text: str, key: str | None, gcp_object: bool, hits: list[Hit]) -> None:
        """Zero-width and other invisible characters inside a key (`gh\u200bp_...`):
        scanned again without them; a hit covers the whole string."""
        seen = {h.kind for h in hits}
        for hit in self.scan(_INVISIBLE.sub("", text), key, gcp_object=gcp_object, depth=1):
            if hit.kind not in seen:
                seen.add(hit.kind)
                hits.append(Hit(hit.kind, hit.confidence, 0, len(text), "invisible characters"))

    def _from_literals(self, text: str, starts: dict[str, list[int]], hits: list[Hit]) -> None:
        for kind, confidence, triggers, pattern in _PREFIXED:
            positions = sorted(p for t in triggers for p in starts.get(t, ()))
            end = -1
            for pos in positions:
                if pos < end:
                    continue  # inside the previous match of this family
                m = pattern.match(text, pos)
                if m is None:
                    continue
                end = m.end()
                hits.append(Hit(kind, confidence, m.start(), end))
                if kind is SecretKind.AWS_ACCESS_KEY_ID:
                    self._aws_pair(text, end, hits)
        if "eyJ" in starts:
            self._jwts(text, starts["eyJ"], hits)
        if "PRIVATE KEY" in starts or "PuTTY-User-Key-File-" in starts:
            self._pem(text, hits)
        if '"type"' in starts:
            self._gcp_text(text, hits)
        if "clusters" in starts and "users" in text:
            self._kubeconfig(text, hits)

    def _aws_pair(self, text: str, after: int, hits: list[Hit]) -> None:
        window_end = min(len(text), after + AWS_PAIR_WINDOW)
        for m in _AWS_SECRET_SHAPE.finditer(text, after, window_end):
            token = m.group()
            if any(c.islower() for c in token) and any(c.isupper() for c in token):
                if any(c.isdigit() or c in "/+" for c in token):
                    hits.append(Hit(SecretKind.AWS_SECRET_ACCESS_KEY, HIGH, m.start(), m.end()))
                    return

    def _jwts(self, text: str, positions: list[int], hits: list[Hit]) -> None:
        """credentials.detect's JWT pattern, tried where a run starts with "eyJ" (every
        JWT header does: base64url of '{"')."""
        end = -1
        for pos in positions:
            if pos < end:
                continue
            m = JWT.match(text, pos)
            if m is None:
                continue
            end = m.end()
            parts = m.group().split(".")
            payload = _b64decode(parts[1][:8192]) if len(parts) > 1 else None
            if payload is not None and b"kubernetes" in payload:
                hits.append(Hit(SecretKind.KUBERNETES_TOKEN, HIGH, m.start(), end))
            else:
                hits.append(Hit(SecretKind.JWT, LOW, m.start(), end))

    def _pem(self, text: str, hits: list[Hit]) -> None:
        """BEGIN ... PRIVATE KEY followed (within 400 characters) by a base64 line, to
        its END line; without one, to the end of the base64 body. The next END marker
        is searched once and reused (many BEGIN markers cost no rescans)."""
        pos, next_end = 0, -1
        while (m := _PEM_BEGIN.search(text, pos)) is not None:
            pos = m.end()
            if _PEM_LINE.search(text, m.end(), min(len(text), m.end() + 400)) is None:
                continue
            if next_end < m.end():
                next_end = text.find("-----END", m.end())
                next_end = len(text) + 1 if next_end < 0 else next_end
            if next_end - m.end() <= PEM_SPAN_LIMIT:
                end = _PEM_END.match(text, next_end)
                stop = end.end() if end else next_end + 8
            else:
                body = _PEM_BODY.match(text, m.end(), min(len(text), m.end() + PEM_SPAN_LIMIT))
                stop = body.end() if body else m.end()
            kind = SecretKind.SSH_PRIVATE_KEY if "OPENSSH" in m.group(1) else SecretKind.PRIVATE_KEY
            hits.append(Hit(kind, HIGH, m.start(), stop))
            pos = max(pos, stop)
        pos, next_mac = 0, -1
        while (m := _PUTTY.search(text, pos)) is not None:
            pos = m.end()
            if next_mac < m.end():
                next_mac = text.find("Private-MAC:", m.end())
                next_mac = len(text) + 1 if next_mac < 0 else next_mac
            stop = m.end()
            if next_mac - m.end() <= PEM_SPAN_LIMIT:
                mac = _PUTTY_END.match(text, next_mac)
                stop = mac.end() if mac else stop
            hits.append(Hit(SecretKind.SSH_PRIVATE_KEY, HIGH, m.start(), stop))
            pos = max(pos, stop)

    def _gcp_text(self, text: str, hits: list[Hit]) -> None:
        if _GCP_TYPE.search(text) is None:
            return
        for m in _GCP_FIELD.finditer(text):
            hits.append(Hit(SecretKind.GCP_CREDENTIALS, HIGH, m.start(1), m.end(1)))

    def _aws_named(self, text: str, hits: list[Hit]) -> None:
        for pattern, kind in (
            (_AWS_SECRET_NAMED, SecretKind.AWS_SECRET_ACCESS_KEY),
            (_AWS_SESSION_NAMED, SecretKind.AWS_SESSION_TOKEN),
        ):
            for m in pattern.finditer(text):
                hits.append(Hit(kind, HIGH, m.start(1), m.end(1)))

    def _kubeconfig(self, text: str, hits: list[Hit]) -> None:
        if "apiVersion" not in text and "current-context" not in text:
            return
        for m in _KUBE_FIELD.finditer(text):
            hits.append(Hit(SecretKind.KUBECONFIG, HIGH, m.start(1), m.end(1)))

    def _assignments(self, text: str, hits: list[Hit]) -> None:
        lines = 0
        secrets: list[tuple[int, int, str]] = []
        for m in _ASSIGN.finditer(text):
            lines += 1
            name, raw = m.group(1, 2)
            if not (is_secret_name(name) or ("://" in raw and _URL_PASSWORD.search(raw))):
                continue
            value = real_value(raw)
            if value is not None:
                start = text.index(value, m.start(2))
                secrets.append((start, start + len(value), value))
        if lines >= ENV_DUMP_LINES and len(secrets) >= ENV_DUMP_SECRETS:
            hits.extend(Hit(SecretKind.ENV_DUMP, HIGH, s, e) for s, e, _ in secrets)
            return
        for start, end, value in secrets:
            if looks_random(value, min_len=16):
                hits.append(Hit(SecretKind.SECRET_ASSIGNMENT, LOW, start, end))

    def _named_value(self, value: str, key: str, gcp_object: bool) -> list[Hit]:
        """A JSON string whose object key names a secret (`{"aws_secret_access_key": ...}`)."""
        lower = key.lower().replace("-", "_")
        whole = (0, len(value))
        if gcp_object and lower in GCP_SECRET_FIELDS and len(value) >= 8:
            return [Hit(SecretKind.GCP_CREDENTIALS, HIGH, *whole)]
        compact = lower.replace("_", "")
        if compact.endswith("secretaccesskey") and _AWS_SECRET_SHAPE.fullmatch(value):
            return [Hit(SecretKind.AWS_SECRET_ACCESS_KEY, HIGH, *whole)]
        if compact.endswith("sessiontoken") and len(value) >= 100 and "\n" not in value:
            return [Hit(SecretKind.AWS_SESSION_TOKEN, HIGH, *whole)]
        if lower in ("client_key_data", "id_token") and len(value) >= 16:
            return [Hit(SecretKind.KUBECONFIG, HIGH, *whole)]
        if is_secret_name(key) and "\n" not in value:
            clean = real_value(value)
            if clean is not None and looks_random(clean, min_len=16):
                return [Hit(SecretKind.SECRET_ASSIGNMENT, LOW, *whole)]
        return []

    # -- encodings ---------------------------------------------------------------------

    def _own_keys(self, text: str, percent: bool, hits: list[Hit]) -> None:
        own = self._own_search
        assert own is not None
        data = text.encode("utf-8", "surrogatepass")
        for _, start, end in own.find_matches_as_indexes(data):
            if text.isascii():
                hits.append(Hit(SecretKind.SIDECAR_KEY, HIGH, start, end))
            else:  # byte offsets to character offsets
                before = len(data[:start].decode("utf-8", "replace"))
                hits.append(
                    Hit(
                        SecretKind.SIDECAR_KEY, HIGH, before, before + len(data[start:end].decode())
                    )
                )
        if percent:
            decoded = urllib.parse.unquote(text).encode("utf-8", "surrogatepass")
            if own.find_matches_as_indexes(decoded):
                hits.append(Hit(SecretKind.SIDECAR_KEY, HIGH, 0, len(text), "percent-encoded"))

    def _base64_runs(self, text: str, hits: list[Hit]) -> None:
        """A file encoded once (kubeconfig client-key-data, `base64 ~/.aws/credentials`):
        decoded when it is text, and scanned (not decoded again). A hit covers the run."""
        for m in _B64_RUN.finditer(text):
            run = m.group()
            sample = _b64decode(run[: B64_SAMPLE // 3 * 4])
            if sample is None or not _is_text(sample):
                continue
            decoded = _b64decode(run)
            if decoded is None:
                continue
            inner = decoded.decode("utf-8", "replace")
            for hit in self.scan(inner, depth=1):
                hits.append(Hit(hit.kind, hit.confidence, m.start(), m.end(), "base64"))


def _search(
    search: ahocorasick_rs.AhoCorasick,
    text: str,
    *,
    overlapping: bool = False,
    strings: bool = False,
) -> list[Any]:
    """Aho-Corasick over `text`; lone surrogates (a JSON "\\ud800") become U+FFFD first
    (one character for one: offsets hold)."""
    try:
        if strings:
            return search.find_matches_as_strings(text, overlapping=overlapping)
        return search.find_matches_as_indexes(text, overlapping=overlapping)
    except UnicodeEncodeError:
        return _search(
            search, _SURROGATE.sub("\ufffd", text), overlapping=overlapping, strings=strings
        )


def _distinct(hits: list[Hit]) -> list[Hit]:
    """One hit per (kind, span); a low-confidence hit inside a high one is dropped (the
    secret_assignment of a line that is also an aws_secret_access_key)."""
    unique = list(dict.fromkeys(hits))
    if len(unique) < 2:
        return unique
    high = sorted((h.start, h.end) for h in unique if h.confidence is HIGH)
    if not high:
        return unique
    starts = [s for s, _ in high]
    reach = list(itertools.accumulate((e for _, e in high), max))  # furthest end so far
    return [h for h in unique if h.confidence is HIGH or not _covered(starts, reach, h)]


def _covered(starts: list[int], reach: list[int], hit: Hit) -> bool:
    i = bisect.bisect_right(starts, hit.start) - 1
    return i >= 0 and reach[i] >= hit.end


def _b64decode(text: str) -> bytes | None:
    text = text.rstrip("=")
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None


def _is_text(sample: bytes) -> bool:
    if not sample:
        return False
    return len(sample.translate(None, _NON_PRINTABLE)) >= 0.95 * len(sample)
