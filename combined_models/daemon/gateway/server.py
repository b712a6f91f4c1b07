"""The front door's I/O: HTTP/1.1 (h11) over trio, one task per connection, keep-alive.

Every chat request goes through `Supervisor.chat` in the connection's own task,
so the supervisor's events are written by the one task that owns the
connection. A second task only reads while a request is answered, to notice a
client that goes away: that cancels the request, which closes its upstream.
The translation to and from each dialect lives in the sans-IO modules beside this one.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import h11
import msgspec
import trio

from ... import __version__
from ...chat import ChatRequest, ErrorEvent, StreamEvent
from . import anthropic, openai
from .auth import authorized, load_token, split_listen
from .common import BadRequest, Head, Out, Responder, json_reply

if TYPE_CHECKING:
    from ..server import Server

log = logging.getLogger("combined_models.gateway")

MAX_BODY = 32 * 1024 * 1024  # Anthropic's own limit; images and PDFs travel inline
MAX_HEADERS = 64 * 1024
MAX_READ_AHEAD = 1024 * 1024  # bytes a client may pipeline while its answer streams; then we stop reading
RECEIVE_SIZE = 65536
REQUEST_TIMEOUT = 30.0  # the first request must arrive whole within this
KEEPALIVE_TIMEOUT = 120.0  # an idle keep-alive connection waits this long for its next request
SERVER_HEADER = ("server", f"combined-models/{__version__}")


class _Connection:
    """One accepted socket: an h11 state machine, written by the connection task only."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS)
        self.peer_closed = False
        self.close_after = False  # end the connection once the current response is out

    async def _receive(self) -> int:
        try:
            data = await self.stream.receive_some(RECEIVE_SIZE)
        except trio.BrokenResourceError:  # a reset: the peer is gone all the same
            data = b""
        if not data:
            self.peer_closed = True
        self.h11.receive_data(data)
        return len(data)

    async def next_request(self) -> tuple[h11.Request, bytes] | None:
        """The next request and its whole body; None once the peer closed between requests."""
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                if self.h11.they_are_waiting_for_100_continue:
                    await self.send(h11.InformationalResponse(status_code=100, headers=[SERVER_HEADER]))
                await self._receive()
            elif isinstance(event, h11.Request):
                request = event
                for name, value in event.headers:
                    if name == b"content-length" and int(value) > MAX_BODY:
                        raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None
            else:  # PAUSED cannot happen: a new cycle starts only after the last one finished
                raise h11.RemoteProtocolError(f"unexpected {event!r}", error_status_hint=400)

    async def watch_peer(self, on_gone: Callable[[], None]) -> None:
        """Read while an answer is written; call `on_gone` when the client closes or resets."""
        read = 0
        while not self.peer_closed:
            if read > MAX_READ_AHEAD:
                await trio.sleep_forever()  # bounded: a dead peer still shows on the next write
            read += await self._receive()
        on_gone()

    async def send(self, *events: h11.Event) -> None:
        data = b"".join(self.h11.send(e) or b"" for e in events)
        if data:
            await self.stream.send_all(data)

    async def write(self, out: list[Out], *, end: bool) -> None:
        """Head and body bytes in one write; `end` closes the body."""
        events: list[h11.Event] = []
        for item in out:
            if isinstance(item, Head):
                headers = [*item.headers, SERVER_HEADER]
                if self.close_after:
                    headers.append(("connection", "close"))
                events.append(h11.Response(status_code=item.status, headers=headers))
            elif item:
                events.append(h11.Data(data=item))
        if end:
            events.append(h11.EndOfMessage())
        await self.send(*events)

    def next_cycle(self) -> bool:
        """Ready for the next request on this connection; False when it must close instead."""
        if self.close_after or self.peer_closed:
            return False
        if self.h11.states != {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}:
            return False
        self.h11.start_next_cycle()
        return True


_ID_PREFIX = secrets.token_hex(8)  # per process; the counter makes each id unique within it
_ids = itertools.count(1)


def _new_id(prefix: str) -> str:
    return f"{prefix}{_ID_PREFIX}{next(_ids):08x}"


class Gateway:
    """The OpenAI- and Anthropic-compatible HTTP front door of one daemon.

    Start it with `await nursery.start(gateway.run)`. If its address cannot be
    bound it logs a warning and stays off (`address` empty); the socket keeps working.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.supervisor = server.supervisor
        self.config = server.supervisor.cfg.http
        self.address = ""  # host:port once listening
        self.error = ""  # why it is not listening although the config turns it on
        self.token = ""
        self.created = int(time.time())
        self._accepting = trio.CancelScope()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            self.token = load_token(self.config)
            host, port = split_listen(self.config.listen)
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as e:
            self.error = f"cannot listen on {self.config.listen}: {e.strerror or e}"
            log.warning("HTTP front door off: %s", self.error)
            task_status.started()
            return
        for extra in listeners[1:]:  # a name with several addresses: keep one, so there is one port
            await extra.aclose()
        name = listeners[0].socket.getsockname()
        self.address = f"[{name[0]}]:{name[1]}" if ":" in name[0] else f"{name[0]}:{name[1]}"
        log.info("HTTP front door on http://%s", self.address)
        async with trio.open_nursery() as connections:
            task_status.started()
            with self._accepting:
                await trio.serve_listeners(self._serve, listeners[:1], handler_nursery=connections)
            # Stopped accepting (the daemon is stopping): answers under way finish in `connections`.

    def stop_accepting(self) -> None:
        self._accepting.cancel()

    # ------------------------------------------------------------ connections

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = _Connection(stream)
        try:
            # One scope for the connection's life; its deadline bounds each wait for a request
            # (no whole request in time: an idle keep-alive or a stuck client) and not the answers.
            with trio.move_on_after(REQUEST_TIMEOUT) as waiting:
                while True:
                    got = await conn.next_request()
                    if got is None:
                        return  # the client closed
                    waiting.deadline = math.inf
                    await self._respond(conn, *got)
                    if not conn.next_cycle():
                        return
                    waiting.deadline = trio.current_time() + KEEPALIVE_TIMEOUT
        except h11.RemoteProtocolError as e:
            if conn.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                conn.close_after = True
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await conn.write(openai.error_response(e.error_status_hint, str(e)), end=True)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _respond(self, conn: _Connection, request: h11.Request, body: bytes) -> None:
        method = request.method.decode("ascii", "replace")
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
        # Anthropic's SDKs send `anthropic-version` and `x-api-key`; errors answer in the caller's shape.
        claude = path.startswith("/v1/messages") or "anthropic-version" in headers or "x-api-key" in headers
        if self.server.stopping:
            conn.close_after = True
        log.debug("%s %s", method, path)
        if path == "/health":
            return await self._health(conn, method, authorized(headers, self.token))
        if not authorized(headers, self.token):
            return await conn.write(anthropic.unauthorized() if claude else openai.unauthorized(), end=True)
        if path in ("/v1/chat/completions", "/chat/completions"):
            if method != "POST":
                return await self._not_allowed(conn, claude, "POST")
            return await self._openai_chat(conn, body)
        if path == "/v1/messages":
            if method != "POST":
                return await self._not_allowed(conn, claude, "POST")
            return await self._anthropic_chat(conn, body)
        if path in ("/v1/models", "/models") or path.startswith(("/v1/models/", "/models/")):
            if method != "GET":
                return await self._not_allowed(conn, claude, "GET")
            return await self._models(conn, path, claude)
        message = f"no endpoint {method} {path} (try /v1/chat/completions, /v1/messages or /v1/models)"
        await conn.write(self._error(claude, 404, message), end=True)

    @staticmethod
    def _error(claude: bool, status: int, message: str) -> list[Out]:
        return anthropic.error_response(status, message) if claude else openai.error_response(status, message)

    async def _not_allowed(self, conn: _Connection, claude: bool, allow: str) -> None:
        out = self._error(claude, 405, f"method not allowed; use {allow}")
        head = out[0]
        assert isinstance(head, Head)
        out[0] = Head(head.status, [*head.headers, ("allow", allow)])
        await conn.write(out, end=True)

    async def _health(self, conn: _Connection, method: str, full: bool) -> None:
        status = self.server.status()
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

    async def _models(self, conn: _Connection, path: str, claude: bool) -> None:
        info = self.supervisor.models_info()
        wanted = path.split("/models", 1)[1].lstrip("/")
        if not wanted:
            body = (
                anthropic.models_list(info, self.created)
                if claude
                else openai.models_list(info, self.created)
            )
            return await conn.write(json_reply(200, body), end=True)
        if not any(m.id == wanted for m in info.models):
            return await conn.write(self._error(claude, 404, f"model {wanted!r} not found"), end=True)
        one = (
            anthropic.model_object(wanted, self.created)
            if claude
            else openai.model_object(wanted, self.created)
        )
        await conn.write(json_reply(200, one), end=True)

    # ------------------------------------------------------------ chat

    async def _openai_chat(self, conn: _Connection, body: bytes) -> None:
        try:
            parsed = openai.parse_chat_request(body)
        except BadRequest as e:
            return await conn.write(openai.bad_request(e), end=True)
        rid, created = _new_id("chatcmpl-"), int(time.time())
        responder: Responder = (
            openai.ChunkResponder(rid, created, include_usage=parsed.include_usage)
            if parsed.stream
            else openai.CompletionResponder(rid, created)
        )
        await self._chat(conn, parsed.model, parsed.request, responder)

    async def _anthropic_chat(self, conn: _Connection, body: bytes) -> None:
        try:
            parsed = anthropic.parse_messages_request(body)
        except BadRequest as e:
            return await conn.write(anthropic.bad_request(e), end=True)
        rid = _new_id("msg_")
        responder: Responder = (
            anthropic.MessageStreamResponder(rid) if parsed.stream else anthropic.MessageResponder(rid)
        )
        await self._chat(conn, parsed.model, parsed.request, responder)

    async def _chat(self, conn: _Connection, model: str, request: ChatRequest, responder: Responder) -> None:
        """Serve one chat request through the supervisor, writing as the events arrive."""
        if self.server.stopping:
            out = responder.feed(ErrorEvent(kind="shutting_down", message="the daemon is stopping"))
            return await conn.write(out, end=True)
        gone = False
        with self.server.tracking():
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
                    await self.supervisor.chat(model, request, send)
                except Exception:
                    log.exception("HTTP request for %s failed inside the daemon", model)
                    await send(
                        [ErrorEvent(kind="internal", message="internal error in the daemon (see its log)")]
                    )
                if not responder.finished:
                    await send([ErrorEvent(kind="internal", message="the answer ended without a finish")])
                nursery.cancel_scope.cancel()
        if gone:
            conn.close_after = True
