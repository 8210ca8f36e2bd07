"""What a request offers the model (pure): the tool names and MCP servers it declares,
whether it asks for a stream, and the one change the sidecar makes to it.

Shapes (openai 2.x, anthropic 2.x, google-genai 2.x types):
- chat: `tools[] {type: function, function: {name}} | {type: custom, custom: {name}}`,
  legacy `functions[] {name}`;
- responses: `tools[] {type: function|custom, name}`, `{type: mcp, server_label}`,
  and `local_shell`, `shell`, `apply_patch` (their calls carry no name of their own);
- anthropic: `tools[] {name}` (client and server tools), `mcp_servers[] {name}`,
  `tools[] {type: mcp_toolset, mcp_server_name}`;
- gemini: `tools[] {functionDeclarations|function_declarations: [{name}]}`.
"""

from __future__ import annotations

import json
from typing import Any

from sidecar.inspection.readers import api_path
from sidecar.policy.tools import DeclaredTools

_RESPONSES_NAMELESS = frozenset({"local_shell", "shell", "apply_patch"})


def declared_tools(api: str, doc: Any) -> DeclaredTools:
    if not isinstance(doc, dict):
        return DeclaredTools()
    names: set[str] = set()
    servers: set[str] = set()
    any_mcp = False
    tools = doc.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        if api == "gemini":
            for key in ("functionDeclarations", "function_declarations"):
                for fn in tool.get(key) or []:
                    if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                        names.add(fn["name"])
            continue
        if kind == "mcp" or kind == "mcp_toolset":
            label = tool.get("server_label", tool.get("mcp_server_name"))
            if isinstance(label, str):
                servers.add(label)
            else:
                any_mcp = True
            continue
        if api == "responses" and kind in _RESPONSES_NAMELESS:
            names.add(kind)
        for holder in (tool, tool.get("function"), tool.get("custom")):
            if isinstance(holder, dict) and isinstance(holder.get("name"), str):
                names.add(holder["name"])
    for fn in doc.get("functions") or [] if api == "chat" else []:
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            names.add(fn["name"])
    if api == "anthropic":
        for server in doc.get("mcp_servers") or []:
            if isinstance(server, dict) and isinstance(server.get("name"), str):
                servers.add(server["name"])
    return DeclaredTools(frozenset(names), frozenset(servers), any_mcp)


def wants_stream(api: str, path: str, doc: Any) -> bool:
    if api == "gemini":
        return api_path(path).endswith(":streamgeneratecontent")
    return isinstance(doc, dict) and doc.get("stream") is True


# Chat APIs known to accept `stream_options.include_usage` (an API that does not know the
# field may refuse the request: Azure OpenAI before api-version 2024-09-01, some
# OpenAI-compatible servers). Elsewhere a stream that did not ask carries no usage.
USAGE_OPTION_HOSTS = frozenset(
    {
        "api.openai.com",
        "api.groq.com",
        "api.together.xyz",
        "openrouter.ai",
        "api.deepseek.com",
        "api.x.ai",
        "api.fireworks.ai",
    }
)


def with_usage_requested(doc: dict[str, Any]) -> bytes | None:
    """A streamed chat request's body with `stream_options.include_usage: true`, or None
    when it already asks for usage: without it the stream carries no usage at all
    (docs/stream-inspection.md). The gateway then sees one more chunk, `choices: []`."""
    options = doc.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return None
    changed = dict(doc)
    changed["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                 "include_usage": True}  # fmt: skip
    return json.dumps(changed, ensure_ascii=False).encode()
