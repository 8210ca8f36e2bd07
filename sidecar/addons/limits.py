"""HTTP and connection limits (issue 10), enforced where the bytes are read.

mitmproxy has no hook between "bytes arrived" and "headers parsed": its HTTP/1 reader
buffers a request or response head without any size limit, and its hooks only run
once a whole head has been parsed. So the checks live in our own subclasses of
mitmproxy's HTTP layer, connection handlers and stream, installed through the
supported `next_layer` hook (we replace the `HttpLayer` that mitmproxy's NextLayer
addon chose with `GuardedHttpLayer`). Installed packages are never edited.
docs/limits.md says what each limit bounds, and why each check sits where it does.

What lives here:
- `LimitsAddon`: connection caps (`client_connected`), the layer swap (`next_layer`),
  the request-body check the enforcer calls before it records its decision, and the
  decisions for every limit refusal (handed to the same `Recorder` as every other).
- `GuardedHttp1Server`: request head size, slowloris (head timeout), idle timeouts.
- `GuardedHttp2Server`: concurrent streams, HPACK header list size, and flow control:
  a small window, returned only as the streams hand body bytes on.
- `GuardedHttpStream`: header count; an answer set on the headers goes out at once
  (no `100 Continue`, the body is never drained into memory); streamed body limit;
  the process-wide budgets (HTTP/2 streams open at once, body bytes held).
- `GuardedHttpLayer`: upstream (response) head size; wires the above in.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.stream
from h11._receivebuffer import ReceiveBuffer
from mitmproxy import connection, http
from mitmproxy import flow as mitmproxy_flow
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events, layer, mode_specs
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import (
    DropStream,
    HttpClient,
    HttpLayer,
    HttpStream,
    SendHttp,
)
from mitmproxy.proxy.layers.http._base import HttpEvent, ReceiveHttp
from mitmproxy.proxy.layers.http._events import (
    ErrorCode,
    RequestData,
    RequestHeaders,
    RequestProtocolError,
    ResponseData,
    ResponseEndOfMessage,
    ResponseHeaders,
    ResponseProtocolError,
)
from mitmproxy.proxy.layers.http._hooks import HttpResponseHeadersHook
from mitmproxy.proxy.layers.http._http1 import Http1Client, Http1Server
from mitmproxy.proxy.layers.http._http2 import Http2Server, StreamState
from mitmproxy.proxy.layers.http._http_h2 import BufferedH2Connection

from sidecar.addons.flows import DECISION_KEY, refusal_response
from sidecar.decision import Decision, Reason, Verdict
from sidecar.hostnames import HostError, parse_host
from sidecar.limits import (
    LIMIT_ERROR_PREFIX,
    RULE_LIMITS,
    Budget,
    ConnectionCounter,
    Limits,
    body_limit,
)
from sidecar.policy.model import Endpoint
from sidecar.shared_connections import SharedConnectionCounter, SharedConnectionTable

logger = logging.getLogger("egress_sidecar")

BODY_LIMIT_KEY = "egress_body_limit"

# After a refusal with bytes still arriving, we half-close (so the answer is read, not
# lost to a TCP reset) and discard what comes, without buffering it; then close.
LINGER_SECONDS = 2.0
# HTTP/2 streams refused over the process-wide cap: one decision line per connection
# for the first, then at most one per this many seconds with the count.
BUSY_REPORT_SECONDS = 10.0

_HEAD_END = re.compile(rb"\n\r?\n")


def _http1_reader(handler: Any) -> Http1Client | None:
    """The HTTP/1 reader of an upstream connection, under its TLS layer if any."""
    layer_: Any = handler
    for _ in range(4):  # HttpClient -> [ServerTLSLayer ->] Http1Client
        if isinstance(layer_, Http1Client):
            return layer_
        layer_ = getattr(layer_, "child_layer", None)
    return None


def _head_too_large(buffered: ReceiveBuffer, data: bytes, limit: int) -> bool:
    """True if the head being read (buffered + data) exceeds `limit` bytes. Costs a copy
    of at most limit + one read (64 KiB), and only once the limit is passed."""
    if len(buffered) + len(data) <= limit:
        return False
    window = (bytes(buffered) + data)[: limit + 2]
    end = _HEAD_END.search(window)
    return end is None or end.end() > limit


def _half_close(context: Context) -> layer.CommandGenerator[None]:
    """FIN after the answer, so it is read rather than lost to a TCP reset. Not inside a
    CONNECT tunnel: mitmproxy turns a half-close there into a full close (a reset while
    the gateway is still sending); there the linger alone keeps the answer readable."""
    if not any(isinstance(outer, HttpStream) for outer in context.layers):
        yield commands.CloseTcpConnection(context.client, half_close=True)


def _is_h1(request: http.Request) -> bool:
    return not (request.is_http2 or request.is_http3)


class LimitsAddon:
    def __init__(
        self,
        limits: Limits,
        record: Callable[[Decision], None],
        proxyserver: Any = None,
        shared: tuple[SharedConnectionTable, int] | None = None,
    ) -> None:
        self.limits = limits
        self.record = record
        self.proxyserver = proxyserver  # mitmproxy's Proxyserver addon: connection handlers
        # One process counts alone; a worker counts in the pod's table, in its own row
        # (`shared`: the table and the worker's index).
        total, per_source = limits.max_connections, limits.max_connections_per_source
        self.connections: ConnectionCounter | SharedConnectionCounter = (
            ConnectionCounter(total, per_source)
            if shared is None
            else SharedConnectionCounter(*shared, total, per_source)
        )
        self._counted: dict[str, str] = {}  # client id -> source address
        # Process-wide budgets; what each stream took is released when it ends, is
        # dropped, or its connection closes (`_holding`, by client id).
        self.h2_streams = Budget(limits.max_h2_streams_total)
        self.buffered = Budget(limits.max_buffered_request_bytes)
        self.decoded = Budget(limits.max_decoded_bytes)  # used by the credential layer
        self._holding: dict[str, set[GuardedHttpStream]] = {}

    # --- connection caps --------------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        try:
            source = str(client.peername[0])
            why = self.connections.open(source)
            if why is None:
                self._counted[client.id] = source
                self._time_first_request(client)
                return
            self.record_refusal(client, None, Reason.TOO_MANY_CONNECTIONS, why)
        except Exception:  # fail closed: a connection we cannot count is not admitted
            logger.exception("connection limit check failed; refusing the connection")
            client.error = LIMIT_ERROR_PREFIX + "internal error"

    def _time_first_request(self, client: connection.Client) -> None:
        """Until a client's first bytes arrive mitmproxy has no HTTP layer (it waits to
        see whether they are TLS), so our HTTP timers cannot see a silent connection.
        Wrap the connection's top layer (made by mitmproxy's mode server just before
        this hook) in a timer that closes a connection that stays silent."""
        handler = getattr(self.proxyserver, "connections", {}).get(client.id)
        if handler is None or client.transport_protocol != "tcp":
            return
        handler.layer = FirstRequestTimer(handler.layer.context, handler.layer, self)

    def client_disconnected(self, client: connection.Client) -> None:
        source = self._counted.pop(client.id, None)
        if source is not None:
            self.connections.close(source)
        for stream in list(self._holding.pop(client.id, ())):
            stream.release_budgets()

    def holding(self, stream: GuardedHttpStream, holds: bool) -> None:
        streams = self._holding.setdefault(stream.context.client.id, set())
        if holds:
            streams.add(stream)
        else:
            streams.discard(stream)
            if not streams:
                self._holding.pop(stream.context.client.id, None)

    # --- our layers, installed the supported way -----------------------------------------

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        parent: Any = nextlayer
        current = nextlayer.layer
        while current is not None:
            if type(current) is HttpLayer:
                guarded = GuardedHttpLayer(current.context, current.mode, self)
                stack = current.context.layers
                stack.remove(guarded)  # Layer.__init__ appended it; take the old one's place
                stack[stack.index(current)] = guarded
                if parent is nextlayer:
                    nextlayer.layer = guarded
                else:
                    parent.child_layer = guarded
                return
            parent, current = current, getattr(current, "child_layer", None)

    # --- request body: called by the enforcer before it records its decision -------------

    def check_request(
        self, flow: http.HTTPFlow, decision: Decision, endpoint: Endpoint | None
    ) -> Decision:
        """Refuse a declared body over the limit (413, before any body byte is read);
        otherwise stream the body upstream, counted, instead of buffering it."""
        limit = body_limit(
            self.limits.request_body_bytes,
            endpoint.max_request_body if endpoint is not None else None,
        )
        flow.metadata[BODY_LIMIT_KEY] = limit
        declared = flow.request.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > limit:
            return decision.with_context(
                verdict=Verdict.BLOCK,
                reason=Reason.REQUEST_BODY_TOO_LARGE,
                detail=f"content-length {int(declared)} exceeds the limit of {limit} bytes",
            )
        if _needs_length(flow.request):
            # HTTP/2 and HTTP/3 frame a body themselves. Relayed to an HTTP/1 provider
            # without a length, its bytes would be read there as further requests that
            # nobody decided (request smuggling). Buffered instead (bounded by the limit
            # and the buffered-bytes budget), and `request` writes its length.
            flow.metadata[_ADD_LENGTH] = True
            return decision
        flow.request.stream = True  # never buffered: at most one read in memory
        return decision

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.pop(_ADD_LENGTH, False) and _needs_length(flow.request):
            body = flow.request.raw_content or b""
            if body:
                flow.request.headers["content-length"] = str(len(body))

    # --- decisions --------------------------------------------------------------------

    def record_refusal(
        self,
        client: connection.Client,
        server: connection.Server | None,
        reason: Reason,
        detail: str,
        flow: http.HTTPFlow | None = None,
    ) -> Decision:
        """Record one limit refusal and mark the connection (so the enforcer does not
        report the same connection again as a non-HTTP attempt)."""
        decision = self._decision(client, server, reason, detail, flow)
        client.error = LIMIT_ERROR_PREFIX + reason.value
        self.record(decision)
        return decision

    def _decision(
        self,
        client: connection.Client,
        server: connection.Server | None,
        reason: Reason,
        detail: str,
        flow: http.HTTPFlow | None,
    ) -> Decision:
        allowed = flow.metadata.get(DECISION_KEY) if flow is not None else None
        if isinstance(allowed, Decision):
            return allowed.with_context(
                verdict=Verdict.BLOCK, reason=reason, detail=detail, at=time.time()
            )
        proxy_mode = client.proxy_mode
        if isinstance(proxy_mode, mode_specs.ReverseMode):
            mode, (host, port) = "reverse", proxy_mode.address
        elif isinstance(proxy_mode, mode_specs.TransparentMode):
            mode, (host, port) = "transparent", client.sockname[:2]  # original destination
        elif server is not None and server.address:
            mode, (host, port) = "explicit", server.address  # the CONNECT authority
        else:
            mode, (host, port) = "explicit", client.sockname[:2]  # our own listener
        request = flow.request if flow is not None else None
        if mode == "explicit" and request is not None and not client.sni:
            try:  # a plain request not yet decided: the host it asked for, canonical
                host, port = parse_host(request.host).text, request.port
            except HostError:
                pass
        return Decision(
            verdict=Verdict.BLOCK,
            reason=reason,
            rule=RULE_LIMITS,
            host=client.sni or str(host),
            port=int(port),
            method=request.method if request is not None else None,
            path=request.path.split("?", 1)[0][:200] if request is not None else None,
            client=f"{client.peername[0]}:{client.peername[1]}",
            mode=mode,
            detail=detail,
        )


class FirstRequestTimer(layer.Layer):
    """Wraps the top layer of a TCP connection: a connection that sends nothing, or
    stalls in its TLS handshake, for `first_request_timeout` is closed."""

    def __init__(self, context: Context, child: layer.Layer, guard: LimitsAddon) -> None:
        super().__init__(context)
        context.layers.remove(self)  # invisible to layer matching, like NextLayer
        self.child = child
        self.guard = guard
        self._heard = False
        self._wakeup: commands.RequestWakeup | None = None

    def handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        # Once the client has spoken, only our own timer's wakeup needs us (it reads the
        # connection's state when it fires): every other event of the connection goes
        # straight to the child, without our generator and Layer's bookkeeping (issue
        # 17). Layer's pausing is never needed here: our commands are not blocking, and
        # the child marks its own blocking commands as handled.
        if self._heard and not (isinstance(event, events.Wakeup) and event.command is self._wakeup):
            return self.child.handle_event(event)
        return super().handle_event(event)

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        client = self.context.client
        if isinstance(event, events.Start):
            self._wakeup = commands.RequestWakeup(self.guard.limits.first_request_timeout)
            yield self._wakeup
        elif isinstance(event, events.Wakeup) and event.command is self._wakeup:
            stalled = not self._heard or (client.tls and not client.tls_established)
            if stalled and client.state is not connection.ConnectionState.CLOSED:
                timeout = self.guard.limits.first_request_timeout
                self.guard.record_refusal(
                    client,
                    self.context.server,
                    Reason.IDLE_TIMEOUT,
                    f"no request within {timeout:g} s of the connection opening",
                )
                yield commands.CloseConnection(client)
            return
        elif isinstance(event, events.DataReceived) and event.connection == client:
            self._heard = True
        yield from self.child.handle_event(event)


class GuardedHttpLayer(HttpLayer):
    def __init__(self, context: Context, mode: Any, guard: LimitsAddon) -> None:
        super().__init__(context, mode)
        self.guard = guard

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            client = self.context.client
            if client.alpn == b"h2":
                self.connections[client] = GuardedHttp2Server(self.context.fork(), self.guard, self)
            elif not (client.alpn or b"").startswith(b"h3"):  # as HttpLayer picks HTTP/1
                self.connections[client] = GuardedHttp1Server(self.context.fork(), self.guard)
        elif isinstance(event, events.DataReceived) and event.connection != self.context.client:
            if (yield from self._response_head_guard(event)):
                return
            yield from super()._handle_event(event)
            # Over TLS the bytes above were ciphertext for the TLS layer under the HTTP/1
            # reader: check the plaintext it buffered (at most one read past the limit).
            yield from self._buffered_head_guard(event.connection)
            return
        yield from super()._handle_event(event)

    def make_stream(self, stream_id: int) -> layer.CommandGenerator[None]:
        ctx = self.context.fork()
        h2_client = isinstance(self.connections.get(self.context.client), GuardedHttp2Server)
        self.streams[stream_id] = GuardedHttpStream(ctx, stream_id, self.guard, h2_client)
        yield from self.event_to_child(self.streams[stream_id], events.Start())

    def _buffered_head_guard(self, conn: Any) -> layer.CommandGenerator[None]:
        reader = _http1_reader(self.connections.get(conn))
        if reader is None or reader.state != reader.read_headers or reader.stream_id is None:
            return
        limit = self.guard.limits.response_header_bytes
        if len(reader.buf) <= limit:
            return
        yield from self._refuse_response_head(conn, reader, limit)

    def _refuse_response_head(
        self, conn: Any, reader: Http1Client, limit: int
    ) -> layer.CommandGenerator[None]:
        stream = self.streams.get(reader.stream_id) if reader.stream_id is not None else None
        self.guard.record_refusal(
            self.context.client,
            self.context.server,
            Reason.RESPONSE_HEADERS_TOO_LARGE,
            f"upstream response head exceeds {limit} bytes",
            stream.flow if isinstance(stream, HttpStream) else None,
        )
        reader.buf = ReceiveBuffer()  # release what was read
        yield commands.CloseConnection(conn)
        # Tell the stream the upstream is gone: the gateway gets a 502, never the bytes.
        yield from super()._handle_event(events.ConnectionClosed(conn))

    def _response_head_guard(self, event: events.DataReceived) -> layer.CommandGenerator[bool]:
        """A malicious upstream's endless status line or headers: mitmproxy's HTTP/1
        client reader would buffer them without bound."""
        handler = self.connections.get(event.connection)
        reader = (
            getattr(handler, "child_layer", None) if isinstance(handler, HttpClient) else handler
        )
        if not isinstance(reader, Http1Client) or reader.state != reader.read_headers:
            return False
        limit = self.guard.limits.response_header_bytes
        if reader.stream_id is None or not _head_too_large(reader.buf, event.data, limit):
            return False
        yield from self._refuse_response_head(event.connection, reader, limit)
        return True


class PhaseTimers:
    """The timers of one client connection, HTTP/1 or HTTP/2: the connection is in one
    phase at a time (first | headers | body | idle | linger | None: busy), each with its
    own timeout counted from when the phase began (`_since`). A wakeup is requested
    only when the new deadline is earlier than every one already pending (mitmproxy
    keeps a task per wakeup until the connection ends), so a busy kept-alive connection
    holds about one timer, not one per request. Subclasses say what an expiry does."""

    guard: LimitsAddon

    def _init_timers(self) -> None:
        self._phase: str | None = None
        self._since = time.monotonic()
        self._timers: dict[commands.RequestWakeup, float] = {}  # pending -> deadline

    def _timeout(self, phase: str | None) -> float | None:
        limits = self.guard.limits
        return {
            "first": limits.first_request_timeout,
            "headers": limits.header_timeout,
            "body": limits.idle_timeout,
            "idle": limits.idle_timeout,
            "linger": LINGER_SECONDS,
        }.get(phase or "")

    def _deadline(self) -> float | None:
        timeout = self._timeout(self._phase)
        return None if timeout is None else self._since + timeout

    def _arm(self) -> layer.CommandGenerator[None]:
        deadline = self._deadline()
        if deadline is None or (self._timers and min(self._timers.values()) <= deadline):
            return
        wakeup = commands.RequestWakeup(max(0.0, deadline - time.monotonic()))
        self._timers[wakeup] = deadline
        yield wakeup

    def _set_phase(self, phase: str | None) -> layer.CommandGenerator[None]:
        if phase == self._phase:
            return
        self._phase, self._since = phase, time.monotonic()
        yield from self._arm()

    def _timer_woke(self, event: events.Wakeup) -> layer.CommandGenerator[None]:
        self._timers.pop(event.command, None)
        deadline = self._deadline()
        if deadline is None:
            return
        if time.monotonic() < deadline - 0.05:
            yield from self._arm()  # woken for an earlier phase: wait for this one's deadline
            return
        yield from self._expired(self._phase or "", self._timeout(self._phase) or 0.0)

    def _expired(self, phase: str, timeout: float) -> layer.CommandGenerator[None]:
        raise NotImplementedError
        yield


_H2_PREFACE = b"PRI * HTTP/2.0\r\n"
H2_PREFACE_DETAIL = (
    "HTTP/2 prior-knowledge preface (PRI * HTTP/2.0) where HTTP/1.1 is spoken: "
    "send HTTP/1.1 requests, or HTTP/2 inside TLS (ALPN h2)"
)


def _is_h2_preface(buffered: ReceiveBuffer, data: bytes) -> bool:
    """The first line of what the client sent is HTTP/2's connection preface."""
    if len(buffered) >= len(_H2_PREFACE):
        return False  # already seen (and not a preface) when it arrived
    return (bytes(buffered) + data[: len(_H2_PREFACE)]).startswith(_H2_PREFACE)


class GuardedHttp1Server(PhaseTimers, Http1Server):
    """Request head size and the timers (slowloris, idle) of one HTTP/1 client
    connection. The phase is re-evaluated after every event."""

    def __init__(self, context: Context, guard: LimitsAddon) -> None:
        super().__init__(context)
        self.guard = guard
        self._init_timers()
        self._finished = False

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Wakeup):
            yield from self._timer_woke(event)
            return
        if self._finished:
            # Answered and half-closed: discard what still arrives, never buffer it.
            if isinstance(event, events.ConnectionClosed):
                yield commands.CloseConnection(self.conn)
            return
        if (
            isinstance(event, events.DataReceived)
            and self.state == self.read_headers
            and _head_too_large(self.buf, event.data, self.guard.limits.request_header_bytes)
        ):
            limit = self.guard.limits.request_header_bytes
            yield from self._answer_refusal(
                Reason.REQUEST_HEADERS_TOO_LARGE, f"request line and headers exceed {limit} bytes"
            )
            return
        if (
            isinstance(event, events.DataReceived)
            and self.state == self.read_headers
            and _is_h2_preface(self.buf, event.data)
        ):
            # Read as HTTP/1 it is a Host-less `PRI *` request: answered 400 before any
            # hook, and logged without saying what it was.
            yield from self._answer_refusal(Reason.PROTOCOL_NOT_ALLOWED, H2_PREFACE_DETAIL)
            return
        yield from super()._handle_event(event)
        phase = self._phase_now()
        if phase != self._phase:  # checked here: two generators per event otherwise
            yield from self._set_phase(phase)

    def _phase_now(self) -> str | None:
        if self._finished or self.conn.state is connection.ConnectionState.CLOSED:
            return self._phase  # unchanged
        if self.state == self.read_headers:
            return "headers" if self.buf else ("first" if self.stream_id == 1 else "idle")
        return None

    def _expired(self, phase: str, timeout: float) -> layer.CommandGenerator[None]:
        if self._phase == "linger":
            self._phase = None
            yield commands.CloseConnection(self.conn)
        elif self._phase == "headers":
            yield from self._answer_refusal(
                Reason.REQUEST_TIMEOUT,
                f"request headers not complete after {timeout:g} s",
            )
        elif self._phase == "first":
            self._finished = True
            self.guard.record_refusal(
                self.context.client,
                self.context.server,
                Reason.IDLE_TIMEOUT,
                f"no request within {timeout:g} s of the connection opening",
            )
            yield commands.CloseConnection(self.conn)
        elif self._phase == "idle":  # an ordinary keep-alive expiry: not a refusal
            self._finished = True
            yield commands.CloseConnection(self.conn)

    def _answer_refusal(self, reason: Reason, detail: str) -> layer.CommandGenerator[None]:
        self._finished = True
        self.buf = ReceiveBuffer()  # release the oversized or stalled head
        decision = self.guard.record_refusal(
            self.context.client, self.context.server, reason, detail
        )
        response = refusal_response(decision, close=True)
        if self.conn.state & connection.ConnectionState.CAN_WRITE:
            yield commands.SendData(self.conn, http1.assemble_response(response))
            yield from _half_close(self.context)
        self._phase = None
        yield from self._set_phase("linger")


@dataclasses.dataclass
class RequestBodyReleased(HttpEvent):
    """A stream handed `length` request body bytes on (or dropped them): the HTTP/2
    connection returns that much flow-control credit to the client."""

    length: int


@dataclasses.dataclass
class BodyOverBudget(events.Event):
    """Request body bytes arrived while the process-wide budget was spent: they were
    dropped, and the stream refuses its request when it gets to this event."""


class WindowedH2Connection(BufferedH2Connection):
    """mitmproxy's h2 connection advertises the largest window there is (2 GiB per
    stream and per connection) and acknowledges data as soon as it is parsed: a client
    can make the sidecar hold gigabytes for a stream whose upstream is still being
    opened. Ours advertises `window` per stream and per connection."""

    def __init__(self, config: Any, window: int) -> None:
        super().__init__(config)
        self.window = window
        self.local_settings.initial_window_size = window
        self.local_settings.acknowledge()  # the SETTINGS frame carries the current values

    def initiate_connection(self) -> None:
        h2.connection.H2Connection.initiate_connection(self)  # not mitmproxy's 2 GiB
        if self.window > self.inbound_flow_control_window:
            self.increment_flow_control_window(self.window - self.inbound_flow_control_window)


class GuardedHttp2Server(PhaseTimers, Http2Server):
    """HTTP/2: at most `max_h2_streams` concurrent streams (more: the connection is
    closed with GOAWAY, as h2 does), header lists bounded by the head size limit, and
    flow control that holds: body bytes are acknowledged (WINDOW_UPDATE) only once the
    stream has handed them on, so a connection never makes us hold more than its window.

    The HTTP/1 timers, per connection (mitmproxy's h2 layer has none; only its 600 s
    inactivity watchdog): no request within `first_request_timeout`; a header block
    (HEADERS + CONTINUATION) unfinished after `header_timeout`; no stream open for
    `idle_timeout` (closed quietly); a request body unfinished with nothing received for
    `idle_timeout`. Streams waiting for their response are never timed: a completion
    may think for minutes."""

    def __init__(self, context: Context, guard: LimitsAddon, http_layer: HttpLayer) -> None:
        super().__init__(context)
        self.guard = guard
        self.http_layer = http_layer
        self.h2_conn = WindowedH2Connection(self.h2_conf, guard.limits.h2_window)
        self.h2_conn.local_settings.max_concurrent_streams = guard.limits.max_h2_streams
        self.h2_conn.local_settings.max_header_list_size = guard.limits.request_header_bytes
        self.h2_conn.local_settings.acknowledge()
        self.h2_conn.decoder.max_header_list_size = guard.limits.request_header_bytes
        self._busy_count = 0  # streams refused over the process-wide cap, not yet reported
        self._busy_reported_at: float | None = None
        self._init_timers()
        self._had_stream = False

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Wakeup):
            yield from self._timer_woke(event)
            return
        if isinstance(event, RequestBodyReleased):
            try:
                self.h2_conn.acknowledge_received_data(event.length, event.stream_id)
            except (h2.exceptions.ProtocolError, ValueError):
                return  # the stream or the connection is gone: nothing to return
            data = self.h2_conn.data_to_send()
            if data:
                yield commands.SendData(self.conn, data)
            return
        yield from super()._handle_event(event)
        if "_handle_event" in self.__dict__:
            return  # closed: mitmproxy swapped in its `done` handler for this connection
        received = isinstance(event, events.DataReceived)
        limit = self.guard.limits.request_header_bytes
        if received and self._header_block_size() > limit:
            yield from self._goaway_refusal(
                Reason.REQUEST_HEADERS_TOO_LARGE,
                f"HTTP/2 header list (block still arriving) exceeds {limit} bytes",
            )
            return
        phase = self._h2_phase()
        if received and phase == "body" and self._phase == "body":
            self._since = time.monotonic()  # the body is moving: time the silence only
        yield from self._set_phase(phase)

    def _header_block_size(self) -> int:
        """Bytes of a header block (HEADERS + CONTINUATION) not yet complete: h2 keeps up
        to 64 frames of 128 KiB (8 MiB) before it decodes and checks the list size."""
        frames = getattr(self.h2_conn.incoming_buffer, "_headers_buffer", ())
        return sum(len(frame.data) for frame in frames)

    def _h2_phase(self) -> str | None:
        if self._header_block_size():
            return "headers"
        open_streams = [stream for stream in self.h2_conn.streams.values() if not stream.closed]
        if not open_streams:
            return "idle" if self._had_stream else "first"
        receiving = (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_LOCAL)
        if any(stream.state_machine.state in receiving for stream in open_streams):
            return "body"
        return None  # every request is complete: waiting for responses is not timed

    def _expired(self, phase: str, timeout: float) -> layer.CommandGenerator[None]:
        if phase == "idle":  # an ordinary keep-alive expiry: not a refusal
            yield from self._goaway(f"idle for {timeout:g} s")
        elif phase == "first":
            yield from self._goaway_refusal(
                Reason.IDLE_TIMEOUT, f"no request within {timeout:g} s of the connection opening"
            )
        elif phase == "headers":
            yield from self._goaway_refusal(
                Reason.REQUEST_TIMEOUT, f"HTTP/2 request headers not complete after {timeout:g} s"
            )
        elif phase == "body":
            yield from self._goaway_refusal(
                Reason.REQUEST_TIMEOUT,
                f"HTTP/2 request body not finished and nothing received for {timeout:g} s",
            )

    def _goaway_refusal(self, reason: Reason, detail: str) -> layer.CommandGenerator[None]:
        self.guard.record_refusal(self.context.client, self.context.server, reason, detail)
        yield from self._goaway(detail, h2.errors.ErrorCodes.PROTOCOL_ERROR)

    def _goaway(
        self, message: str, code: int = h2.errors.ErrorCodes.NO_ERROR
    ) -> layer.CommandGenerator[None]:
        self._phase = None
        self.h2_conn.close_connection(code)
        yield commands.SendData(self.conn, self.h2_conn.data_to_send())
        yield from self.close_connection(message)

    def handle_h2_event(self, event: h2.events.Event) -> layer.CommandGenerator[bool]:
        if (
            isinstance(event, h2.events.RequestReceived)
            and self.guard.h2_streams.used >= self.guard.h2_streams.limit
        ):
            self._refuse_stream(event.stream_id)
            return False
        if isinstance(event, h2.events.RequestReceived):
            self._had_stream = True
        if (
            isinstance(event, h2.events.DataReceived)
            and event.data
            and self.streams.get(event.stream_id) is StreamState.HEADERS_RECEIVED
            and event.stream_id in self.http_layer.streams
        ):
            # mitmproxy acknowledges here; the stream does, once the bytes are handed on.
            yield ReceiveHttp(RequestData(event.stream_id, event.data))
            padding = event.flow_controlled_length - len(event.data)
            if padding:
                self.h2_conn.acknowledge_received_data(padding, event.stream_id)
            return False
        if isinstance(event, h2.exceptions.TooManyStreamsError):
            self.guard.record_refusal(
                self.context.client,
                self.context.server,
                Reason.TOO_MANY_STREAMS,
                f"more than {self.guard.limits.max_h2_streams} concurrent HTTP/2 streams",
            )
        elif isinstance(event, h2.exceptions.ProtocolError) and "header list" in str(event).lower():
            self.guard.record_refusal(
                self.context.client,
                self.context.server,
                Reason.REQUEST_HEADERS_TOO_LARGE,
                f"HTTP/2 header list exceeds {self.guard.limits.request_header_bytes} bytes",
            )
        return (yield from super().handle_h2_event(event))

    def _refuse_stream(self, stream_id: int) -> None:
        """Over `max_h2_streams_total`: the stream is reset with REFUSED_STREAM (nothing
        was processed; a client may retry it) before any request object exists, so a
        flood of streams costs a HEADERS frame's parsing each. One decision line for the
        first refusal on this connection, then at most one per `BUSY_REPORT_SECONDS`
        with the count (a line per refused stream would make the log the next flood)."""
        self.h2_conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        self._busy_count += 1
        now = time.monotonic()
        last = self._busy_reported_at
        if last is None or now - last >= BUSY_REPORT_SECONDS:
            self._report_busy()
            self._busy_reported_at = now

    def _report_busy(self) -> None:
        limit = self.guard.limits.max_h2_streams_total
        self.guard.record_refusal(
            self.context.client,
            self.context.server,
            Reason.SIDECAR_BUSY,
            f"{self.guard.h2_streams.used} HTTP/2 streams open over all connections, limit "
            f"{limit} (--max-h2-streams-total); {self._busy_count} new stream(s) on this "
            "connection refused (REFUSED_STREAM)",
        )
        self._busy_count = 0

    def close_connection(self, msg: str) -> layer.CommandGenerator[None]:
        if self._busy_count:  # refusals counted since the last line
            self._report_busy()
        yield from super().close_connection(msg)


class GuardedHttpStream(HttpStream):
    def __init__(
        self, context: Context, stream_id: int, guard: LimitsAddon, h2_client: bool = False
    ) -> None:
        super().__init__(context, stream_id)
        self.guard = guard
        self._body_seen = 0
        self._linger = False
        self._h2 = h2_client  # our client side is HTTP/2: body bytes carry flow control
        self._stream_slot = False  # holds one of the process-wide HTTP/2 stream slots
        self._held = 0  # body bytes received and not yet handed on (process-wide budget)
        self._over_budget = False
        self._busy: Decision | None = None  # the sidecar_busy decision, once recorded

    def handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        """Body bytes are counted against the process-wide budget as they arrive, before
        mitmproxy queues them behind a hook or an upstream connection being opened (the
        queue has no bound of its own). Over the budget they are dropped at once and the
        request is refused."""
        # Not a tunnel: after CONNECT (or an upgrade) mitmproxy hands the stream the
        # connection's raw bytes as RequestData and swaps in its `passthrough` handler;
        # those are the inner layers' to count, and they never come back to be released.
        if isinstance(event, RequestData) and self.client_state == self.state_errored:
            # Already refused (perhaps still answering, behind a hook): nothing of this
            # request is kept, so drop the bytes here rather than queue them.
            yield from self._credit(len(event.data))
            return
        if isinstance(event, RequestData) and "_handle_event" not in self.__dict__:
            size = len(event.data)
            if self.guard.buffered.take(size):
                self._held += size
                self.guard.holding(self, True)
            else:
                yield from self._credit(size)
                if self._over_budget:
                    return
                self._over_budget = True
                if self._paused:  # behind a hook or an upstream connection: say so now
                    self._record_busy()
                event = BodyOverBudget()
        for command in super().handle_event(event):
            yield command
            if isinstance(command, DropStream) and command.stream_id == self.stream_id:
                yield from self._release_all()

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Wakeup):  # end of the linger after an early answer
            if self._linger and self.context.client.state is not connection.ConnectionState.CLOSED:
                yield commands.CloseConnection(self.context.client)
            return
        if isinstance(event, BodyOverBudget):
            yield from self._refuse_busy()
            return
        yield from super()._handle_event(event)
        if isinstance(event, RequestData):  # handed on (or dropped): no longer ours
            yield from self._release(len(event.data))
        done = (self.state_done, self.state_errored)
        if self.client_state in done and self.server_state in done:
            yield from self._release_all()

    # --- the process-wide budgets ------------------------------------------------------

    def _credit(self, size: int) -> layer.CommandGenerator[None]:
        if self._h2 and size:
            yield SendHttp(RequestBodyReleased(self.stream_id, size), self.context.client)

    def _release(self, size: int) -> layer.CommandGenerator[None]:
        size = min(size, self._held)
        if size:
            self._held -= size
            self.guard.buffered.give(size)
            yield from self._credit(size)

    def _release_all(self) -> layer.CommandGenerator[None]:
        yield from self._credit(self._held)
        self.release_budgets()

    def release_budgets(self) -> None:
        """Give back everything this stream holds (its connection may be gone)."""
        if self._stream_slot:
            self._stream_slot = False
            self.guard.h2_streams.give(1)
        if self._held:
            self.guard.buffered.give(self._held)
            self._held = 0
        self.guard.holding(self, False)

    def _record_busy(self) -> Decision:
        limit = self.guard.limits.max_buffered_request_bytes
        self._busy = self.guard.record_refusal(
            self.context.client,
            self.context.server,
            Reason.SIDECAR_BUSY,
            f"request body bytes held for all requests over the budget of {limit} bytes "
            "(--max-buffered-request-bytes)",
            self.flow,
        )
        return self._busy

    def _refuse_busy(self) -> layer.CommandGenerator[None]:
        """Body bytes over `max_buffered_request_bytes` (dropped as they came): refuse
        this request, 503 if no response has started, else cut it off. A stream that was
        waiting (for a hook or an upstream connection) recorded its decision then, and
        answers now, unless the hook refused the request meanwhile."""
        done = (self.state_done, self.state_errored)
        if self.client_state in done:
            return  # the body was complete or the request already refused: nothing to stop
        decision = self._busy or self._record_busy()
        message = decision.detail or "over the request body budget"
        if self.flow.response is not None or self.server_state not in (
            self.state_uninitialized,
            self.state_wait_for_response_headers,
            self.state_errored,
        ):  # the gateway is already getting an answer: cut it off
            yield from self._stop(message, ErrorCode.GENERIC_SERVER_ERROR)
            return
        if self.client_state == self.state_stream_request_body:
            yield SendHttp(
                RequestProtocolError(self.stream_id, message, ErrorCode.KILL), self.context.server
            )
        self.flow.error = mitmproxy_flow.Error(message)
        self.flow.response = refusal_response(decision)
        yield from self._answer_now(end_stream=False, hooks=False)

    def check_body_size(self, request: bool) -> layer.CommandGenerator[bool]:
        if request:
            # Request bodies are ours: refused on their declared size before the hooks'
            # answer (with a decision), then streamed and counted. mitmproxy's check
            # would refuse without one, or buffer up to body_size_limit first.
            return False
        return (yield from super().check_body_size(request))

    def state_wait_for_request_headers(self, event: RequestHeaders) -> layer.CommandGenerator[None]:
        limit = self.guard.limits.header_count
        if len(event.request.headers.fields) > limit:
            self.flow = http.HTTPFlow(self.context.client, self.context.server)
            self.flow.request = event.request
            decision = self.guard.record_refusal(
                self.context.client,
                self.context.server,
                Reason.REQUEST_HEADERS_TOO_LARGE,
                f"{len(event.request.headers.fields)} request headers, limit {limit}",
                self.flow,
            )
            self.flow.response = refusal_response(decision)
            yield from self._answer_now(event.end_stream, hooks=False)
            return
        if self._h2:
            if not self.guard.h2_streams.take(1):
                yield from self._refuse_stream(event)
                return
            self._stream_slot = True
            self.guard.holding(self, True)
        # Run mitmproxy's own handling (hooks included), minus its `100 Continue` when a
        # hook already answered: the gateway must not be invited to send the body.
        inner = super().state_wait_for_request_headers(event)
        result: Any = None
        while True:
            try:
                command = inner.send(result)
            except StopIteration:
                break
            if (
                isinstance(command, SendHttp)
                and isinstance(command.event, ResponseHeaders)
                and command.event.response.status_code == 100
                and self.flow.response is not None
            ):
                result = None
                continue
            result = yield command
        if (
            self.flow.response is not None
            and not event.end_stream
            and self.client_state == self.state_consume_request_body
        ):
            yield from self._answer_now(event.end_stream, hooks=True)

    def _refuse_stream(self, event: RequestHeaders) -> layer.CommandGenerator[None]:
        """Over `max_h2_streams_total`: answered at once, before any hook or upstream."""
        limit = self.guard.limits.max_h2_streams_total
        self.flow = http.HTTPFlow(self.context.client, self.context.server)
        self.flow.request = event.request
        decision = self.guard.record_refusal(
            self.context.client,
            self.context.server,
            Reason.SIDECAR_BUSY,
            f"{self.guard.h2_streams.used} HTTP/2 streams open over all connections, "
            f"limit {limit} (--max-h2-streams-total)",
            self.flow,
        )
        self.flow.response = refusal_response(decision)
        yield from self._answer_now(event.end_stream, hooks=False)

    def _answer_now(self, end_stream: bool, hooks: bool) -> layer.CommandGenerator[None]:
        """Send the answer set on the request headers now, without reading the body; on
        HTTP/1 with a body still coming, close the connection rather than drain it."""
        assert self.flow.response is not None
        body_pending = not end_stream
        h1 = _is_h1(self.flow.request)
        if body_pending and h1:
            self.flow.response.headers["connection"] = "close"
        self.client_state = self.state_errored  # whatever body still arrives is dropped
        if hooks:
            self.flow.response.timestamp_start = time.time()
            yield HttpResponseHeadersHook(self.flow)
            yield from self.send_response()
        else:
            response = self.flow.response
            yield SendHttp(ResponseHeaders(self.stream_id, response, False), self.context.client)
            if response.raw_content:
                yield SendHttp(
                    ResponseData(self.stream_id, response.raw_content), self.context.client
                )
        self.server_state = self.state_errored
        self.flow.live = False
        yield SendHttp(ResponseEndOfMessage(self.stream_id), self.context.client)
        yield DropStream(self.stream_id)
        if h1 and body_pending:
            yield from _half_close(self.context)
            self._linger = True
            yield commands.RequestWakeup(LINGER_SECONDS)

    def state_stream_request_body(self, event: Any) -> layer.CommandGenerator[None]:
        if isinstance(event, RequestData) and (yield from self._count_body(event.data)):
            return
        yield from super().state_stream_request_body(event)

    def state_consume_request_body(self, event: Any) -> layer.CommandGenerator[None]:
        # Not reached for requests the enforcer saw (they stream); a backstop so that no
        # path buffers an unbounded body.
        if isinstance(event, RequestData) and (yield from self._count_body(event.data)):
            return
        yield from super().state_consume_request_body(event)

    def _count_body(self, data: bytes) -> layer.CommandGenerator[bool]:
        self._body_seen += len(data)
        limit = self.flow.metadata.get(BODY_LIMIT_KEY, self.guard.limits.request_body_bytes)
        if self._body_seen <= limit:
            return False
        message = f"request body exceeds the limit of {limit} bytes"
        yield from self._cut_off(
            Reason.REQUEST_BODY_TOO_LARGE, message, ErrorCode.REQUEST_TOO_LARGE
        )
        return True

    def _cut_off(
        self, reason: Reason, message: str, code: ErrorCode
    ) -> layer.CommandGenerator[None]:
        """Refuse a request whose body is being read: stop the upstream request if it was
        started, answer (or reset) the gateway's stream, drop the stream."""
        self.guard.record_refusal(
            self.context.client, self.context.server, reason, message, self.flow
        )
        yield from self._stop(message, code)

    def _stop(self, message: str, code: ErrorCode) -> layer.CommandGenerator[None]:
        self.flow.error = mitmproxy_flow.Error(message)
        if self.client_state == self.state_stream_request_body:
            yield SendHttp(RequestProtocolError(self.stream_id, message, code), self.context.server)
        yield SendHttp(ResponseProtocolError(self.stream_id, message, code), self.context.client)
        self.client_state = self.server_state = self.state_errored
        self.flow.live = False
        yield DropStream(self.stream_id)


_ADD_LENGTH = "egress_add_content_length"


def _needs_length(request: http.Request) -> bool:
    """An HTTP/2 or HTTP/3 request that names no body length of its own."""
    if not (request.is_http2 or request.is_http3):
        return False
    return "content-length" not in request.headers and "transfer-encoding" not in request.headers
