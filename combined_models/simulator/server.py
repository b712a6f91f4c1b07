"""The simulator: fake LLM providers over real HTTP/1.1 on loopback, with scripted faults."""

from __future__ import annotations

import contextlib
import functools
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal, TypedDict, Unpack

import h11
import msgspec
import trio

from ._http import HttpConnection, ResetConnection
from .answer import DEFAULT_TEXT, Answer, Piece, plan_answer
from .counting import CountEndpoint
from .dialects import BadRequest, Reply, Route, StreamEncoder, get_dialect
from .dialects.base import Context, HttpRequest, json_reply
from .faults import PREFILL_REJECTED, STREAM_ONLY_KINDS, Fault, FaultQueue, status_reply

Outcome = Literal[
    "pending",  # still being answered
    "completed",  # a full normal answer (stream with its finish signal and terminator)
    "error",  # an HTTP error status (scripted or not)
    "reset",  # the simulator reset the connection (scripted)
    "malformed",  # stream ended after an event that does not parse (scripted)
    "inband_error",  # stream ended with the dialect's in-band error (scripted)
    "truncated",  # stream ended without a finish signal (scripted)
    "disconnected",  # the client went away first
]


class RecordedRequest(msgspec.Struct, kw_only=True):
    """One chat request as the simulator saw it, and what became of it."""

    request_id: str  # also sent back as the x-request-id header
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # the decoded JSON body; None when it was not JSON
    fault: str | None = None  # kind of the fault this request drew from the queue
    status: int = 0  # HTTP status sent; 0 when no headers went out
    pieces: int = 0  # content chunks sent
    outcome: Outcome = "pending"
    disconnected: bool = False
    # The conversation as parsed, in a dialect-neutral form (see conversation.py); None until
    # the body parsed. {"system": str | None, "messages": [{"role", "parts": [{"type", ...}]}]}
    conversation: dict[str, Any] | None = None


class SimStats(msgspec.Struct, frozen=True, kw_only=True):
    chat_requests: int
    completed: int
    disconnects: int  # the client went away before the answer ended
    open_connections: int
    endpoint_requests: dict[str, int] = {}  # other requests by route ("models", "token", ...)


class _FaultCommand(msgspec.Struct):
    push: list[Fault] = []
    clear: bool = False


class SimulatorOptions(TypedDict, total=False):
    dialect: str
    models: Sequence[str]
    text: str
    api_key: str | None
    host: str
    port: int
    chunk_delay: float
    prefill: str
    echo_words: int
    name: str
    thinking: str
    aws_secret: str | None
    copilot_token_ttl: float
    copilot_poll_interval: int


async def _stall(seconds: float) -> None:
    if seconds > 0:
        await trio.sleep(seconds)
    else:
        await trio.sleep_forever()


class Simulator:
    """A fake provider speaking one dialect on one loopback port.

    Every chat request is answered with `text` (or its remainder when the request
    continues a cut answer), streamed word by word, unless a queued `Fault` says
    otherwise. Start it with `await nursery.start(sim.run)` or `open_simulator()`.

    dialect: "openai", "openrouter", "anthropic", "bedrock", "gemini" or "copilot".
    api_key: the key clients must send, as the dialect sends it (any key when None; for
        copilot, the GitHub OAuth token the token exchange requires).
    thinking: when set, every answer starts with this thinking text, as the dialect
        expresses thinking (with a signature where it has one).
    aws_secret: bedrock only; when set, SigV4-signed requests have their signature verified.
    copilot_token_ttl: copilot only; seconds a Copilot token from the exchange stays valid.
    copilot_poll_interval: copilot only; the `interval` the device flow tells clients to poll at.
    """

    def __init__(
        self,
        *,
        dialect: str = "openai",
        models: Sequence[str] = ("sim-model",),
        text: str = DEFAULT_TEXT,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        chunk_delay: float = 0.0,
        prefill: str = "accept",
        echo_words: int = 0,
        name: str = "sim",
        thinking: str = "",
        aws_secret: str | None = None,
        copilot_token_ttl: float = 1500.0,
        copilot_poll_interval: int = 5,
    ) -> None:
        if prefill not in ("accept", "ignore"):
            raise ValueError(f"prefill must be 'accept' or 'ignore', not {prefill!r}")
        self.dialect = get_dialect(dialect)
        self.models = tuple(models)
        self.text = text
        self.api_key = api_key
        self.host = host
        self.port = port  # the bound port once run() has started
        self.chunk_delay = chunk_delay
        self.prefill = prefill
        self.echo_words = echo_words
        self.name = name
        self.thinking = thinking
        self.aws_secret = aws_secret
        self.copilot_token_ttl = copilot_token_ttl
        self.copilot_poll_interval = copilot_poll_interval
        self.requests: list[RecordedRequest] = []
        self.endpoint_requests: dict[str, int] = {}
        # Token counts (Anthropic, Bedrock, Gemini): their records and a fault queue of their own.
        self.counting = CountEndpoint(self.dialect, name, self.endpoint_requests)
        self._faults = FaultQueue()
        self._created = int(time.time())
        self._completed = 0
        self._other_requests = 0
        self._disconnects = 0
        self._open_connections = 0
        self._disconnected = trio.Event()  # replaced after every disconnect

    @property
    def origin(self) -> str:
        """http://host:port of this server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The URL a vendor SDK takes as its base: http://127.0.0.1:PORT plus /v1 for openai,
        /api/v1 for openrouter, /v1beta for gemini, nothing for anthropic, bedrock and copilot."""
        return self.origin + self.dialect.base_path

    def push_fault(self, fault: Fault) -> None:
        """Queue `fault` for the next chat requests, after the faults already queued."""
        self._faults.push(fault)

    def expire_tokens(self) -> None:
        """Copilot: every short-lived token issued so far expires now (to test refreshing)."""
        expire = getattr(self.dialect, "expire_tokens", None)
        if expire is not None:
            expire()

    def clear_faults(self) -> None:
        self._faults.clear()

    def statistics(self) -> SimStats:
        return SimStats(
            chat_requests=len(self.requests),
            completed=self._completed,
            disconnects=self._disconnects,
            open_connections=self._open_connections,
            endpoint_requests=dict(self.endpoint_requests),
        )

    async def wait_disconnect(self, count: int) -> None:
        """Return once at least `count` clients have gone away before their answer ended."""
        while self._disconnects < count:
            await self._disconnected.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, report started, and serve until cancelled; every connection is closed on exit."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        for extra in listeners[1:]:  # a name with several addresses: keep one, so there is one port
            await extra.aclose()
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            serve = functools.partial(
                trio.serve_listeners, self._serve_connection, listeners[:1], handler_nursery=nursery
            )
            await nursery.start(serve)
            task_status.started()

    # Connections

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = HttpConnection(stream)
        self._open_connections += 1
        try:
            while (got := await conn.next_request()) is not None:
                await self._dispatch(conn, *got)
                if not conn.start_next_cycle():
                    break
        except h11.RemoteProtocolError as e:
            if conn.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(trio.BrokenResourceError):
                    await conn.send_reply(
                        e.error_status_hint, [("content-type", "text/plain")], str(e).encode()
                    )
        except trio.BrokenResourceError:
            pass  # the client reset the connection outside a chat answer
        finally:
            self._open_connections -= 1
            await conn.aclose()

    def _context(self) -> Context:
        return Context(
            models=self.models,
            api_key=self.api_key,
            created=self._created,
            now=time.time(),
            origin=self.origin,
            aws_secret=self.aws_secret,
            copilot_token_ttl=self.copilot_token_ttl,
            copilot_poll_interval=self.copilot_poll_interval,
        )

    async def _dispatch(self, conn: HttpConnection, request: h11.Request, body: bytes) -> None:
        method = request.method.decode("latin-1")
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        if (count := self.counting.route(method, path)) is not None:
            return await self.counting.answer(conn, count, request, body, self._context())
        if path.startswith("/_sim/"):
            reply = self._control(method, path, body)
            return await conn.send_reply(reply.status, reply.headers, reply.body)
        query_args = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        route = self.dialect.route(method, path, query_args)
        # Chat requests are numbered for the record; the others get an id of their own.
        if route is not None and route.kind == "chat":
            request_id = f"req_{self.name}_{len(self.requests) + 1}"
        else:
            self._other_requests += 1
            request_id = f"req_{self.name}_x{self._other_requests}"
        req = HttpRequest(
            method=method,
            target=target,
            path=path,
            query=query_args,
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers},
            body=body,
            request_id=request_id,
        )
        if route is None:
            reply = self.dialect.not_found(req)
        elif route.kind == "chat":
            return await self._chat(conn, req, route)
        else:
            key = route.name or route.kind
            self.endpoint_requests[key] = self.endpoint_requests.get(key, 0) + 1
            ctx = self._context()
            reply = self.dialect.check_auth(route, req, ctx) or self.dialect.serve(route, req, ctx)
        headers = [*reply.headers, (self.dialect.request_id_header, req.request_id)]
        await conn.send_reply(reply.status, headers, reply.body)

    def _control(self, method: str, path: str, body: bytes) -> Reply:
        """`POST /_sim/faults`, `GET /_sim/stats`, `GET /_sim/requests`: scripting from another process."""
        if method == "POST" and path == "/_sim/faults":
            try:
                command = msgspec.json.decode(body, type=_FaultCommand)
            except msgspec.DecodeError as e:
                return json_reply(400, {"error": str(e)})
            if command.clear:
                self.clear_faults()
            for fault in command.push:
                self.push_fault(fault)
            return json_reply(200, {"queued": len(self._faults)})
        if method == "GET" and path == "/_sim/stats":
            return json_reply(200, self.statistics())
        if method == "GET" and path == "/_sim/requests":
            return json_reply(200, self.requests)
        return json_reply(404, {"error": f"no control endpoint {method} {path}"})

    # Chat requests

    async def _chat(self, conn: HttpConnection, req: HttpRequest, route: Route) -> None:
        try:
            decoded = msgspec.json.decode(req.body) if req.body else None
        except msgspec.DecodeError:
            decoded = None
        record = RecordedRequest(
            request_id=req.request_id,
            method=req.method,
            path=req.path,
            headers=req.headers,
            body=decoded,
        )
        self.requests.append(record)
        fault = self._faults.take()
        record.fault = fault.kind if fault else None
        respond = functools.partial(self._answer, conn, record, fault, req, route)
        await self._watching_peer(conn, record, respond)

    async def _watching_peer(
        self, conn: HttpConnection, record: RecordedRequest, respond: Callable[[], Awaitable[None]]
    ) -> None:
        """Run `respond` while watching for EOF, so a client that leaves mid-answer is noticed at once."""
        gone = reset = False
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal gone
                await conn.wait_peer_closed()
                gone = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            try:
                await respond()
            except trio.BrokenResourceError:
                gone = True  # reset by the peer while we were writing
            except ResetConnection:
                reset = True
            nursery.cancel_scope.cancel()
        if reset:
            record.outcome = "reset"
            await conn.reset()
        elif gone and record.outcome == "pending":
            record.outcome = "disconnected"
            record.disconnected = True
            conn.close_after = True
            self._disconnects += 1
            self._disconnected.set()
            self._disconnected = trio.Event()

    async def _reply(self, conn: HttpConnection, record: RecordedRequest, reply: Reply) -> None:
        record.status = reply.status
        headers = [*reply.headers, (self.dialect.request_id_header, record.request_id)]
        outcome: Outcome = "completed" if reply.status < 400 else "error"
        await self._finishing(record, outcome, conn.send_reply(reply.status, headers, reply.body))

    async def _finishing(self, record: RecordedRequest, outcome: Outcome, last_send: Awaitable[None]) -> None:
        """Await the send that ends an answer, with `outcome` recorded before it.

        The client may act on the last bytes (and read statistics) before this task runs
        again, so the outcome is set first and taken back if the send fails.
        """
        record.outcome = outcome
        if outcome == "completed":
            self._completed += 1
        try:
            await last_send
        except BaseException:
            record.outcome = "pending"
            if outcome == "completed":
                self._completed -= 1
            raise

    async def _answer(
        self,
        conn: HttpConnection,
        record: RecordedRequest,
        fault: Fault | None,
        http: HttpRequest,
        route: Route,
    ) -> None:
        dialect, rid = self.dialect, record.request_id
        if fault is not None:  # faults that strike before the request is even looked at
            if fault.kind == "status":
                return await self._reply(conn, record, status_reply(self.dialect, fault, rid))
            if fault.kind == "reset_before_headers":
                raise ResetConnection
            if fault.kind == "stall_before":
                await _stall(fault.seconds)
        if (refusal := dialect.check_auth(route, http, self._context())) is not None:
            return await self._reply(conn, record, refusal)
        try:
            req = dialect.parse_chat(route, http.body)
        except BadRequest as e:
            return await self._reply(conn, record, dialect.error(400, str(e), request_id=rid))
        record.conversation = req.conversation
        if not dialect.model_known(req.model, self.models):
            return await self._reply(conn, record, dialect.unknown_model(req.model, rid))
        if fault is not None and fault.kind == "reject_prefill" and req.ends_with_assistant:
            message = fault.message or PREFILL_REJECTED
            return await self._reply(conn, record, dialect.error(400, message, request_id=rid))
        # Ids derive from the request id so a recorded request and its answer are easy to match.
        response_id = rid.replace("req_", dialect.response_id_prefix, 1)
        call_id = rid.replace("req_", dialect.tool_id_prefix, 1)
        created = int(time.time())
        answer = plan_answer(
            req,
            text=self.text,
            prefill=self.prefill if dialect.supports_prefill else "ignore",
            echo_words=self.echo_words,
            call_id=call_id,
            thinking=self.thinking,
        )
        if not req.stream:
            if fault is not None and fault.kind in STREAM_ONLY_KINDS:
                raise ResetConnection  # a stream fault on a one-shot answer: it breaks before any byte
            reply = dialect.completion(req, answer, response_id=response_id, created=created)
            return await self._reply(conn, record, reply)
        encoder = dialect.stream(req, answer, response_id=response_id, created=created)
        await self._stream(conn, record, answer, encoder, fault)

    async def _stream(
        self,
        conn: HttpConnection,
        record: RecordedRequest,
        answer: Answer,
        encoder: StreamEncoder,
        fault: Fault | None,
    ) -> None:
        kind = fault.kind if fault is not None and fault.kind in STREAM_ONLY_KINDS else None
        headers = [*encoder.headers, (self.dialect.request_id_header, record.request_id)]
        if kind == "malformed_after":
            headers.append(("connection", "close"))
            conn.close_after = True
        record.status = 200
        await conn.send(h11.Response(status_code=200, headers=headers))
        await conn.send_data(encoder.start())
        pieces = answer.pieces
        cut = len(pieces)  # where the fault strikes
        if fault is not None and kind is not None:
            cut = 0 if kind == "slow_first_token" else min(fault.after_chunks, len(pieces))
        await self._send_pieces(conn, record, encoder, pieces[:cut])
        if fault is not None:
            match kind:
                case "reset_after":
                    raise ResetConnection
                case "malformed_after":
                    return await self._end(conn, record, encoder.malformed(), "malformed")
                case "inband_error_after":
                    error = encoder.inband_error(fault.message, fault.code)
                    return await self._end(conn, record, error, "inband_error")
                case "no_terminator":
                    return await self._end(conn, record, b"", "truncated")
                case "stall_after":
                    await _stall(fault.seconds)
                case "slow_first_token":
                    await self._wait_with_keepalives(conn, encoder, fault.seconds)
        await self._send_pieces(conn, record, encoder, pieces[cut:])
        await self._end(conn, record, encoder.finish(), "completed")

    async def _send_pieces(
        self, conn: HttpConnection, record: RecordedRequest, encoder: StreamEncoder, pieces: Sequence[Piece]
    ) -> None:
        for piece in pieces:
            if record.pieces and self.chunk_delay:
                await trio.sleep(self.chunk_delay)
            await conn.send_data(encoder.piece(piece))
            record.pieces += 1

    async def _end(
        self, conn: HttpConnection, record: RecordedRequest, last: bytes, outcome: Outcome
    ) -> None:
        await self._finishing(record, outcome, conn.send(h11.Data(data=last), h11.EndOfMessage()))

    async def _wait_with_keepalives(
        self, conn: HttpConnection, encoder: StreamEncoder, seconds: float
    ) -> None:
        """Wait `seconds`, sending the dialect's keep-alive lines meanwhile (OpenRouter's comments)."""
        interval, line = self.dialect.keepalive_interval, encoder.keepalive()
        deadline = trio.current_time() + seconds
        while (left := deadline - trio.current_time()) > 0:
            await trio.sleep(min(interval, left) if interval and line else left)
            if line and trio.current_time() < deadline:
                await conn.send_data(line)


@contextlib.asynccontextmanager
async def open_simulator(**options: Unpack[SimulatorOptions]) -> AsyncIterator[Simulator]:
    """Run a `Simulator` (same keywords) in a nursery for the duration of the block."""
    sim = Simulator(**options)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        try:
            yield sim
        finally:
            nursery.cancel_scope.cancel()
