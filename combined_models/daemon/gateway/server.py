"""The front door's I/O: HTTP/1.1 (h11) over trio, one task per connection, keep-alive.

Every chat request goes through the daemon's `chat` in the connection's own
task, so its events are written by the one task that owns the connection. A
second task only reads while a request is answered, to notice a client that
goes away: that cancels the request, which closes its upstream.
The translation to and from each API lives in the sans-IO modules beside this
one, each behind one `FrontEnd`; a request picks its front end once, from its
head. The door sees the daemon only through its facade (`DaemonFacade`).

Each connection and each request is a boundary: what fails inside stays there
(answered 500 when no head went out yet) and the door keeps serving. A request
is judged on its head alone (Host, Origin, token) before any of its body is
read, and every wait on the client is bounded: an incomplete request by
`limits.partial_frame_timeout`, a client that stops reading by `limits.client_stall_timeout`.
"""

from __future__ import annotations

import contextlib
import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
import msgspec
import trio
from prometheus_client import CONTENT_TYPE_LATEST

from ... import __version__
from ...chat import ErrorEvent, ErrorKind, StreamEvent
from ...config import LimitsConfig
from ...limits import TooDeep, decode_bounded
from ..accept import Door
from ..affinity import MAX_SESSION_ID
from ..containment import contained, run_forever
from ..facade import CountResult, DaemonFacade
from . import anthropic, openai, responses
from .auth import authorized, host_allowed, load_token, origin_allowed, split_listen
from .common import PROVIDER_HEADER, BadRequest, ChatCall, FrontEnd, Head, Out, json_reply, retry_after_header

log = logging.getLogger("combined_models.gateway")

MAX_BODY = 32 * 1024 * 1024  # Anthropic's own limit; images and PDFs travel inline
MAX_HEADERS = 64 * 1024
MAX_READ_AHEAD = 1024 * 1024  # bytes a client may pipeline while its answer streams; then we stop reading
RECEIVE_SIZE = 65536
KEEPALIVE_TIMEOUT = 120.0  # an idle keep-alive connection waits this long for its next request
LINGER_TIMEOUT = 1.0  # after a last answer, what the client still sends is read (and dropped) this long
SERVER_HEADER = ("server", f"combined-models/{__version__}")

# ------------------------------------------------------------------ routes (pure)

ALLOWED_METHODS = {
    "health": "GET, HEAD, OPTIONS",
    "openai_chat": "POST, OPTIONS",
    "anthropic_chat": "POST, OPTIONS",
    "openai_responses": "POST, OPTIONS",
    "models": "GET, HEAD, OPTIONS",
    "count_tokens": "POST, OPTIONS",
    "metrics": "GET, HEAD, OPTIONS",
}
EVERY_METHOD = "GET, HEAD, POST, OPTIONS"
# What a browser page may send, when its origin is allowed (answered in the preflight).
CORS_REQUEST_HEADERS = "authorization, content-type, x-api-key, anthropic-version, anthropic-beta"
CORS_EXPOSED_HEADERS = "x-combined-models-provider, x-request-id, retry-after"


FRONT_ENDS = (openai.FRONT_END, anthropic.FRONT_END, responses.FRONT_END)
CHAT_ENDPOINTS = {front.name: front for front in FRONT_ENDS}  # a chat endpoint -> the API it speaks
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"  # Anthropic's token count (`?beta=true` too)


def endpoint_of(path: str) -> str | None:
    """The endpoint a request path names (a key of `ALLOWED_METHODS`); None when there is none."""
    if path == "/health":
        return "health"
    if path == COUNT_TOKENS_PATH:
        return "count_tokens"
    if path == "/metrics":
        return "metrics"
    for front in FRONT_ENDS:
        if path in front.chat_paths:
            return front.name
    if path in ("/v1/models", "/models") or path.startswith(("/v1/models/", "/models/")):
        return "models"
    return None


SESSION_HEADER = "x-claude-code-session-id"


def front_end_for(path: str, headers: Mapping[str, str]) -> FrontEnd:
    """The API a request speaks, for its errors and model lists: Anthropic's or, by default, OpenAI's.

    Anthropic's path says so, and so do the headers its SDKs send (`anthropic-version`, `x-api-key`).
    A chat endpoint's own answer always comes from that endpoint's front end.
    """
    if path.startswith("/v1/messages") or "anthropic-version" in headers or "x-api-key" in headers:
        return anthropic.FRONT_END
    return openai.FRONT_END


def method_allowed(endpoint: str, method: str) -> bool:
    return method in ALLOWED_METHODS[endpoint].split(", ")


@dataclass(frozen=True, slots=True)
class Incoming:
    """A request's head, decoded once: what every decision about it reads."""

    method: str  # HEAD is answered as GET, without the body
    path: str
    headers: dict[str, str]
    front: FrontEnd  # the API the caller speaks: its errors come in that shape

    @classmethod
    def of(cls, request: h11.Request) -> Incoming:
        target = request.target.decode("latin-1")
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
        if target.lower().startswith(("http://", "https://")):
            # The absolute form (RFC 9112 §3.2.2): its authority is the request's host, whatever
            # the Host header says, so the DNS-rebinding check judges that one.
            parts = urllib.parse.urlsplit(target)
            headers["host"] = parts.netloc
            target = parts.path or "/"
        path = target.split("?", 1)[0]
        method = "GET" if request.method == b"HEAD" else request.method.decode("latin-1")
        return cls(method, path, headers, front_end_for(path, headers))

    def error(self, status: int, message: str) -> list[Out]:
        """An error response in the caller's API."""
        return self.front.error(status, message)


def with_headers(out: list[Out], extra: list[tuple[str, str]]) -> list[Out]:
    head = out[0]
    assert isinstance(head, Head)
    return [Head(head.status, [*head.headers, *extra]), *out[1:]]


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


# ------------------------------------------------------------------ one connection


class _Connection:
    """One accepted socket: an h11 state machine, written by the connection task only."""

    def __init__(self, stream: trio.SocketStream, limits: LimitsConfig) -> None:
        self.stream = stream
        self.limits = limits
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS)
        self.peer_closed = False
        self.close_after = False  # end the connection once the current response is out
        self.stalled = False  # a write waited too long on a client that does not read
        self.head_only = False  # answering HEAD: the head a GET would get, no body
        self.extra_headers: list[tuple[str, str]] = []  # for every response to the current request
        self._deadline = 0.0  # the current request must be whole by then
        self._started = False  # a byte of the current request arrived

    async def _receive(self) -> int:
        try:
            data = await self.stream.receive_some(RECEIVE_SIZE)
        except trio.BrokenResourceError:  # a reset: the peer is gone all the same
            data = b""
        if not data:
            self.peer_closed = True
        self.h11.receive_data(data)
        return len(data)

    async def _receive_request(self, scope: trio.CancelScope) -> None:
        """Read more of the request; its first byte starts the clock for the whole of it."""
        if await self._receive() and not self._started:
            self._started = True
            self._deadline = min(self._deadline, trio.current_time() + self.limits.partial_frame_timeout)
            scope.deadline = self._deadline

    async def next_head(self, idle: float) -> h11.Request | None:
        """The next request's head (its body is not read); None once the client closed or stayed idle.

        The client may wait `idle` seconds before its first byte; then the request must be
        whole within `limits.partial_frame_timeout`, or it is answered 408 and the connection ends.
        """
        self._started = bool(self.h11.trailing_data[0])  # pipelined bytes count as arrived
        start = trio.current_time()
        self._deadline = start + (self.limits.partial_frame_timeout if self._started else idle)
        with trio.move_on_at(self._deadline) as scope:
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    await self._receive_request(scope)
                elif isinstance(event, h11.Request):
                    self.head_only = event.method == b"HEAD"
                    self.extra_headers = []
                    for name, value in event.headers:
                        if name == b"content-length" and int(value) > MAX_BODY:
                            raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
                    return event
                elif isinstance(event, h11.ConnectionClosed):
                    return None
                else:  # PAUSED cannot happen: a new cycle starts only after the last one finished
                    raise h11.RemoteProtocolError(f"unexpected {event!r}", error_status_hint=400)
        if not self._started:
            return None  # an idle connection: closing is the whole answer
        raise h11.RemoteProtocolError("the request did not arrive in time", error_status_hint=408)

    async def read_body(self) -> bytes:
        """The current request's whole body, by the deadline `next_head` set."""
        body = bytearray()
        with trio.move_on_at(self._deadline) as scope:
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    if self.h11.they_are_waiting_for_100_continue:
                        await self.send(h11.InformationalResponse(status_code=100, headers=[SERVER_HEADER]))
                    await self._receive_request(scope)
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_BODY:
                        raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
                elif isinstance(event, h11.EndOfMessage):
                    return bytes(body)
                else:
                    raise h11.RemoteProtocolError(f"unexpected {event!r}", error_status_hint=400)
        raise h11.RemoteProtocolError("the request body did not arrive in time", error_status_hint=408)

    async def watch_peer(self, on_gone: Callable[[], None]) -> None:
        """Read while an answer is written; call `on_gone` when the client closes or resets."""
        read = 0
        while not self.peer_closed:
            if read > MAX_READ_AHEAD:
                await trio.sleep_forever()  # bounded: a dead peer still shows on the next write
            read += await self._receive()
        on_gone()

    async def send(self, *events: h11.Event) -> None:
        """Write `events`; a client that takes none of it for `client_stall_timeout` counts as gone."""
        data = b"".join(self.h11.send(e) or b"" for e in events)
        if not data:
            return
        with trio.move_on_after(self.limits.client_stall_timeout) as writing:
            await self.stream.send_all(data)
        if writing.cancelled_caught:
            self.stalled = True
            raise trio.BrokenResourceError(
                f"the client read nothing for {self.limits.client_stall_timeout:g}s"
            )

    async def write(self, out: list[Out], *, end: bool) -> None:
        """Head and body bytes in one write; `end` closes the body."""
        events: list[h11.Event] = []
        for item in out:
            if isinstance(item, Head):
                headers = [*item.headers, *self.extra_headers, SERVER_HEADER]
                if self.close_after:
                    headers.append(("connection", "close"))
                events.append(
                    h11.Response(status_code=item.status, headers=headers, reason=_reason(item.status))
                )
            elif item and not self.head_only:
                events.append(h11.Data(data=item))
        if end:
            events.append(h11.EndOfMessage())
        await self.send(*events)

    async def answer_and_close(self, out: list[Out]) -> None:
        """The last answer on this connection: whatever else the client sent stays unread."""
        self.close_after = True
        await self.write(out, end=True)

    @property
    def can_answer(self) -> bool:
        """No response head went out yet for the current request (or for a malformed one)."""
        return self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE)

    def next_cycle(self) -> bool:
        """Ready for the next request on this connection; False when it must close instead."""
        if self.close_after or self.peer_closed:
            return False
        if self.h11.states != {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}:
            return False
        self.h11.start_next_cycle()
        return True

    async def linger(self) -> None:
        """Before closing: end our side, then drop what the client still sends for a moment.

        Closing a socket with unread input resets it, and a reset can destroy the
        answer just written before the client reads it (a 401 to an unread body).
        """
        if self.peer_closed or self.stalled:
            return
        with (
            trio.move_on_after(LINGER_TIMEOUT),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await self.stream.send_eof()
            dropped = 0
            while dropped < MAX_READ_AHEAD and (data := await self.stream.receive_some(RECEIVE_SIZE)):
                dropped += len(data)


async def refuse_busy(stream: trio.SocketStream) -> None:
    """The answer to a connection past the cap: a plain 503 that closes, and a short JSON error."""
    body = msgspec.json.encode(
        openai.error_body(503, "too many connections to the daemon's HTTP front door; retry shortly", "busy")
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    )
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(head.encode() + body)
        await stream.send_eof()
        while await stream.receive_some(RECEIVE_SIZE):  # unread input would reset the 503 away
            pass


class Gateway:
    """The OpenAI- and Anthropic-compatible HTTP front door of one daemon.

    Start it with `await nursery.start(gateway.run)`. If its address cannot be
    bound it logs a warning and stays off (`address` empty, `error` saying why);
    the socket keeps working.
    """

    def __init__(self, daemon: DaemonFacade) -> None:
        self.daemon = daemon
        self.config = daemon.http
        self.limits = daemon.limits
        self.address = ""  # host:port once listening
        self.error = ""  # why it is not listening although the config turns it on
        self.token = ""
        self.created = int(time.time())
        self.door = Door(
            "HTTP front door",
            self._serve,
            max_connections=self.limits.max_connections,
            log=log,
            refuse=refuse_busy,
        )
        self._accepting = trio.CancelScope()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            self.token = load_token(self.config)
            host, port = split_listen(self.config.listen)
            listeners = await trio.open_tcp_listeners(port, host=host)
        except (OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            self.error = f"cannot listen on {self.config.listen}: {reason}"
            log.warning("HTTP front door off: %s", self.error)
            task_status.started()
            return
        for extra in listeners[1:]:  # a name with several addresses: keep one, so there is one port
            await extra.aclose()
        listener = listeners[0]
        name = listener.socket.getsockname()
        self.address = f"[{name[0]}]:{name[1]}" if ":" in name[0] else f"{name[0]}:{name[1]}"
        log.info("HTTP front door on http://%s", self.address)
        async with listener, trio.open_nursery() as connections:
            task_status.started()
            with self._accepting:
                await run_forever(
                    log, "the HTTP front door's accept loop", lambda: self.door.serve(listener, connections)
                )
            # Stopped accepting (the daemon is stopping): answers under way finish in `connections`.

    def stop_accepting(self) -> None:
        self._accepting.cancel()

    # ------------------------------------------------------------ connections

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = _Connection(stream, self.limits)
        try:
            idle = self.limits.partial_frame_timeout  # the first request: counted from the accept
            while True:
                request = await conn.next_head(idle)
                if request is None:
                    return
                await self._answer(conn, Incoming.of(request))
                if not conn.next_cycle():
                    return
                idle = KEEPALIVE_TIMEOUT
        except h11.RemoteProtocolError as e:
            if conn.can_answer:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    # No request to tell the API by: OpenAI's shape, the default.
                    await conn.answer_and_close(openai.FRONT_END.error(e.error_status_hint, str(e)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        await conn.linger()

    async def _answer(self, conn: _Connection, incoming: Incoming) -> None:
        """One request, as a boundary: a failure inside is logged and answered 500 if it still can be.

        What the client did wrong (a malformed or stalled request, a closed socket) is no
        failure of the daemon: it goes on to the connection, which answers or closes.
        """
        failed = False
        clients_doing: BaseException | None = None

        def note(_: BaseException) -> None:
            nonlocal failed
            failed = True

        with contained(log, "HTTP %s %s", incoming.method[:16], incoming.path[:200], on_failure=note):
            try:
                await self._respond(conn, incoming)
            except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
                clients_doing = e
        if clients_doing is not None:
            raise clients_doing
        if failed:
            conn.close_after = True
            if conn.can_answer:
                await conn.write(incoming.error(500, "internal error in the daemon (see its log)"), end=True)

    async def _respond(self, conn: _Connection, incoming: Incoming) -> None:
        method, path, headers = incoming.method, incoming.path, incoming.headers
        if self.daemon.stopping:
            conn.close_after = True
        log.debug("%s %s", method[:16], path[:200])
        if not host_allowed(headers.get("host"), allow_remote=self.config.allow_remote):
            message = "this server answers only requests addressed to localhost (`Host` names another host)"
            return await conn.answer_and_close(incoming.error(403, message))
        origin = headers.get("origin")
        if not origin_allowed(origin, self.config.allowed_origins):
            message = f"requests from web pages are refused unless listed in [http] allowed_origins: {origin}"
            return await conn.answer_and_close(incoming.error(403, message))
        if origin is not None:
            conn.extra_headers = [
                ("access-control-allow-origin", origin),
                ("access-control-expose-headers", CORS_EXPOSED_HEADERS),
                ("vary", "origin"),
            ]
        endpoint = endpoint_of(path)
        if method == "OPTIONS":  # a preflight carries no token: it only says what the path allows
            return await self._options(conn, incoming, endpoint, origin)
        has_token = authorized(headers, self.token)
        if endpoint == "health" and not has_token:  # a liveness probe needs no token, and gets no details
            if not method_allowed("health", method):
                return await self._not_allowed(conn, incoming, "health", close=True)
            conn.close_after = True
            return await self._health(conn, full=False)
        if not has_token:
            return await conn.answer_and_close(incoming.front.unauthorized())
        body = await conn.read_body()
        if endpoint is None:
            message = f"no endpoint {method} {path} (try /v1/chat/completions, /v1/messages, /v1/responses or /v1/models)"
            return await conn.write(incoming.error(404, message), end=True)
        if not method_allowed(endpoint, method):
            return await self._not_allowed(conn, incoming, endpoint)
        if endpoint == "health":
            return await self._health(conn, full=True)
        if endpoint == "models":
            return await self._models(conn, incoming)
        if endpoint == "count_tokens":
            return await self._count_tokens(conn, body)
        if endpoint == "metrics":
            text = self.daemon.metrics_text()
            head = Head(200, [("content-type", CONTENT_TYPE_LATEST), ("content-length", str(len(text)))])
            return await conn.write([head, text], end=True)
        return await self._chat(conn, CHAT_ENDPOINTS[endpoint], body, incoming.headers)

    async def _not_allowed(
        self, conn: _Connection, incoming: Incoming, endpoint: str, *, close: bool = False
    ) -> None:
        allow = ALLOWED_METHODS[endpoint]
        out = with_headers(
            incoming.error(405, f"method {incoming.method} not allowed; use {allow}"), [("allow", allow)]
        )
        conn.close_after = conn.close_after or close
        await conn.write(out, end=True)

    async def _options(
        self, conn: _Connection, incoming: Incoming, endpoint: str | None, origin: str | None
    ) -> None:
        conn.close_after = True  # its body (if any) stays unread
        if incoming.path == "*":
            allow = EVERY_METHOD
        elif endpoint is None:
            return await conn.write(incoming.error(404, f"no endpoint {incoming.path}"), end=True)
        else:
            allow = ALLOWED_METHODS[endpoint]
        headers = [("allow", allow)]
        if origin is not None:  # a CORS preflight from a listed origin
            asked = incoming.headers.get("access-control-request-headers")
            headers += [
                ("access-control-allow-methods", allow),
                ("access-control-allow-headers", asked or CORS_REQUEST_HEADERS),
                ("access-control-max-age", "600"),
            ]
        await conn.write([Head(204, headers)], end=True)

    async def _health(self, conn: _Connection, *, full: bool) -> None:
        status = self.daemon.status()
        ready = sum(p.state == "ready" for p in status.providers)
        body: dict[str, Any] = {
            "status": "ok" if ready or not status.providers else "degraded",
            "version": __version__,
            "providers_ready": ready,
            "providers": len(status.providers),
        }
        if full:  # the details (errors, models) only for whoever holds the token
            body["status_info"] = msgspec.to_builtins(status)
        await conn.write(json_reply(200, body), end=True)

    async def _models(self, conn: _Connection, incoming: Incoming) -> None:
        info = self.daemon.models_info()
        wanted = incoming.path.split("/models", 1)[1].lstrip("/")
        if not wanted:
            return await conn.write(json_reply(200, incoming.front.models_list(info, self.created)), end=True)
        if not any(m.id == wanted for m in info.models):
            return await conn.write(incoming.error(404, f"model {wanted!r} not found"), end=True)
        await conn.write(json_reply(200, incoming.front.model_object(wanted, self.created)), end=True)

    # ------------------------------------------------------------ chat

    async def _chat(
        self, conn: _Connection, front: FrontEnd, body: bytes, headers: Mapping[str, str]
    ) -> None:
        try:
            call = front.parse_chat(body)
        except BadRequest as e:
            return await conn.write(front.bad_request(e), end=True)
        if session := headers.get(SESSION_HEADER):  # the conversation's name, for session affinity
            call.request.session = session[:MAX_SESSION_ID]
        if beta := headers.get("anthropic-beta"):  # carried to Anthropic members
            call.request.anthropic_beta = [f for f in (f.strip() for f in beta.split(",")) if f]
        await self._serve_chat(conn, call)

    async def _serve_chat(self, conn: _Connection, call: ChatCall) -> None:
        """Serve one chat request through the daemon, writing as the events arrive."""
        model, responder = call.model, call.responder
        if self.daemon.stopping:
            out = responder.feed(ErrorEvent(kind=ErrorKind.SHUTTING_DOWN, message="the daemon is stopping"))
            return await conn.write(out, end=True)
        gone = False
        with self.daemon.tracking():
            async with trio.open_nursery() as nursery:

                def on_gone() -> None:
                    nonlocal gone
                    gone = True
                    nursery.cancel_scope.cancel()  # cancels the upstream request too

                async def send(events: list[StreamEvent]) -> None:
                    out = [o for e in events for o in responder.feed(e)]
                    if not out:
                        return
                    try:
                        await conn.write(out, end=responder.finished)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        on_gone()
                        await trio.lowlevel.checkpoint()  # the cancellation takes effect here

                nursery.start_soon(conn.watch_peer, on_gone)
                try:
                    await self.daemon.chat(model, call.request, send)
                except Exception:
                    log.exception("HTTP request for %s failed inside the daemon", model)
                    await send(
                        [
                            ErrorEvent(
                                kind=ErrorKind.INTERNAL, message="internal error in the daemon (see its log)"
                            )
                        ]
                    )
                if not responder.finished:
                    await send(
                        [ErrorEvent(kind=ErrorKind.INTERNAL, message="the answer ended without a finish")]
                    )
                nursery.cancel_scope.cancel()
        if gone:
            conn.close_after = True
            if conn.stalled:
                log.info("an HTTP client stopped reading its answer; the request was cancelled")

    # ------------------------------------------------------------ token counts

    async def _count_tokens(self, conn: _Connection, body: bytes) -> None:
        """`POST /v1/messages/count_tokens`: a member's own count, or an honest error, never a made-up number."""
        try:
            parsed = anthropic.parse_messages_request(count_body(body))
        except BadRequest as e:
            return await conn.write(anthropic.bad_request(e), end=True)
        if self.daemon.stopping:
            return await conn.write(anthropic.error_response(503, "the daemon is stopping"), end=True)
        with self.daemon.tracking():
            result = await self.daemon.count_tokens(parsed.model, parsed.request)
        await conn.write(count_reply(result), end=True)


# ------------------------------------------------------------------ token counts (pure)

# A count request has no max_tokens, which the Messages parser requires: this stands in
# (room for a thinking budget; what the dialects send to count leaves it out).
COUNT_MAX_TOKENS = 32_000


def count_body(body: bytes) -> bytes:
    """A count_tokens body as a Messages body: `max_tokens` added when it has none.

    Anything that is not a JSON object goes on as it is, for the parser to refuse.
    """
    try:
        data = decode_bounded(msgspec.json.decode, body)
    except (msgspec.DecodeError, TooDeep):
        return body
    if not isinstance(data, dict) or "max_tokens" in data:
        return body
    thinking = data.get("thinking")
    budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
    room = budget + 4096 if isinstance(budget, int) and budget >= COUNT_MAX_TOKENS else COUNT_MAX_TOKENS
    return msgspec.json.encode({**data, "max_tokens": room})


def count_reply(result: CountResult) -> list[Out]:
    """The count as Anthropic answers it, or the reason there is none in its error envelope.

    No member can count, or no such model: 404 (the client counts for itself, as it
    would against any server without the endpoint). Members that could count failed:
    502; they are all cooling down: 503 with the wait.
    """
    if result.outcome == "counted":
        provider = result.member.partition("/")[0]
        return json_reply(200, {"input_tokens": result.input_tokens}, [(PROVIDER_HEADER, provider)])
    if result.outcome in ("unknown_model", "unsupported"):
        return anthropic.error_response(404, result.message)
    if result.outcome == "cooling":
        out = anthropic.error_response(503, result.message)
        return with_headers(out, retry_after_header(result.retry_after))
    return anthropic.error_response(502, result.message)
