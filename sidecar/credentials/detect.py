"""Recognise real credentials in what the gateway sends (S7: keys never enter the gateway).

If the gateway sends something that looks like a real provider key, the key has leaked
into the gateway (its environment, its config, its memory): the request is refused
with `gateway_holds_credential` and alerted. Findings name *where* and *which family*,
never the value.

Two kinds of rules:

- **Prefixed families** (`sk-proj-`, `sk-ant-api03-`, `AIza...`, `gsk_`, ...): precise,
  searched anywhere in every header value and query parameter.
- **Generic rules** (a long random `sk-<32+ letters/digits>`, Azure's 32 hex digits, any long random
  token, a JWT): only in credential-bearing places (Authorization, x-api-key, api-key,
  `key=`, ...) of requests to an endpoint that gets a key injected, where the gateway
  is supposed to send a dummy or a virtual key. "Random" (`looks_random`) means: at
  least 32 characters, digits and letters, and a Shannon entropy within 0.5 bit of
  what random text over the same alphabet would have, so `sk-dummy`, `sk-xxxx...`,
  `none`, `DummyKeyForTheLocalGateway1` are not keys. Virtual keys (`vk-...`) are never real keys.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

import ahocorasick_rs

from sidecar.credentials.entropy_bars import BARS
from sidecar.credentials.entropy_bars import MAX_LEN as BARS_MAX_LEN
from sidecar.credentials.entropy_bars import MIN_LEN as BARS_MIN_LEN
from sidecar.credentials.virtual_keys import is_virtual_key
from sidecar.entropy import shannon_entropy

__all__ = [
    "DUMMY_VALUES",
    "FAMILIES",
    "JWT",
    "TRIGGERS",
    "CredentialFinding",
    "KeyFamily",
    "looks_random",
    "redact_known_keys",
    "scan_generic",
    "scan_prefixed",
    "shannon_entropy",
]


@dataclass(frozen=True, slots=True)
class KeyFamily:
    name: str  # stable id, used in findings, logs, docs
    label: str  # human-readable
    pattern: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class CredentialFinding:
    """One credential found in a request. Safe to log: no value."""

    location: str  # e.g. "header authorization", "query key", "header sec-websocket-protocol"
    family: str  # KeyFamily.name
    label: str

    def describe(self) -> str:
        return f"{self.label} in {self.location}"


def _f(name: str, label: str, regex: str) -> KeyFamily:
    return KeyFamily(name, label, re.compile(regex))


# Boundaries: a key is not preceded/followed by another key character.
_B = r"(?<![A-Za-z0-9_-])"
_E = r"(?![A-Za-z0-9_-])"

FAMILIES: tuple[KeyFamily, ...] = (
    _f("openai_project_key", "OpenAI project key", _B + r"sk-proj-[A-Za-z0-9_-]{20,}"),
    _f(
        "openai_service_account_key",
        "OpenAI service account key",
        _B + r"sk-svcacct-[A-Za-z0-9_-]{20,}",
    ),
    _f("openai_admin_key", "OpenAI admin key", _B + r"sk-admin-[A-Za-z0-9_-]{20,}"),
    _f("anthropic_api_key", "Anthropic API key", _B + r"sk-ant-api\d\d-[A-Za-z0-9_-]{20,}"),
    _f("anthropic_admin_key", "Anthropic admin key", _B + r"sk-ant-admin\d\d-[A-Za-z0-9_-]{20,}"),
    _f(
        "anthropic_oauth_token",
        "Anthropic OAuth token",
        _B + r"sk-ant-o(?:at|rt)\d\d-[A-Za-z0-9_-]{20,}",
    ),
    _f("openrouter_api_key", "OpenRouter key", _B + r"sk-or-v1-[0-9a-f]{32,}"),
    _f("google_api_key", "Google API key (Gemini)", _B + r"AIza[0-9A-Za-z_-]{35}" + _E),
    _f("groq_api_key", "Groq key", _B + r"gsk_[A-Za-z0-9]{32,}"),
    _f("xai_api_key", "xAI key", _B + r"xai-[A-Za-z0-9]{32,}"),
    _f("fireworks_api_key", "Fireworks key", _B + r"fw_[A-Za-z0-9]{20,}"),
    _f("together_api_key", "Together key", _B + r"tgp_v1_[A-Za-z0-9_-]{30,}"),
    _f("perplexity_api_key", "Perplexity key", _B + r"pplx-[A-Za-z0-9]{40,}"),
    _f("huggingface_token", "Hugging Face token", _B + r"hf_[A-Za-z0-9]{30,}"),
    _f("github_token", "GitHub token", _B + r"gh[pousr]_[A-Za-z0-9]{36,}"),
    # Google OAuth access tokens (what google-auth mints; issue 16): the gateway holding
    # one can act as a Google identity, the attacker's or ours.
    _f("google_oauth_token", "Google OAuth access token", _B + r"ya29\.[A-Za-z0-9_-]{20,}"),
    _f(
        "aws_access_key_id",
        "AWS access key id",
        r"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])",
    ),
    # Bedrock's long-term API keys: "ABSK" + base64. Left to the entropy test, about 1
    # in 80 random keys passed as ordinary text (measured over 5,000).
    _f("aws_bedrock_api_key", "AWS Bedrock API key", _B + r"ABSK[A-Za-z0-9+/]{40,}"),
)

# The literal every match of a family starts with (after its boundary). A family's
# regex only runs on text that holds one of them: 16 substring searches in C instead of
# 16 regex passes, each trying a look-behind at every offset (issue 10).
_TRIGGERS: dict[str, tuple[str, ...]] = {
    "openai_project_key": ("sk-proj-",),
    "openai_service_account_key": ("sk-svcacct-",),
    "openai_admin_key": ("sk-admin-",),
    "anthropic_api_key": ("sk-ant-api",),
    "anthropic_admin_key": ("sk-ant-admin",),
    "anthropic_oauth_token": ("sk-ant-o",),
    "openrouter_api_key": ("sk-or-v1-",),
    "google_api_key": ("AIza",),
    "groq_api_key": ("gsk_",),
    "xai_api_key": ("xai-",),
    "fireworks_api_key": ("fw_",),
    "together_api_key": ("tgp_v1_",),
    "perplexity_api_key": ("pplx-",),
    "huggingface_token": ("hf_",),
    "github_token": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    "google_oauth_token": ("ya29",),
    "aws_access_key_id": ("AKIA", "ASIA"),
    "aws_bedrock_api_key": ("ABSK",),
}

_ALL_TRIGGERS = tuple(sorted({t for ts in _TRIGGERS.values() for t in ts}))
TRIGGERS = _TRIGGERS  # public: request DLP (sidecar/dlp) reuses the families and triggers

_GENERIC_SK = re.compile(r"sk-[A-Za-z0-9]{32,}")
_AZURE_HEX = re.compile(r"[0-9a-fA-F]{32}")
# A JWT: three dot-separated runs, the first two holding base64url JSON ("eyJ..."). The
# match starts at the beginning of a run and skips, atomically, to the run's first
# "eyJ"; the runs are taken possessively. Same texts match as with a plain
# `eyJ[...]{8,}\.eyJ[...]{8,}\.[...]{8,}` (a later "eyJ" in the same run can only be
# shorter), but each run is tried from one place only: linear, where the plain form is
# quadratic on "eyJeyJeyJ..." (issue 10, bounded detector cost).
_JWT = re.compile(
    r"(?<![A-Za-z0-9_-])(?>[A-Za-z0-9_-]*?eyJ)[A-Za-z0-9_-]{8,}+"
    r"\.eyJ[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]{8,}+"
)
JWT = _JWT  # public: request DLP (sidecar/dlp) reuses it
_TOKEN = re.compile(r"[A-Za-z0-9_\-.~+/]+=*")
_OPAQUE = re.compile(r"[A-Za-z0-9_\-.~+/]{32,}=*")

# Values gateways are commonly configured with when the sidecar holds the key. They
# are not keys (and nothing above would match them anyway); listed for the docs/tests.
DUMMY_VALUES = frozenset(
    {
        "dummy",
        "none",
        "null",
        "sk-dummy",
        "sk-xxx",
        "sk-placeholder",
        "placeholder",
        "fake",
        "sk-fake",
        "unused",
        "sidecar",
        "injected-by-sidecar",
        "x",
    }
)


_HEX_LOWER = frozenset("0123456789abcdef")
_HEX_UPPER = frozenset("0123456789ABCDEF")


def looks_random(token: str, *, min_len: int = 32) -> bool:
    """Long, with digits and letters, and about as varied as random text over its alphabet.

    The bar is the expected entropy of `len(token)` random characters drawn from the
    alphabet the token uses (digits, lower, upper, others), minus 0.5 bit: random keys
    clear it (hex and base62 alike), words and repeated patterns do not.
    """
    n = len(token)
    if n < min_len:
        return False
    # Character classes are judged on the set of distinct characters (built in C), so
    # the Python work per token is bounded by its alphabet, not its length (issue 10).
    chars = set(token)
    has_digit = any(ch.isdigit() for ch in chars)
    has_alpha = any(ch.isalpha() for ch in chars)
    if not (has_digit and has_alpha):
        return False
    lower = any(ch.islower() for ch in chars)
    upper = any(ch.isupper() for ch in chars)
    others = len({ch for ch in chars if not ch.isalnum()})
    hexish = chars <= _HEX_LOWER or chars <= _HEX_UPPER
    if hexish:
        alphabet = 16
    else:
        alphabet = 10 + (26 if lower else 0) + (26 if upper else 0) + others
    return shannon_entropy(token) >= _entropy_bar(min(n, 512), alphabet)


def _entropy_bar(n: int, alphabet: int) -> float:
    """Mean minus max(2.5 standard deviations, 0.1 bit) of the entropy of n random draws
    from `alphabet` symbols: read from a table derived once, offline, by
    `scripts/derive_entropy_bars.py` (a seeded simulation; issue 10: no request pays for
    sampling). An alphabet size the table lacks (only reachable with unusual characters)
    uses the next smaller one: a lower bar, so such a token is flagged rather than missed.
    """
    column = BARS.get(alphabet)
    if column is None:
        smaller = [k for k in BARS if k <= alphabet]
        column = BARS[max(smaller) if smaller else min(BARS)]
    return column[min(max(n, BARS_MIN_LEN), BARS_MAX_LEN) - BARS_MIN_LEN]


def scan_prefixed(
    value: str, location: str, *, skip: frozenset[str] = frozenset()
) -> list[CredentialFinding]:
    """Prefixed key families anywhere in `value` (and in a decoded `Basic` payload)."""
    found: list[CredentialFinding] = []
    texts = [value]
    decoded = _basic_payload(value)
    if decoded is not None:
        texts.append(decoded)
    present = [(text, {t for t in _ALL_TRIGGERS if t in text}) for text in texts]
    if not any(triggers for _, triggers in present):
        return found  # the common case: no family can match
    for family in FAMILIES:
        if family.name in skip:
            continue
        if any(
            family.pattern.search(text)
            for text, triggers in present
            if not triggers.isdisjoint(_TRIGGERS[family.name])
        ):
            found.append(CredentialFinding(location, family.name, family.label))
    return found


def scan_generic(value: str, location: str, *, header: str | None) -> list[CredentialFinding]:
    """Generic rules for a credential-bearing header or parameter value."""
    texts = [value]
    decoded = _basic_payload(value)
    if decoded is not None:
        texts.append(decoded)
    for text in texts:
        finding = _generic_one(text, location, header)
        if finding is not None:
            return [finding]
    return []


def _generic_one(text: str, location: str, header: str | None) -> CredentialFinding | None:
    if _JWT.search(text):
        return CredentialFinding(location, "jwt_bearer_token", "bearer token (JWT)")
    for token in _TOKEN.findall(text):
        if is_virtual_key(token) or token.lower() in DUMMY_VALUES:
            continue
        if _GENERIC_SK.fullmatch(token) and looks_random(token[3:]):
            return CredentialFinding(location, "generic_sk_key", "sk- style secret key")
        if header == "api-key" and _AZURE_HEX.fullmatch(token):
            return CredentialFinding(location, "azure_openai_key", "Azure OpenAI key")
        if _OPAQUE.fullmatch(token) and looks_random(token.rstrip("=")):
            return CredentialFinding(location, "opaque_random_token", "long random token")
    return None


def _basic_payload(value: str) -> str | None:
    parts = value.strip().split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "basic":
        return None
    try:
        return base64.b64decode(parts[1].strip(), validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return None


# Each pattern with the literals every match of it holds: a pattern runs only on text
# holding one, found by one Aho-Corasick pass (20 look-behind regex passes cost ~22 us
# on a 70-character text, on every decision's host, path and detail: issue 17).
_REDACTABLE: tuple[tuple[re.Pattern[str], frozenset[str]], ...] = (
    *((family.pattern, frozenset(_TRIGGERS[family.name])) for family in FAMILIES),
    (_GENERIC_SK, frozenset({"sk-"})),
    (_JWT, frozenset({"eyJ"})),
)
_REDACTABLE_LITERALS = ahocorasick_rs.AhoCorasick(
    sorted({literal for _, literals in _REDACTABLE for literal in literals})
)
REDACTED = "[REDACTED]"  # holds no literal, and none can span its brackets


def redact_known_keys(text: str) -> str:
    """Every substring of a known key format replaced: for text that is logged, counted or
    sent to a pager (paths, details), where a gateway-held key must never appear."""
    try:
        present = set(_REDACTABLE_LITERALS.find_matches_as_strings(text, overlapping=True))
    except UnicodeEncodeError:  # a lone surrogate: every pattern, as before
        present = {literal for _, literals in _REDACTABLE for literal in literals}
    if not present:
        return text
    # A substitution only removes literals (REDACTED adds none): the set found in the
    # original text covers every pattern that could still match.
    for pattern, literals in _REDACTABLE:
        if not present.isdisjoint(literals):
            text = pattern.sub(REDACTED, text)
    return text
