"""Per-API readers: what in a request body makes the provider fetch, call or run (issue 13).

A reader walks the parsed body once, iteratively, and reports `InspectionFinding`s: a URL the
provider would fetch or call (MCP servers, image and file URLs, Gemini file URIs), a
bare domain a provider container may reach (`network_policy.allowed_domains`), a
provider-executed tool that reaches the network (web search, web fetch, URL context,
hosted connectors), a tool type this sidecar does not know, or a value that is
ambiguous (JSON written into a string where the API wants an object).

URL-bearing shapes are recognised wherever they sit, in every API: the shapes are
distinctive, and an OpenAI-compatible router may accept another provider's shape, so a
URL does not escape by moving. Tool declarations are read strictly (an unknown type is
reported) at the positions where the API declares tools, and for their known network
types everywhere else. Field names checked against openai 2.54, anthropic 2.12 and
google-genai 2.8 (docs/request-inspection.md lists them).

Pure: no mitmproxy, no network.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from enum import StrEnum
from typing import Any

from sidecar.inspection.body import proto_name


class Dialect(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"
    ANY = "any"  # a path we do not know: only what is dangerous in every API


class Api(StrEnum):
    """The request family, by path. Stored for the other request addons."""

    OPENAI_RESPONSES = "openai.responses"
    OPENAI_CHAT = "openai.chat_completions"
    OPENAI_CONTAINERS = "openai.containers"
    OPENAI_REALTIME = "openai.realtime"
    ANTHROPIC_MESSAGES = "anthropic.messages"
    GEMINI_GENERATE = "gemini.generate_content"
    GEMINI_INTERACTIONS = "gemini.interactions"
    OTHER = "other"

    @property
    def dialect(self) -> Dialect:
        head = self.value.split(".", 1)[0]
        return Dialect(head) if head in Dialect.__members__.values() else Dialect.ANY


class InspectionKind(StrEnum):
    FETCH_URL = "fetch_url"
    FETCH_DOMAIN = "fetch_domain"
    SERVER_TOOL = "server_tool"
    AMBIGUOUS = "ambiguous"


@dataclasses.dataclass(frozen=True, slots=True)
class InspectionFinding:
    kind: InspectionKind
    field: str  # where in the body, e.g. "tools[0].server_url": safe to log
    value: str  # the URL, domain or tool name: a URL is never logged whole


# --- which API a request is --------------------------------------------------------------

_GEMINI_METHODS = (
    ":generatecontent",
    ":streamgeneratecontent",
    ":counttokens",
    ":batchgeneratecontent",
)
_ANTHROPIC_SUFFIXES = ("/messages", "/messages/count_tokens", "/messages/batches")


def api_path(path: str) -> str:
    """A request path as the provider routes it, for telling APIs apart: no query,
    percent-decoded (Google routes `%3AgenerateContent` as `:generateContent`, and the
    policy reads the path decoded), lower-cased, without trailing slashes. Read
    loosely on purpose: a path inspected that the provider refuses costs nothing."""
    path = path.split("?", 1)[0]
    if "%" in path:  # and a "?" written %3F ends it too, whatever the provider makes of it
        path = urllib.parse.unquote(path).split("?", 1)[0]
    return path.lower().rstrip("/")


def api_for(path: str, host: str = "") -> Api:
    """The API a request path addresses (any prefix: OpenAI-compatible providers put the
    OpenAI paths under /openai/v1, /api/v1, /inference/v1, ...)."""
    p = api_path(path)
    if p.endswith(_GEMINI_METHODS) or p.endswith("/cachedcontents") or "bidigeneratecontent" in p:
        return Api.GEMINI_GENERATE
    if p.endswith("/interactions") and "googleapis.com" in host:
        return Api.GEMINI_INTERACTIONS
    if p.endswith(_ANTHROPIC_SUFFIXES) or p.endswith((":rawpredict", ":streamrawpredict")):
        return Api.ANTHROPIC_MESSAGES
    if p.endswith(("/responses", "/responses/input_tokens")):
        return Api.OPENAI_RESPONSES
    if p.endswith("/chat/completions"):
        return Api.OPENAI_CHAT
    if p.endswith("/containers"):
        return Api.OPENAI_CONTAINERS
    if "/realtime" in p:
        return Api.OPENAI_REALTIME
    return Api.OTHER


# Endpoints whose answer is a credential usable from anywhere (an ephemeral token).
_MINTING_SUFFIXES = (
    "/realtime/client_secrets",  # OpenAI (GA)
    "/realtime/sessions",  # OpenAI (beta): returns client_secret
    "/realtime/transcription_sessions",  # OpenAI (beta): returns client_secret
    "/auth_tokens",  # Gemini ephemeral tokens (v1alpha)
)


def minting_endpoint(method: str, path: str) -> str | None:
    """The minting endpoint a request creates a token at, or None."""
    if method.upper() != "POST":
        return None
    p = path.split("?", 1)[0].lower().rstrip("/")
    for suffix in _MINTING_SUFFIXES:
        if p.endswith(suffix):
            return suffix.lstrip("/")
    return None


# --- tools ---------------------------------------------------------------------------------

# Provider-executed tools that reach the network, by the name `server_tools:` uses.
_NETWORK_TYPES = {
    "web_search": "web_search",  # OpenAI, Gemini Interactions search_types
    "web_search_preview": "web_search",
    "google_search": "google_search",
    "google_search_retrieval": "google_search",
    "url_context": "url_context",
    "google_maps": "google_maps",
    "enterprise_web_search": "enterprise_web_search",
    "retrieval": "retrieval",
}
_NETWORK_PREFIXES = (("web_search_", "web_search"), ("web_fetch_", "web_fetch"))
# Tools that run without network access, or on the gateway's side.
_SAFE_TYPES = {
    Dialect.OPENAI: frozenset({
        "function", "custom", "file_search", "code_interpreter", "image_generation",
        "computer_use_preview", "computer", "local_shell", "shell", "apply_patch",
        "namespace", "tool_search", "mcp",
    }),
    Dialect.ANTHROPIC: frozenset({"custom", "mcp_toolset"}),
    Dialect.GEMINI: frozenset({
        "function", "function_declarations", "code_execution", "computer_use", "file_search",
        "mcp_server",
    }),
}  # fmt: skip
_ANTHROPIC_SAFE_PREFIXES = (
    "bash_", "text_editor_", "computer_", "code_execution_", "memory_", "tool_search_tool_",
)  # fmt: skip
# Where each API declares tools (path without indexes): read strictly there.
_TOOL_POSITIONS = frozenset({
    "tools", "session.tools", "response.tools", "requests.params.tools", "setup.tools",
})  # fmt: skip
_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


def _network_name(kind: str) -> str | None:
    if kind in _NETWORK_TYPES:
        return _NETWORK_TYPES[kind]
    for prefix, name in _NETWORK_PREFIXES:
        if kind.startswith(prefix):
            return name
    return None


def _tool_findings(
    tool: dict[str, Any], field: str, dialect: Dialect, strict: bool
) -> list[InspectionFinding]:
    kind = tool.get("type")
    if isinstance(kind, str):
        names = [kind]
    elif dialect in (Dialect.GEMINI, Dialect.ANY):
        names = [proto_name(key) for key in tool]  # Gemini: {"googleSearch": {}}
    else:
        names = ["unrecognised"]
    found = []
    for name in names:
        network = _network_name(name)
        if network is not None:
            found.append(InspectionFinding(InspectionKind.SERVER_TOOL, field, network))
        elif strict and not _safe(name, dialect):
            found.append(
                InspectionFinding(
                    InspectionKind.SERVER_TOOL, field, name if _NAME.match(name) else "unrecognised"
                )
            )
    if kind == "mcp" and isinstance(tool.get("connector_id"), str) and "server_url" not in tool:
        found.append(
            InspectionFinding(InspectionKind.SERVER_TOOL, f"{field}.connector_id", "mcp_connector")
        )
    return found


def _safe(name: str, dialect: Dialect) -> bool:
    if dialect is Dialect.ANTHROPIC:
        return name in _SAFE_TYPES[dialect] or name.startswith(_ANTHROPIC_SAFE_PREFIXES)
    return name in _SAFE_TYPES.get(dialect, frozenset())


def _anthropic_custom(tool: dict[str, Any]) -> bool:
    return "type" not in tool and "name" in tool and "input_schema" in tool


# --- the walk --------------------------------------------------------------------------------

# Keys whose value is always an object or a list: JSON written into a string there is
# something a lenient provider might decode, and we would not have read.
_OBJECT_ONLY = frozenset({
    "tools", "mcp_servers", "network_policy", "file_data", "fileData", "session",
    "container", "environment", "filters", "domain_secrets", "allowed_domains", "source",
    "image_url",
})  # fmt: skip
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_]{1,48}$")
_MEDIA_TYPES = frozenset({"image", "document", "audio", "video"})  # Gemini Interactions parts


# A path into the document, built only when something is found: (parent, key or index).
Path = tuple[Any, str | int] | None
# Keys that make an object worth a closer look; most objects (text parts, messages,
# schemas) have none of them and cost one set operation.
_INTERESTING = frozenset({
    "image_url", "file_url", "server_url", "source", "mcp_servers", "file_data", "fileData",
    "url", "uri", "network_policy", "tools", "web_search_options", "plugins",
}) | _OBJECT_ONLY  # fmt: skip
MAX_DEPTH = 128  # real request bodies (JSON schemas included) nest far less


def read_request(document: Any, dialect: Dialect) -> list[InspectionFinding]:
    """Every finding in a request body, in document order. One iterative pass (no
    recursion on attacker-chosen depth), nesting bounded by MAX_DEPTH."""
    found: list[InspectionFinding] = []
    stack: list[tuple[Any, Path, int]] = [(document, None, 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            return [
                InspectionFinding(
                    InspectionKind.AMBIGUOUS, "body", f"JSON nests deeper than {MAX_DEPTH}"
                )
            ]
        if isinstance(value, dict):
            if not _INTERESTING.isdisjoint(value):
                found.extend(_object_findings(value, path, dialect))
            for key, item in reversed(value.items()):
                if isinstance(item, (dict, list)):
                    stack.append((item, (path, key), depth + 1))
        elif isinstance(value, list):
            for index in range(len(value) - 1, -1, -1):
                item = value[index]
                if isinstance(item, (dict, list)):
                    stack.append((item, (path, index), depth + 1))
    return found


def _field(path: Path) -> str:
    """`input[0].content[1]`; a key that is not a plain identifier is written `<key>`
    (keys can be attacker text: a decision line must not carry it)."""
    parts: list[str] = []
    while path is not None:
        path, step = path
        if isinstance(step, int):
            parts.append(f"[{step}]")
        else:
            parts.append("." + (step if _SAFE_KEY.match(step) else "<key>"))
    return "".join(reversed(parts)).lstrip(".")


def _position(path: Path) -> str:
    """The path's keys without indexes: where in the API's shape an object sits."""
    keys: list[str] = []
    while path is not None:
        path, step = path
        if isinstance(step, str):
            keys.append(step if _SAFE_KEY.match(step) else "*")
    return ".".join(reversed(keys))


def _join(field: str, key: str) -> str:
    name = key if _SAFE_KEY.match(key) else "<key>"
    return f"{field}.{name}" if field else name


def _object_findings(obj: dict[str, Any], path: Path, dialect: Dialect) -> list[InspectionFinding]:
    found: list[InspectionFinding] = []
    field = _field(path)

    def at(key: str) -> str:
        return _join(field, key)

    for key in _OBJECT_ONLY.intersection(obj):
        text = obj[key]
        if isinstance(text, str) and text.lstrip()[:1] in ("{", "["):
            found.append(
                InspectionFinding(
                    InspectionKind.AMBIGUOUS, at(key), "a JSON text where an object belongs"
                )
            )
    kind = obj.get("type")
    if not isinstance(kind, str):
        kind = None
    # OpenAI: Responses input_image / input_file, Chat image_url parts, MCP tools.
    image = obj.get("image_url")
    if isinstance(image, str):
        found.append(InspectionFinding(InspectionKind.FETCH_URL, at("image_url"), image))
    elif isinstance(image, dict) and isinstance(image.get("url"), str):
        found.append(
            InspectionFinding(InspectionKind.FETCH_URL, f"{at('image_url')}.url", image["url"])
        )
    if isinstance(obj.get("file_url"), str):
        found.append(InspectionFinding(InspectionKind.FETCH_URL, at("file_url"), obj["file_url"]))
    if isinstance(obj.get("server_url"), str):
        found.append(
            InspectionFinding(InspectionKind.FETCH_URL, at("server_url"), obj["server_url"])
        )
    # Anthropic: image / document sources by URL; MCP connector servers.
    source = obj.get("source")
    if (
        isinstance(source, dict)
        and source.get("type") == "url"
        and isinstance(source.get("url"), str)
    ):
        found.append(
            InspectionFinding(InspectionKind.FETCH_URL, f"{at('source')}.url", source["url"])
        )
    found += _item_strings(
        obj.get("mcp_servers"), "url", at("mcp_servers"), InspectionKind.FETCH_URL
    )
    # Gemini: file_data.file_uri (either spelling); Interactions MCP servers and media parts.
    for key in ("file_data", "fileData"):
        data = obj.get(key)
        if isinstance(data, dict):
            for uri_key in ("file_uri", "fileUri"):
                if isinstance(data.get(uri_key), str):
                    found.append(
                        InspectionFinding(
                            InspectionKind.FETCH_URL, f"{at(key)}.{uri_key}", data[uri_key]
                        )
                    )
    if kind == "mcp_server" and isinstance(obj.get("url"), str):
        found.append(InspectionFinding(InspectionKind.FETCH_URL, at("url"), obj["url"]))
    if kind in _MEDIA_TYPES and isinstance(obj.get("uri"), str):
        found.append(InspectionFinding(InspectionKind.FETCH_URL, at("uri"), obj["uri"]))
    # OpenAI containers (code interpreter, shell, POST /v1/containers): the domains the
    # container may reach, and the domains its secrets are sent to.
    policy = obj.get("network_policy")
    if isinstance(policy, dict):
        found.extend(_network_policy(policy, at("network_policy")))
    # Provider web search outside `tools`: Chat Completions' search models, OpenRouter's
    # web plugin.
    if "web_search_options" in obj and dialect in (Dialect.OPENAI, Dialect.ANY):
        found.append(
            InspectionFinding(InspectionKind.SERVER_TOOL, at("web_search_options"), "web_search")
        )
    plugins = obj.get("plugins")
    if isinstance(plugins, list):
        for index, plugin in enumerate(plugins):
            if isinstance(plugin, dict) and plugin.get("id") == "web":
                found.append(
                    InspectionFinding(
                        InspectionKind.SERVER_TOOL, f"{at('plugins')}[{index}]", "web_search"
                    )
                )
    tools = obj.get("tools")
    if isinstance(tools, list):
        strict = dialect is not Dialect.ANY and _join(_position(path), "tools") in _TOOL_POSITIONS
        for index, tool in enumerate(tools):
            if isinstance(tool, dict) and not (
                dialect is Dialect.ANTHROPIC and _anthropic_custom(tool)
            ):
                found.extend(_tool_findings(tool, f"{at('tools')}[{index}]", dialect, strict))
    return found


def _network_policy(policy: dict[str, Any], field: str) -> list[InspectionFinding]:
    found: list[InspectionFinding] = []
    domains = policy.get("allowed_domains")
    if isinstance(domains, list):
        for index, domain in enumerate(domains):
            if isinstance(domain, str):
                found.append(
                    InspectionFinding(
                        InspectionKind.FETCH_DOMAIN, f"{field}.allowed_domains[{index}]", domain
                    )
                )
    found += _item_strings(
        policy.get("domain_secrets"),
        "domain",
        f"{field}.domain_secrets",
        InspectionKind.FETCH_DOMAIN,
    )
    return found


def _item_strings(
    items: Any, key: str, field: str, kind: InspectionKind
) -> list[InspectionFinding]:
    """`items[i][key]` of each object in a list that has a string there."""
    if not isinstance(items, list):
        return []
    return [
        InspectionFinding(kind, f"{field}[{index}].{key}", item[key])
        for index, item in enumerate(items)
        if isinstance(item, dict) and isinstance(item.get(key), str)
    ]
