"""What an LLM response says, read event by event: tool calls, text, usage (pure).

One reader per API family and per response, fed the JSON of each stream event (or the
whole body of a response that is not streamed). A reader returns `StreamFinding`s:

- `ToolSeen` whenever a tool call's name becomes known or changes (the name the
  gateway would assemble so far: OpenAI chat concatenates name fragments);
- `ToolFinished` when a call is complete (its arguments as the gateway would hold
  them), or when the stream ends with it open;
- `TextSeen` for every piece of decoded text the gateway concatenates, on a named
  channel (one per field it concatenates), for the decoded-text reflection guard.

and keeps the latest `usage`. Field names follow the official SDKs' types (openai
2.x, anthropic 2.x, google-genai 2.x); docs/stream-inspection.md lists them.

Bounded: at most `MAX_CALLS` tool calls are tracked per response (more raise
`TooManyCalls`) and at most `MAX_ARGUMENT_CHARS` of one call's arguments are kept
(past that the call is marked `truncated`, and argument rules fail closed on it).
Anything that is not the expected shape is ignored, never an exception.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from sidecar.usage import TokenUsage

MAX_CALLS = 256
MAX_ARGUMENT_CHARS = 1024 * 1024


class TooManyCalls(Exception):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class ToolSeen:
    call: str  # the reader's key for the call (index, item id, ...)
    name: str
    kind: str  # function | custom | mcp | server
    server: str | None = None  # MCP server label / name
    growing: bool = False  # more name fragments may follow (OpenAI chat)


@dataclasses.dataclass(frozen=True, slots=True)
class ToolFinished:
    call: str
    name: str
    kind: str
    arguments: str
    truncated: bool
    server: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TextSeen:
    channel: str
    text: str


StreamFinding = ToolSeen | ToolFinished | TextSeen


@dataclasses.dataclass(slots=True)
class _Call:
    name: str = ""
    kind: str = "function"
    server: str | None = None
    pieces: list[str] = dataclasses.field(default_factory=list)
    size: int = 0
    truncated: bool = False
    finished: bool = False


def parse_json(data: str | bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _either(doc: dict[str, Any], camel: str, snake: str) -> int:
    """Gemini's REST JSON is camelCase; some clients and Vertex write snake_case."""
    return _int(doc.get(camel, doc.get(snake)))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class ResponseReader:
    """Tool-call bookkeeping shared by the four readers."""

    api = ""

    def __init__(self) -> None:
        self._calls: dict[str, _Call] = {}
        self.usage: TokenUsage | None = None
        self.model: str | None = None

    @property
    def arguments_open(self) -> bool:
        """Some call has (part of) its arguments and is not complete yet."""
        return any(not c.finished and (c.size or c.truncated) for c in self._calls.values())

    # --- fed by the inspector ------------------------------------------------------------

    def event(self, name: str | None, data: str) -> list[StreamFinding]:
        """One streamed event (SSE `event:` name and `data:`, or a WebSocket message)."""
        doc = parse_json(data)
        return self.document(doc, streamed=True) if isinstance(doc, dict) else []

    def body(self, doc: Any) -> list[StreamFinding]:
        """A whole response that was not streamed."""
        out: list[StreamFinding] = []
        for item in doc if isinstance(doc, list) else [doc]:
            if isinstance(item, dict):
                out += self.document(item, streamed=False)
        return out + self.end()

    def end(self) -> list[StreamFinding]:
        """The stream ended: every call still open is complete as it stands."""
        return self._finish_matching("")

    def document(self, doc: dict[str, Any], *, streamed: bool) -> list[StreamFinding]:
        raise NotImplementedError

    # --- helpers ------------------------------------------------------------------------

    def _call(self, key: str, kind: str | None = None, *, new: bool = False) -> _Call:
        call = self._calls.get(key)
        if call is None or new:
            if call is None and len(self._calls) >= MAX_CALLS:
                raise TooManyCalls(f"more than {MAX_CALLS} tool calls in one response")
            call = self._calls[key] = _Call()
        if kind is not None:
            call.kind = kind
        return call

    def _named(self, key: str, call: _Call, name: str, *, append: bool) -> list[StreamFinding]:
        call.name = (call.name + name) if append else name
        return [ToolSeen(key, call.name, call.kind, call.server, growing=append)]

    def _arguments(
        self, key: str, call: _Call, piece: str, *, replace: bool
    ) -> list[StreamFinding]:
        if replace:
            call.pieces, call.size, call.truncated = [], 0, False
        if call.size + len(piece) > MAX_ARGUMENT_CHARS:
            call.truncated = True
        else:
            call.pieces.append(piece)
            call.size += len(piece)
        return [TextSeen(f"{key}.arguments", piece)] if piece else []

    def _finish(self, key: str) -> list[StreamFinding]:
        call = self._calls.get(key)
        if call is None or call.finished:
            return []
        call.finished = True
        return [
            ToolFinished(
                key, call.name, call.kind, "".join(call.pieces), call.truncated, call.server
            )
        ]

    def _finish_matching(self, prefix: str) -> list[StreamFinding]:
        out: list[StreamFinding] = []
        for key in list(self._calls):
            if key.startswith(prefix):
                out += self._finish(key)
        return out

    def _set_usage(self, input_tokens: int, output_tokens: int, model: Any = None) -> None:
        if isinstance(model, str) and model:
            self.model = model[:200]
        self.usage = TokenUsage(input_tokens, output_tokens, self.model)

    def _usage_fields(self, doc: dict[str, Any], input_key: str, output_key: str) -> None:
        """`doc["usage"]` with one input and one output count (Chat, Responses)."""
        usage = doc.get("usage")
        if isinstance(usage, dict):
            self._set_usage(
                _int(usage.get(input_key)), _int(usage.get(output_key)), doc.get("model")
            )


class ChatReader(ResponseReader):
    """OpenAI Chat Completions (and the OpenAI-compatible APIs)."""

    api = "chat"

    def event(self, name: str | None, data: str) -> list[StreamFinding]:
        if data.startswith("[DONE]"):  # what the SDK stops at
            return self.end()
        return super().event(name, data)

    def document(self, doc: dict[str, Any], *, streamed: bool) -> list[StreamFinding]:
        out: list[StreamFinding] = []
        self._usage_fields(doc, "prompt_tokens", "completion_tokens")
        for position, choice in enumerate(_list(doc.get("choices"))):
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", position)
            for message in (choice.get("delta"), choice.get("message")):
                if isinstance(message, dict):
                    out += self._message(f"{index}.", message, streamed)
            if choice.get("finish_reason") is not None or not streamed:
                out += self._finish_matching(f"{index}.")
        return out

    def _message(self, prefix: str, message: dict[str, Any], streamed: bool) -> list[StreamFinding]:
        out: list[StreamFinding] = []
        for field in ("content", "refusal", "reasoning_content", "reasoning"):
            text = _str(message.get(field))
            if text:
                out.append(TextSeen(prefix + field, text))
        for position, fragment in enumerate(_list(message.get("tool_calls"))):
            if not isinstance(fragment, dict):
                continue
            index = fragment.get("index", position) if streamed else position
            out += self._fragment(f"{prefix}{index}", fragment)
        legacy = message.get("function_call")  # the deprecated `functions` API
        if isinstance(legacy, dict):
            out += self._fragment(f"{prefix}function_call", {"function": legacy})
        return out

    def _fragment(self, key: str, fragment: dict[str, Any]) -> list[StreamFinding]:
        function, custom = _dict(fragment.get("function")), _dict(fragment.get("custom"))
        kind = "custom" if fragment.get("type") == "custom" or custom else None
        call = self._call(key, kind)
        out: list[StreamFinding] = []
        for name in (_str(function.get("name")), _str(custom.get("name"))):
            if name:
                out += self._named(key, call, name, append=True)
        for piece in (_str(function.get("arguments")), _str(custom.get("input"))):
            if piece:
                out += self._arguments(key, call, piece, replace=False)
        return out


# Responses output items that are tool calls: item type -> (kind, fixed name or None).
_RESPONSES_CALLS: dict[str, tuple[str, str | None]] = {
    "function_call": ("function", None),
    "custom_tool_call": ("custom", None),
    "mcp_call": ("mcp", None),
    "mcp_approval_request": ("mcp", None),
    "local_shell_call": ("function", "local_shell"),
    "shell_call": ("function", "shell"),
    "apply_patch_call": ("function", "apply_patch"),
}
_RESPONSES_TEXT_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
    }
)


class ResponsesReader(ResponseReader):
    """OpenAI Responses: SSE events, WebSocket messages, or a whole Response object."""

    api = "responses"

    def document(self, doc: dict[str, Any], *, streamed: bool) -> list[StreamFinding]:
        out: list[StreamFinding] = []
        kind = _str(doc.get("type")) or ""
        response = doc.get("response")
        if isinstance(response, dict):
            out += self._response(response)
        if doc.get("object") == "response":
            out += self._response(doc)
        item = doc.get("item")
        if isinstance(item, dict) and kind.startswith("response.output_item."):
            key = _str(item.get("id")) or f"o{doc.get('output_index')}"
            out += self._item(key, item, done=kind.endswith(".done"))
        key = _str(doc.get("item_id")) or f"o{doc.get('output_index')}"
        if kind.endswith(("_arguments.delta", "_input.delta")):
            delta = _str(doc.get("delta"))
            if delta:
                out += self._arguments(key, self._call(key), delta, replace=False)
        elif kind.endswith(("_arguments.done", "_input.done")):
            whole = _str(doc.get("arguments")) or _str(doc.get("input"))
            if whole is not None:
                out += self._arguments(key, self._call(key), whole, replace=True)
        elif kind in _RESPONSES_TEXT_DELTAS:
            delta = _str(doc.get("delta"))
            if delta:
                out.append(TextSeen(f"{key}.{doc.get('content_index')}.{kind}", delta))
        return out

    def _response(self, response: dict[str, Any]) -> list[StreamFinding]:
        out: list[StreamFinding] = []
        for position, item in enumerate(_list(response.get("output"))):
            if isinstance(item, dict):
                key = _str(item.get("id")) or f"o{position}"
                out += self._item(key, item, done=True)
        self._usage_fields(response, "input_tokens", "output_tokens")
        return out

    def _item(self, key: str, item: dict[str, Any], *, done: bool) -> list[StreamFinding]:
        out: list[StreamFinding] = []
        spec = _RESPONSES_CALLS.get(_str(item.get("type")) or "")
        if spec is None:
            for part in _list(item.get("content")):  # message items: their text
                text = _str(_dict(part).get("text"))
                if text:
                    out.append(TextSeen(f"{key}.whole", text))
            return out
        kind, fixed = spec
        call = self._call(key, kind)
        if call.finished:  # seen again (output_item.done, then response.completed)
            call.finished = False
        call.server = _str(item.get("server_label"))
        out += self._named(key, call, fixed or _str(item.get("name")) or "", append=False)
        arguments = _str(item.get("arguments"))
        if arguments is None:
            arguments = _str(item.get("input"))
        if arguments is None and isinstance(item.get("action"), dict):
            arguments = json.dumps(item["action"])
        if arguments:
            out += self._arguments(key, call, arguments, replace=True)
        if done:
            out += self._finish(key)
        return out


_ANTHROPIC_CALLS = {"tool_use": "function", "server_tool_use": "server", "mcp_tool_use": "mcp"}


class AnthropicReader(ResponseReader):
    """Anthropic Messages."""

    api = "anthropic"

    def __init__(self) -> None:
        super().__init__()
        self._usage: dict[str, int] = {}

    def document(self, doc: dict[str, Any], *, streamed: bool) -> list[StreamFinding]:
        kind = doc.get("type")
        out: list[StreamFinding] = []
        if kind == "message_start":
            message = _dict(doc.get("message"))
            self._add_usage(message.get("usage"), message.get("model"))
            for position, block in enumerate(_list(message.get("content"))):
                out += self._block(f"m{position}", block, done=True)
        elif kind == "message":  # not streamed
            self._add_usage(doc.get("usage"), doc.get("model"))
            for position, block in enumerate(_list(doc.get("content"))):
                out += self._block(f"m{position}", block, done=True)
        elif kind == "content_block_start":
            out += self._block(str(doc.get("index")), doc.get("content_block"), done=False)
        elif kind == "content_block_delta":
            key, delta = str(doc.get("index")), _dict(doc.get("delta"))
            dtype = delta.get("type")
            if dtype == "input_json_delta":
                piece = _str(delta.get("partial_json"))
                if piece:
                    out += self._arguments(key, self._call(key), piece, replace=False)
            elif dtype in ("text_delta", "thinking_delta"):
                text = _str(delta.get("text")) or _str(delta.get("thinking"))
                if text:
                    out.append(TextSeen(f"{key}.{dtype}", text))
        elif kind == "content_block_stop":
            out += self._finish(str(doc.get("index")))
        elif kind == "message_delta":
            self._add_usage(doc.get("usage"), None)  # cumulative: the latest wins
        elif kind == "message_stop":
            out += self.end()
        return out

    def _block(self, key: str, block: Any, *, done: bool) -> list[StreamFinding]:
        block = _dict(block)
        kind = _ANTHROPIC_CALLS.get(_str(block.get("type")) or "")
        out: list[StreamFinding] = []
        if kind is None:
            text = _str(block.get("text"))
            if text:
                out.append(TextSeen(f"{key}.text", text))
            return out
        call = self._call(key, kind, new=True)  # a new block at an index is a new call
        call.server = _str(block.get("server_name"))
        out += self._named(key, call, _str(block.get("name")) or "", append=False)
        initial = block.get("input")
        if initial:
            out += self._arguments(key, call, json.dumps(initial), replace=True)
        if done:
            out += self._finish(key)
        return out

    def _add_usage(self, usage: Any, model: Any) -> None:
        if not isinstance(usage, dict):
            return
        for field in (
            "input_tokens", "output_tokens", "cache_creation_input_tokens",
            "cache_read_input_tokens",
        ):  # fmt: skip
            if isinstance(usage.get(field), int):
                self._usage[field] = _int(usage[field])
        u = self._usage
        self._set_usage(
            u.get("input_tokens", 0)
            + u.get("cache_creation_input_tokens", 0)
            + u.get("cache_read_input_tokens", 0),
            u.get("output_tokens", 0),
            model,
        )


class GeminiReader(ResponseReader):
    """Gemini generateContent / streamGenerateContent (camelCase and snake_case)."""

    api = "gemini"

    def __init__(self) -> None:
        super().__init__()
        self._count = 0

    def document(self, doc: dict[str, Any], *, streamed: bool) -> list[StreamFinding]:
        out: list[StreamFinding] = []
        usage = doc.get("usageMetadata", doc.get("usage_metadata"))
        if isinstance(usage, dict):
            self._set_usage(
                _either(usage, "promptTokenCount", "prompt_token_count")
                + _either(usage, "toolUsePromptTokenCount", "tool_use_prompt_token_count"),
                _either(usage, "candidatesTokenCount", "candidates_token_count")
                + _either(usage, "thoughtsTokenCount", "thoughts_token_count"),
                doc.get("modelVersion", doc.get("model_version")),
            )
        for position, candidate in enumerate(_list(doc.get("candidates"))):
            candidate = _dict(candidate)
            index = candidate.get("index", position)
            for part in _list(_dict(candidate.get("content")).get("parts")):
                part = _dict(part)
                text = _str(part.get("text"))
                if text:
                    out.append(TextSeen(f"{index}.text", text))
                call = part.get("functionCall", part.get("function_call"))
                if isinstance(call, dict):
                    out += self._whole_call(f"{index}.{self._count}", call)
        return out

    def _whole_call(self, key: str, function_call: dict[str, Any]) -> list[StreamFinding]:
        self._count += 1
        call = self._call(key, "function")
        out = self._named(key, call, _str(function_call.get("name")) or "", append=False)
        arguments = function_call.get("args")
        out += self._arguments(key, call, json.dumps(arguments or {}), replace=True)
        return out + self._finish(key)


READERS: dict[str, type[ResponseReader]] = {
    r.api: r for r in (ChatReader, ResponsesReader, AnthropicReader, GeminiReader)
}
