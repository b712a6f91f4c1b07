"""The chat path's HTTP/1.1 client: h11 over trio streams, with a keep-alive pool per provider.

Why not httpx here: its client and transport layers cost about half a millisecond
per streamed request on loopback (measured against h11 alone), which was most of
the time the daemon added to the first token. A chat attempt needs little of what
they offer: one POST, a streamed body, keep-alive, TLS. httpx stays for everything
else (model listings, token exchanges, metadata), and its TLS policy is used here.

No proxies (the actor's httpx client never used the environment's either), no
HTTP/2, no redirects, no cookies. Timeouts other than connecting are the caller's
cancel scopes.
"""

from __future__ import annotations

import functools
import select
import ssl
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import h11
import trio

from .. import __version__
from .accept import RESOURCE_ERRNOS
from .dialects.urls import DEFAULT_PORTS, host_header

RECEIVE_SIZE = 65536
MAX_IDLE_PER_ORIGIN = 64
KEEPALIVE_EXPIRY = 30.0  # seconds an idle connection is kept; servers close theirs after a minute or more
USER_AGENT = f"combined-models/{__version__}"
# A compressed body is inflated no further than this: a few kilobytes of deflate can claim gigabytes.
MAX_INFLATED_BODY = 64 * 1024 * 1024


class ConnectFailed(Exception):
    """No connection could be made (name, refusal, timeout, TLS handshake): nothing was sent."""


class LocalShortage(ConnectFailed):
    """This process or machine ran out of descriptors or memory: nothing was sent, and no provider is to blame."""


class ConnectionBroken(Exception):
    """The connection failed or broke the protocol after it was made."""


@dataclass(frozen=True, slots=True)
class Target:
    """One URL, split once for the wire."""

    scheme: str
    host: str
    port: int
    authority: str  # the Host header: port only when not the scheme's default
    path: str  # path and query, as sent on the request line

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port


@functools.lru_cache(maxsize=256)
def parse_target(url: str) -> Target:
    """Each distinct URL parsed once; raises ValueError for what this client cannot reach."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port if parts.port is not None else DEFAULT_PORTS[parts.scheme]
    return Target(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port,
        authority=host_header(parts.scheme, parts.hostname, port),
        path=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
    )


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's own verification policy (its CA bundle), built once per process and shared by every
    provider's clients, this one and httpx's: building one takes ~50 ms."""
    import httpx

    context = httpx.create_ssl_context(trust_env=False)
    context.set_alpn_protocols(["http/1.1"])
    return context


class _Connection:
    def __init__(
        self, stream: trio.abc.Stream, sock: trio.SocketStream, origin: tuple[str, str, int]
    ) -> None:
        self.stream = stream
        self.socket = sock  # the TCP stream under any TLS, to check an idle one for a close
        self.origin = origin
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0

    def looks_closed(self) -> bool:
        """An idle keep-alive connection that is readable has been closed by the server (or is broken)."""
        # poll, not select: a busy daemon's descriptors go past select's 1024.
        poller = select.poll()
        try:
            poller.register(self.socket.socket.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    def close_now(self) -> None:
        """Close without waiting: no TLS close_notify (an idle connection owes the server nothing)."""
        self.socket.socket.close()


class Response:
    """A response whose body is read as it arrives. Close it (`aclose`) in every case."""

    def __init__(self, pool: Pool, conn: _Connection, head: h11.Response) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self.status = head.status_code
        headers: dict[str, str] = {}
        for name, value in head.headers:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self.headers = headers  # names lower-cased; repeated fields joined, as httpx does
        self._complete = False
        self._error: ConnectionBroken | None = None  # held back until the bytes before it are out
        self._decoder = _content_decoder(headers.get("content-encoding", ""), MAX_INFLATED_BODY)

    async def next_chunk(self) -> bytes | None:
        """The body bytes that have arrived (waiting for some), or None at its end.

        Raises ConnectionBroken if the connection breaks or the body is malformed.
        """
        conn = self._conn
        if self._error is not None:
            raise self._error
        if conn is None or self._complete:
            return None
        parts: list[bytes] = []
        # Everything already received, in one piece: one decode per read, not one per HTTP chunk.
        while True:
            try:
                event = conn.h11.next_event()
                while event is h11.NEED_DATA and not parts:
                    conn.h11.receive_data(bytes(await conn.stream.receive_some(RECEIVE_SIZE)))
                    event = conn.h11.next_event()
            except h11.ProtocolError as e:
                self._error = ConnectionBroken(f"the response body broke off: {e}")
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                self._error = ConnectionBroken(f"connection lost: {_reason(e)}")
            else:
                if isinstance(event, h11.Data):
                    parts.append(bytes(event.data))
                    continue
                if isinstance(event, h11.EndOfMessage):
                    self._complete = True
                elif event is not h11.NEED_DATA:  # ConnectionClosed, or a second response
                    self._error = ConnectionBroken("the server closed the connection before the body ended")
            break
        if not parts and self._error is not None:
            raise self._error
        data = b"".join(parts)
        if self._decoder is not None:
            data = self._decoder.decompress(data)
            if self._complete and not self._decoder.eof:
                raise ConnectionBroken("the compressed body ended early")
        if not data and self._complete:
            return None
        return data

    async def aclose(self) -> None:
        """Give the connection back when the body was read to its end; close it otherwise."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        done = conn.h11.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}
        # Bytes past the end of the body would be read as the next request's answer: not reused.
        if self._complete and done and not conn.h11.trailing_data[0]:
            conn.h11.start_next_cycle()
            self._pool.put_back(conn)
        else:
            await trio.aclose_forcefully(conn.stream)


def _reason(e: BaseException) -> str:
    """What went wrong, in words: trio's stream errors say it only in their cause (a reset, a TLS failure)."""
    cause = e.__cause__ if isinstance(e, trio.BrokenResourceError | trio.ClosedResourceError) else None
    if isinstance(cause, OSError) and cause.strerror and not isinstance(cause, ssl.SSLError):
        return cause.strerror  # "Connection reset by peer"
    return str(cause or e) or type(e).__name__


def _content_decoder(encoding: str, limit: int) -> _Inflate | None:
    """We ask for identity; a server that compresses anyway gets decoded (gzip and deflate)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _Inflate(limit)
    raise ConnectionBroken(f"unsupported content-encoding {encoding!r}")


class _Inflate:
    """gzip or zlib (header detected); for `deflate` without a header, raw deflate, as httpx reads it.

    Never inflates past `limit` bytes in all: zlib's `max_length` stops a bomb inside the call
    that would have inflated it, and the body is refused (ConnectionBroken).
    """

    def __init__(self, limit: int) -> None:
        self._zlib = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)
        self._first = True
        self._left = limit
        self._limit = limit

    @property
    def eof(self) -> bool:
        return self._zlib.eof

    def decompress(self, data: bytes) -> bytes:
        try:
            if self._first and data:
                self._first = False
                try:
                    return self._bounded(data)
                except zlib.error:
                    self._zlib = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
            return self._bounded(data)
        except zlib.error as e:
            raise ConnectionBroken(f"cannot decode the compressed body: {e}") from e

    def _bounded(self, data: bytes) -> bytes:
        # One byte more than allowed: getting it means the body is too large (and stops zlib there).
        out = self._zlib.decompress(data, self._left + 1)
        if len(out) > self._left:
            raise ConnectionBroken(f"the compressed body inflates past {self._limit} bytes")
        self._left -= len(out)
        return out


class LimitedBody:
    """A whole response body read as raw chunks: its content-encoding undone, at most `limit` bytes. Sans-IO.

    For answers read in one piece (model listings): `feed` the raw chunks, then `body()`.
    Raises ConnectionBroken past the limit, for a bad compressed body or an unsupported encoding.
    """

    def __init__(self, content_encoding: str, limit: int) -> None:
        self._decoder = _content_decoder(content_encoding, limit)
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, raw: bytes) -> None:
        data = raw if self._decoder is None else self._decoder.decompress(raw)
        self._size += len(data)
        if self._size > self._limit:
            raise ConnectionBroken(f"the body is larger than {self._limit} bytes")
        self._parts.append(data)

    def body(self) -> bytes:
        if self._decoder is not None and not self._decoder.eof:
            raise ConnectionBroken("the compressed body ended early")
        return b"".join(self._parts)


class Pool:
    """Keep-alive connections to the origins of one provider. Owned by that provider's actor."""

    def __init__(self, connect_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._closed = False

    def put_back(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.origin, [])
        if self._closed or len(idle) >= MAX_IDLE_PER_ORIGIN:
            conn.close_now()
            return
        conn.idle_since = trio.current_time()
        idle.append(conn)

    def _take_idle(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        now = trio.current_time()
        while idle:
            conn = idle.pop()  # the most recently used: the likeliest to be alive
            if now - conn.idle_since < KEEPALIVE_EXPIRY and not conn.looks_closed():
                return conn
            conn.close_now()
        return None

    async def _connect(self, target: Target) -> _Connection:
        try:
            with trio.fail_after(self.connect_timeout):
                sock = await trio.open_tcp_stream(target.host, target.port)
                stream: trio.abc.Stream = sock
                if target.scheme == "https":
                    tls = trio.SSLStream(
                        sock, tls_context(), server_hostname=target.host, https_compatible=True
                    )
                    try:
                        await tls.do_handshake()
                    except BaseException:
                        await trio.aclose_forcefully(sock)
                        raise
                    stream = tls
        except trio.TooSlowError:
            raise ConnectFailed(f"connect timeout after {self.connect_timeout:g}s") from None
        except (OSError, trio.BrokenResourceError) as e:
            if isinstance(e, OSError) and e.errno in RESOURCE_ERRNOS:
                raise LocalShortage(f"cannot open a connection here: {_reason(e)}") from e
            raise ConnectFailed(f"cannot connect to {target.authority}: {_reason(e)}") from e
        return _Connection(stream, sock, target.origin)

    async def stream(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Send a request; return once the response head is in. The body is read from the Response.

        Raises ConnectFailed (nothing was sent) or ConnectionBroken. A kept-alive
        connection the server has closed is noticed before it is used; one that
        breaks after the request went out is not retried here (the server may
        have taken it): that is the caller's failover to decide.
        """
        try:
            target = parse_target(url)
        except ValueError as e:
            raise ConnectFailed(str(e)) from None
        head = [
            ("host", target.authority),
            ("user-agent", USER_AGENT),
            ("accept-encoding", "identity"),
            *headers.items(),
            ("content-length", str(len(body))),
        ]
        try:
            request = h11.Request(method=method, target=target.path, headers=head)
        except h11.LocalProtocolError as e:  # a header with a line break, say: nothing is sent
            raise ConnectFailed(f"cannot send this request: {e}") from None
        conn = self._take_idle(target.origin) or await self._connect(target)
        try:
            payload = b"".join(
                conn.h11.send(e) or b"" for e in (request, h11.Data(data=body), h11.EndOfMessage())
            )
            await conn.stream.send_all(payload)
            while True:
                event = conn.h11.next_event()
                if event is h11.NEED_DATA:
                    conn.h11.receive_data(bytes(await conn.stream.receive_some(RECEIVE_SIZE)))
                elif isinstance(event, h11.Response):
                    return Response(self, conn, event)
                elif isinstance(event, h11.ConnectionClosed):
                    raise ConnectionBroken("the server closed the connection before answering")
                elif not isinstance(event, h11.InformationalResponse):  # 1xx are skipped
                    raise ConnectionBroken(f"unexpected {type(event).__name__} before the response head")
        except BaseException as e:  # the connection is not reusable, whatever went wrong
            await trio.aclose_forcefully(conn.stream)
            if isinstance(e, h11.ProtocolError):
                raise ConnectionBroken(f"malformed response: {e}") from e
            if isinstance(e, trio.BrokenResourceError | trio.ClosedResourceError | OSError):
                raise ConnectionBroken(f"connection lost before a response: {_reason(e)}") from e
            raise

    def close(self) -> None:
        """Close every idle connection; connections in use close when their responses do."""
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close_now()
        self._idle.clear()
