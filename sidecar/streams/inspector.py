"""One response, inspected as it passes: tool calls against the policy, keys in the
decoded text, usage (pure; the mitmproxy adapter is sidecar/addons/responses.py).

Streamed: `feed(chunk)` returns the bytes that may go to the gateway now: every
complete event that passed, never a part of an event not yet judged. An event that
breaks an enforced rule is not sent; instead the stream ends with `error_event`, an
error in the provider's own streaming format, and everything after is dropped.
Buffered (a response that was not streamed): `inspect_body` judges the whole body.
"""

from __future__ import annotations

import dataclasses
import email.message
import functools
import json
import re
from collections.abc import Callable

from sidecar.credentials.reflection import RedactionPatterns
from sidecar.decision import Reason
from sidecar.inspection.readers import api_path
from sidecar.policy.tools import DeclaredTools, ToolRules, check_call
from sidecar.streams.jsonarray import JsonArraySplitter, NotJsonArray
from sidecar.streams.readers import (
    READERS,
    StreamFinding,
    TextSeen,
    ToolFinished,
    ToolSeen,
    TooManyCalls,
    parse_json,
)
from sidecar.streams.sse import EventTooLarge, LineEndEscaper, SseEvent, SseSplitter
from sidecar.streams.textguard import DecodedTextGuard, KeyReassembled
from sidecar.usage import TokenUsage

MAX_HELD_WHILE_HOLDING = 1024 * 1024
MAX_HELD_ARGUMENTS = 16 * 1024 * 1024
SSE = "sse"
JSON_ARRAY = "json_array"  # Gemini :streamGenerateContent without alt=sse
UNREADABLE = "unreadable"  # Gemini alt=proto and the like: cut, never passed unread
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.:/-]")
_UTF8 = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})


@dataclasses.dataclass(frozen=True, slots=True)
class StreamViolation:
    reason: Reason
    detail: str  # safe to log: a sanitised tool name at most, never arguments
    tool: str | None = None
    enforced: bool = True


def safe_tool_name(name: str) -> str:
    """A tool name fit for a decision line: what the attacker wrote, bounded and inert."""
    clean = _UNSAFE_NAME.sub("?", name[:64])
    return (clean + "...") if len(name) > 64 else (clean or "(none)")


def api_for_path(path: str) -> str | None:
    """Which reader a request path needs (query already removed or not)."""
    path = api_path(path)
    if path.endswith("/chat/completions"):
        return "chat"
    if path.endswith("/responses"):
        return "responses"
    if path.endswith("/messages"):
        return "anthropic"
    if path.endswith((":generatecontent", ":streamgeneratecontent")):
        return "gemini"
    return None


def stream_framing(api: str, query: list[tuple[str, str]]) -> str:
    """How a streamed response of this request is framed. Gemini's
    `:streamGenerateContent` answers SSE with `alt=sse`, a JSON array without it (or
    with `alt=json`), and a format no inspector reads with anything else (`alt=proto`):
    then the stream is cut rather than passed unread. So is one asking with `alt` in
    another spelling, which a server may read as `alt` where we would not."""
    if api != "gemini":
        return SSE
    alts = {value.lower() for name, value in query if name in ("alt", "$alt")}
    if any(_odd_alt(name, value) for name, value in query):
        return UNREADABLE  # not guessed at: no client of ours spells it so
    if not alts or alts == {"json"}:
        return JSON_ARRAY
    return SSE if alts == {"sse"} else UNREADABLE


def foreign_charset(content_type: str) -> bool:
    """The content type names a charset other than UTF-8 (or ASCII). The gateway's
    client decodes the body by it before its JSON or SSE parser (httpx's `text` and
    `iter_lines`, which google-genai reads), while the inspectors read UTF-8 bytes:
    JSON in latin-1 or EBCDIC would pass unread. The charset is read as httpx reads it."""
    lowered = content_type.lower()
    if "charset" not in lowered:
        return False
    if lowered.count("charset") == 1 and lowered.replace(" ", "").endswith("charset=utf-8"):
        return False  # what providers send, without a parse (~15 us) per response
    message = email.message.Message()
    message["content-type"] = content_type
    charset = message.get_content_charset()
    return charset is not None and charset not in _UTF8


def _odd_alt(name: str, value: str) -> bool:
    """`alt` spelt so a server might read it where we do not (`ALT`, `alt `, or after
    a `;` separator inside another parameter's value)."""
    folded = name.strip().lower()
    return (folded in ("alt", "$alt") and name not in ("alt", "$alt")) or "alt=" in value.lower()


def error_document(api: str, reason: str, message: str) -> dict[str, object]:
    """The provider's own streaming error, which its official SDK raises on (or, over
    the Responses WebSocket, yields as an `error` event)."""
    openai_error = {"message": message, "type": "egress_refused", "param": None, "code": reason}
    if api == "anthropic":
        return {
            "type": "error",
            "error": {"type": "api_error", "message": message, "details": {"error_code": reason}},
            "reason": reason,
        }
    if api == "responses":
        return {"type": "error", "error": openai_error, "code": reason, "message": message,
                "param": None, "reason": reason}  # fmt: skip
    if api == "gemini":  # google-genai raises on a chunk starting with {"error":
        return {"error": {"code": 502, "message": message, "status": "UNAVAILABLE",
                          "reason": reason}}  # fmt: skip
    return {"error": openai_error, "reason": reason}


def error_event(api: str, reason: str, message: str) -> bytes:
    """`error_document` framed as the provider frames it in an SSE stream."""
    data = json.dumps(error_document(api, reason, message)).encode()
    if api in ("anthropic", "responses"):
        return b"event: error\ndata: " + data + b"\n\n"
    return b"data: " + data + b"\n\n"


class ResponseInspector:
    def __init__(
        self,
        api: str,
        *,
        rules: ToolRules | None,
        declared: DeclaredTools,
        patterns: RedactionPatterns | None,
        enforce_tools: bool,
        describe: Callable[[StreamViolation], str] | None = None,
        framing: str = SSE,
    ) -> None:
        self.api = api
        self.reader = READERS[api]()
        self.rules = rules
        self.declared = declared
        self.guard = DecodedTextGuard(patterns) if patterns is not None else None
        self.enforce_tools = enforce_tools
        self._describe = describe or (lambda v: f"egress-sidecar: {v.detail}")
        self.framing = framing
        self.violations: list[StreamViolation] = []  # every one found (bounded), enforced or not
        self.cut: StreamViolation | None = None
        self._splitter: SseSplitter | JsonArraySplitter = (
            JsonArraySplitter() if framing == JSON_ARRAY else SseSplitter(bare_json=api == "gemini")
        )
        # SSE: the line ends only some clients split at, escaped before anything is read
        # or forwarded, so every client splits what we forward where we did (sse.py).
        self._line_ends = LineEndEscaper() if framing == SSE else None
        # Argument rules are judged on a whole call: in enforce mode the events carrying a
        # call's arguments are held until it is complete, so denied arguments never
        # reach the gateway piece by piece (honest text before the call is not held).
        self._hold_arguments = enforce_tools and rules is not None and bool(rules.deny)
        self._held = b""  # bytes received, not yet released
        self._base = 0  # stream offset of _held[0]
        self._released = 0  # bytes released so far (the JSON array: "[" sent or not)
        self._seen: set[tuple[Reason, str]] = set()

    @property
    def usage(self) -> TokenUsage | None:
        return self.reader.usage

    # --- streamed ---------------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return self.finish()
        if self.cut is not None:
            return b""
        if self.framing not in (SSE, JSON_ARRAY):
            detail = "a stream in a format the sidecar cannot read (Gemini alt=); cut"
            return self._cut(StreamViolation(Reason.RESPONSE_NOT_INSPECTABLE, detail))
        if self._line_ends is not None:
            chunk = self._line_ends.feed(chunk)
            if not chunk:
                return b""
        return self._take(chunk)

    def _take(self, chunk: bytes) -> bytes:
        self._held += chunk
        try:
            events = self._splitter.feed(chunk)
        except (EventTooLarge, NotJsonArray) as exc:
            return self._cut(StreamViolation(Reason.RESPONSE_NOT_INSPECTABLE, str(exc)))
        release, violation = self._judge_events(events)
        if violation is not None:
            return self._release(release) + self._cut(violation)
        if self._holding() and len(self._held) > self._max_held() and release == self._base:
            return self._cut(StreamViolation(self._held_reason(), self._held_detail()))
        return self._release(release)

    def _judge_events(self, events: list[SseEvent]) -> tuple[int, StreamViolation | None]:
        """(the offset up to which bytes may go, the first enforced violation). A cut
        releases only what was not held: neither a key's start nor a call's arguments."""
        release = self._base
        for event in events:
            held_before = self._holding()
            violation = self._judge(functools.partial(self._read, event))
            if violation is not None:
                return (release if held_before else event.start), violation
            if not self._holding():
                release = event.end
        return release, None

    def _read(self, event: SseEvent) -> list[StreamFinding]:
        if self.framing != JSON_ARRAY:
            return self.reader.event(event.name, event.data)
        doc = parse_json(event.data)
        if not isinstance(doc, dict):  # a client's parser might read what ours could not
            raise NotJsonArray("a JSON array stream element that is not a JSON object")
        return self.reader.document(doc, streamed=True)

    @property
    def holding_arguments(self) -> bool:
        """A call's arguments are open and must not reach the gateway yet (enforce mode
        with argument rules): the Responses WebSocket holds its messages on this."""
        return self._hold_arguments and self.reader.arguments_open

    def _holding(self) -> bool:
        return (self.guard is not None and self.guard.holding) or self.holding_arguments

    def _max_held(self) -> int:
        guard = self.guard is not None and self.guard.holding
        return MAX_HELD_WHILE_HOLDING if guard else MAX_HELD_ARGUMENTS

    def _held_reason(self) -> Reason:
        guard = self.guard is not None and self.guard.holding
        return Reason.CREDENTIAL_REFLECTED if guard else Reason.RESPONSE_NOT_INSPECTABLE

    def _held_detail(self) -> str:
        if self.guard is not None and self.guard.holding:
            return "the start of a key held unresolved past 1 MiB; stream cut"
        return "a tool call's arguments held unjudged past 16 MiB; stream cut"

    def finish(self) -> bytes:
        if self.cut is not None:
            return b""
        if self.framing not in (SSE, JSON_ARRAY):
            return self._cut(StreamViolation(Reason.RESPONSE_NOT_INSPECTABLE, "unreadable format"))
        rest = self._line_ends.finish() if self._line_ends is not None else b""
        before = self._take(rest) if rest else b""
        if self.cut is not None:
            return before
        try:
            events = self._splitter.finish()
        except (EventTooLarge, NotJsonArray) as exc:
            return before + self._cut(StreamViolation(Reason.RESPONSE_NOT_INSPECTABLE, str(exc)))
        release, violation = self._judge_events(events)
        if violation is not None:
            return before + self._release(release) + self._cut(violation)
        violation = self._judge(self.reader.end)
        if violation is not None:
            return before + self._cut(violation)
        out, self._held = self._held, b""
        self._base += len(out)
        self._released += len(out)
        return before + out

    # --- not streamed / one WebSocket message ---------------------------------------------

    def inspect_body(self, body: bytes) -> StreamViolation | None:
        """The first enforced violation in a whole body, or None (then it may pass)."""
        if self.framing not in (SSE, JSON_ARRAY):
            # Asked for in a format no inspector reads (Gemini alt=proto): its client reads
            # tool calls from it, so it is refused as a stream in that format is cut.
            return self.not_inspectable(
                "a response in a format the sidecar cannot read (Gemini alt=); refused"
            )
        doc = parse_json(body)
        if doc is None and body:
            # httpx decodes text with errors="replace" before a client's JSON parser
            # (google-genai): a byte that is not UTF-8 must not leave the body unread.
            doc = parse_json(body.decode("utf-8", "replace"))
        if doc is None and body.strip() and self.api == "gemini":
            # Gemini answers in formats no inspector reads when asked by other means
            # than `alt` too (the framing only reads the query): not passed unread.
            return self.not_inspectable("a Gemini response that is not JSON; refused")
        if doc is None:
            return None  # not JSON: no client of these APIs reads tool calls from it
        violation = self._judge(lambda: self.reader.body(doc))
        if violation is None and self.guard is not None:
            try:
                for text in _strings(doc):
                    self.guard.scan_whole(text)
            except KeyReassembled:
                violation = self._found(
                    StreamViolation(Reason.CREDENTIAL_REFLECTED, _KEY_DETAIL), "body"
                )
        return violation

    def stream_body(self, body: bytes) -> tuple[bytes, StreamViolation | None]:
        """A stream received whole (it came content-coded and was decoded first): the
        bytes the gateway may have, as `feed` and `finish` release them, and the cut."""
        out = (self.feed(body) if body else b"") + self.finish()
        return out, self.cut

    def not_inspectable(self, detail: str) -> StreamViolation:
        """A whole body refused before it is read (`detail` safe to log)."""
        return self._found(StreamViolation(Reason.RESPONSE_NOT_INSPECTABLE, detail), "body")

    def message(self, text: str) -> StreamViolation | None:
        """A Responses WebSocket message (one event): an enforced violation or None."""
        if self.cut is not None:
            return self.cut
        violation = self._judge(lambda: self.reader.event(None, text))
        if violation is not None:
            self.cut = violation
        return violation

    # --- judging ----------------------------------------------------------------------

    def _judge(self, read: Callable[[], list[StreamFinding]]) -> StreamViolation | None:
        try:
            findings = read()
        except (TooManyCalls, NotJsonArray) as exc:
            return self._found(StreamViolation(Reason.RESPONSE_NOT_INSPECTABLE, str(exc)), "calls")
        for finding in findings:
            violation = self._check(finding)
            if violation is not None and violation.enforced:
                return violation
        return None

    def _check(self, finding: StreamFinding) -> StreamViolation | None:
        if isinstance(finding, TextSeen):
            if self.guard is None:
                return None
            try:
                self.guard.add(finding.channel, finding.text)
            except KeyReassembled:
                return self._found(StreamViolation(Reason.CREDENTIAL_REFLECTED, _KEY_DETAIL), "key")
            return None
        partial = isinstance(finding, ToolSeen) and finding.growing
        refused = check_call(
            self.rules, self.declared, finding.name, finding.kind, finding.server, partial=partial
        )
        if refused is None and isinstance(finding, ToolFinished) and self.rules is not None:
            rule = self.rules.arguments_refused(finding.arguments, finding.truncated)
            if rule is not None:
                refused = (Reason.TOOL_ARGUMENTS_DENIED, f"arguments match {rule}")
        if refused is None:
            return None
        reason, why = refused
        name = safe_tool_name(finding.name)
        server = f" on MCP server {safe_tool_name(finding.server)}" if finding.server else ""
        detail = f"{self.api} tool call {name!r}{server}: {why}"
        return self._found(
            StreamViolation(reason, detail, name, enforced=self.enforce_tools), finding.call
        )

    def _found(self, violation: StreamViolation, key: str) -> StreamViolation:
        if (violation.reason, key) not in self._seen and len(self.violations) < 32:
            self._seen.add((violation.reason, key))
            self.violations.append(violation)
        return violation

    def _release(self, offset: int) -> bytes:
        count = offset - self._base
        if count <= 0:
            return b""
        out, self._held = self._held[:count], self._held[count:]
        self._base = offset
        self._released += len(out)
        return out

    def _cut(self, violation: StreamViolation) -> bytes:
        if violation not in self.violations and len(self.violations) < 32:
            self.violations.append(violation)
        self.cut = violation
        self._held = b""
        message = self._describe(violation)
        if self.framing == JSON_ARRAY:  # one more element, and the array's end
            document = json.dumps(error_document(self.api, violation.reason.value, message))
            return (b",\r\n" if self._released else b"[") + document.encode() + b"]"
        return error_event(self.api, violation.reason.value, message)


_KEY_DETAIL = "injected key reassembled from the decoded text of the response; cut"


def _strings(doc: object) -> list[str]:
    out: list[str] = []
    stack = [doc]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return out
