"""One spelling of a host name (S2), and IP literals in every spelling (S4).

Every place that compares host names (policy entries, CONNECT authority, SNI, Host
header, DNS questions) goes through `parse_host`, so two spellings of one name can
never be treated as two names.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re

import idna

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_NAME_LENGTH = 253
# Used with fullmatch: "$" alone would also match before a trailing newline.
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_NUMERIC_PART = re.compile(r"0x[0-9a-f]*|[0-9]+")


class HostError(ValueError):
    """The text is not a usable host name or address."""


@dataclasses.dataclass(frozen=True, slots=True)
class Host:
    """A parsed destination: exactly one of `name` or `address` is set."""

    name: str | None = None
    address: IPAddress | None = None

    @property
    def text(self) -> str:
        return self.name if self.name is not None else str(self.address)


@functools.lru_cache(maxsize=8192)  # pure and hot (several calls per request); bounded
def parse_host(raw: str) -> Host:
    """Parse what a client wrote as a host into its one canonical form.

    Lower-cases, strips one trailing dot and brackets, IDNA-encodes (UTS 46), and
    recognises IP literals in the spellings resolvers accept (`2130706433`,
    `0x7f.1`, `0177.0.0.1`, `127.1`, `[::1]`).
    """
    text = raw.strip()
    if not text or text != raw:
        raise HostError(f"empty or padded host {raw!r}")
    if text.startswith("["):
        if not text.endswith("]"):
            raise HostError(f"unbalanced brackets in {raw!r}")
        return Host(address=_parse_ipv6(text[1:-1], raw))
    if ":" in text:
        return Host(address=_parse_ipv6(text, raw))
    if text.endswith("."):
        text = text[:-1]
    if not text or text.endswith("."):
        raise HostError(f"empty label in {raw!r}")
    literal = parse_ipv4_literal(text)
    if literal is not None:
        return Host(address=literal)
    return Host(name=normalize_name(text))


def normalize_name(text: str) -> str:
    """IDNA (UTS 46) A-label form of a DNS name, lower case, no trailing dot."""
    if text.endswith("."):
        text = text[:-1]
    try:
        ascii_name = text.lower() if text.isascii() else idna.encode(text, uts46=True).decode()
    except idna.IDNAError as exc:
        raise HostError(f"not a valid international name: {text!r} ({exc})") from None
    ascii_name = ascii_name.lower()
    if len(ascii_name) > MAX_NAME_LENGTH:
        raise HostError(f"name longer than {MAX_NAME_LENGTH} characters")
    labels = ascii_name.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise HostError(f"invalid label {label!r} in {text!r}")
    # Also hex ("0x7f000001"): an IPv4 spelling that IDNA mapping produced from
    # fullwidth digits would otherwise pass as a name.
    if _NUMERIC_PART.fullmatch(labels[-1]):
        raise HostError(f"numeric top-level label in {text!r}")
    return ascii_name


def parse_ipv4_literal(text: str) -> ipaddress.IPv4Address | None:
    """inet_aton-style IPv4 parsing: decimal, octal (leading 0) and hex parts, 1-4 parts.

    Returns None when the text is not numeric-looking at all. Numeric-looking text that
    does not parse (e.g. "1.2.3.4.5", "999.1.1.1") raises: it is neither a name nor an
    address, and a resolver might still interpret it.
    """
    lowered = text.lower()
    parts = lowered.split(".")
    # A DNS name never ends in a numeric label; anything that does is an address attempt.
    if not _NUMERIC_PART.fullmatch(parts[-1]):
        return None
    if len(parts) > 4 or not all(_NUMERIC_PART.fullmatch(p) for p in parts):
        raise HostError(f"malformed numeric address {text!r}")
    try:
        values = [_parse_number(p) for p in parts]
    except ValueError:
        raise HostError(f"malformed numeric address {text!r}") from None
    *head, last = values
    if any(v > 0xFF for v in head) or last >= 256 ** (5 - len(values)):
        raise HostError(f"numeric address out of range {text!r}")
    number = 0
    for v in head:
        number = number << 8 | v
    number = number << (8 * (4 - len(head))) | last
    return ipaddress.IPv4Address(number)


def _parse_number(part: str) -> int:
    if part.startswith("0x"):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8)
    return int(part, 10)


def _parse_ipv6(text: str, raw: str) -> IPAddress:
    if "%" in text:
        raise HostError(f"zone identifiers are not accepted: {raw!r}")
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        raise HostError(f"malformed IPv6 address {raw!r}") from None


def split_host_port(
    authority: str, default_port: int | None = None, *, allow_zero: bool = False
) -> tuple[str, int]:
    """Split "host:port" / "[v6]:port" as found in CONNECT lines and Host headers."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise HostError(f"unbalanced brackets in {authority!r}")
        host, rest = authority[: end + 1], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise HostError(f"junk after address in {authority!r}")
        port_text = rest[1:] if rest else ""
    elif authority.count(":") == 1:
        host, port_text = authority.split(":")
    elif ":" in authority:
        raise HostError(f"bare IPv6 address needs brackets: {authority!r}")
    else:
        host, port_text = authority, ""
    if not port_text:
        if default_port is None:
            raise HostError(f"missing port in {authority!r}")
        return host, default_port
    lowest = 0 if allow_zero else 1
    # ASCII digits only: str.isdigit() also accepts "²" and other scripts' digits.
    if not (port_text.isascii() and port_text.isdigit()) or not lowest <= int(port_text) < 65536:
        raise HostError(f"invalid port in {authority!r}")
    return host, int(port_text)


# --- policy-side names -------------------------------------------------------------


def normalize_policy_host(raw: str) -> str:
    """Validate a host as written in a policy file; returns its canonical spelling.

    Exact names, or `*.` followed by a name of at least two labels. Rejects `*`,
    `*.com`, `api.*.com`, `*foo.com`, IP literals (use `cidr:` instead).
    """
    if raw.startswith("*."):
        rest = normalize_name(_reject_other_wildcards(raw[2:], raw))
        if rest.count(".") < 1:
            raise HostError(
                f"wildcard {raw!r} covers a whole top-level domain; "
                "write '*.' followed by at least two labels, e.g. '*.example.com'"
            )
        return "*." + rest
    _reject_other_wildcards(raw, raw)
    host = parse_host(raw)
    if host.name is None:
        raise HostError(f"{raw!r} is an IP address; list addresses under 'cidr:' instead")
    return host.name


def _reject_other_wildcards(text: str, raw: str) -> str:
    if "*" in text:
        raise HostError(
            f"unsupported wildcard {raw!r}: only a leading '*.' is allowed (e.g. '*.example.com')"
        )
    return text


def wildcard_parents(name: str) -> list[str]:
    """Suffixes a wildcard may be keyed on, most specific first.

    For "a.b.example.com" -> ["b.example.com", "example.com", "com"]: a policy
    "*.example.com" is stored under "example.com" and found by a dict lookup per label.
    """
    labels = name.split(".")
    return [".".join(labels[i:]) for i in range(1, len(labels))]
