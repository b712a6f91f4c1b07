"""One server-side HTTP/1.1 connection: an h11 state machine over a trio socket stream."""

from __future__ import annotations

import socket
import struct

import h11
import trio

MAX_BODY = 16 * 1024 * 1024
_RECEIVE_SIZE = 65536


class ResetConnection(Exception):
    """Raised by a responder to end the connection with a TCP RST instead of an answer."""


class HttpConnection:
    """Reads requests and writes responses for one accepted socket.

    One task reads requests and writes; while it answers, `wait_peer_closed` may run in a
    second task, which only receives (and keeps what it reads for h11), so the two never
    contend for the same direction of the socket.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER)
        self.peer_closed = False
        self.close_after = False  # end the connection once the current response is out

    async def _receive(self) -> None:
        try:
            data = await self.stream.receive_some(_RECEIVE_SIZE)
        except trio.BrokenResourceError:  # ECONNRESET: the peer is gone just the same
            data = b""
        if not data:
            self.peer_closed = True
        self.h11.receive_data(data)

    async def next_request(self) -> tuple[h11.Request, bytes] | None:
        """The next request with its whole body; None once the peer has closed cleanly.

        Raises h11.RemoteProtocolError for a malformed request or one cut off midway.
        """
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                await self._receive()
            elif isinstance(event, h11.Request):
                request = event
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
                raise h11.RemoteProtocolError(f"unexpected {event!r}")

    async def wait_peer_closed(self) -> None:
        """Return once the peer has closed its side (EOF or reset)."""
        while not self.peer_closed:
            await self._receive()

    async def send(self, *events: h11.Event) -> None:
        data = b"".join(self.h11.send(e) or b"" for e in events)
        if data:
            await self.stream.send_all(data)

    async def send_data(self, data: bytes) -> None:
        if data:
            await self.send(h11.Data(data=data))

    async def send_reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        if status in (204, 304):
            body = b""
        else:
            headers = [*headers, ("content-length", str(len(body)))]
        await self.send(
            h11.Response(status_code=status, headers=headers), h11.Data(data=body), h11.EndOfMessage()
        )

    def start_next_cycle(self) -> bool:
        """Get ready for the next request on this connection; False when it must close instead."""
        if self.close_after or self.h11.states != {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}:
            return False
        self.h11.start_next_cycle()
        return True

    async def reset(self) -> None:
        """Close abruptly: SO_LINGER 0 makes close() send RST instead of FIN."""
        self.close_after = True
        self.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.aclose_forcefully(self.stream)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
