"""`AsyncClient`: the daemon's socket from asyncio or trio programs (built on anyio).

One connection carries many concurrent requests: a reader task routes every
frame to its request by id, and when the connection dies every waiter fails
with `ConnectionClosed`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import msgspec
from anyio.streams.memory import MemoryObjectSendStream

from ..chat import ChatRequest, DoneEvent, ErrorEvent, StreamEvent
from ..paths import socket_path as default_socket_path
from ..protocol import (
    Cancel,
    Chat,
    ClientFrame,
    Error,
    Event,
    FrameDecoder,
    ModelsInfo,
    ModelsQuery,
    ModelsReply,
    Ok,
    Reload,
    ReloadInfo,
    ReloadReply,
    ServerFrame,
    Shutdown,
    StatusInfo,
    StatusQuery,
    StatusReply,
    Welcome,
    encode_frame,
    server_decoder,
)
from .sync import (
    ConnectionClosed,
    DaemonUnavailable,
    Handshake,
    check_same_user,
    error_event,
    locate,
    make_request,
)

_Item = ServerFrame | ConnectionClosed


class AsyncClient:
    """Use as `async with open_client(path) as client:`; `client.chat(...)` streams events."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream
        self._lock = anyio.Lock()
        self._ids = itertools.count(1)
        self._routes: dict[int, MemoryObjectSendStream[_Item]] = {}
        self._closed: ConnectionClosed | None = None
        self.welcome: Welcome | None = None

    async def _send(self, frame: ClientFrame) -> None:
        if self._closed is not None:
            raise self._closed
        async with self._lock:
            try:
                await self._stream.send(encode_frame(frame))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
                raise ConnectionClosed(f"connection to the daemon broke: {e!r}") from None

    async def _read_loop(self, decoder: FrameDecoder) -> None:
        reason = ConnectionClosed("the daemon closed the connection")
        try:
            while True:
                try:
                    data = await self._stream.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return
                for body in decoder.feed(data):
                    frame = server_decoder.decode(body)
                    if isinstance(frame, Error) and frame.id == 0:
                        reason = ConnectionClosed(f"{frame.kind}: {frame.message}")
                        return
                    route = self._routes.get(getattr(frame, "id", -1))
                    if route is not None:
                        try:
                            await route.send(frame)
                        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                            pass  # that request's consumer went away
        except msgspec.DecodeError as e:
            reason = ConnectionClosed(f"undecodable frame from the daemon: {e}")
        finally:
            self._closed = reason
            for route in list(self._routes.values()):
                with contextlib.suppress(
                    anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError
                ):
                    route.send_nowait(reason)
                route.close()
            self._routes.clear()

    @asynccontextmanager
    async def _route(self, rid: int) -> AsyncIterator[anyio.abc.ObjectReceiveStream[_Item]]:
        send, receive = anyio.create_memory_object_stream[_Item](256)
        self._routes[rid] = send
        try:
            async with receive:
                yield receive
        finally:
            self._routes.pop(rid, None)
            send.close()

    async def _next(self, receive: anyio.abc.ObjectReceiveStream[_Item]) -> ServerFrame:
        try:
            item = await receive.receive()
        except anyio.EndOfStream:
            raise self._closed or ConnectionClosed("the daemon closed the connection") from None
        if isinstance(item, ConnectionClosed):
            raise item
        return item

    async def _query(self, frame: StatusQuery | ModelsQuery | Shutdown | Reload) -> ServerFrame:
        async with self._route(frame.id) as receive:
            await self._send(frame)
            return await self._next(receive)

    async def status(self) -> StatusInfo:
        reply = await self._query(StatusQuery(id=next(self._ids)))
        if not isinstance(reply, StatusReply):
            raise ConnectionClosed(f"unexpected reply {type(reply).__name__}")
        return reply.status

    async def models(self) -> ModelsInfo:
        reply = await self._query(ModelsQuery(id=next(self._ids)))
        if not isinstance(reply, ModelsReply):
            raise ConnectionClosed(f"unexpected reply {type(reply).__name__}")
        return reply.models

    async def reload_config(self) -> ReloadInfo:
        """Have the daemon re-read its config file and apply it; the result says what changed or why not."""
        reply = await self._query(Reload(id=next(self._ids), config=True))
        if isinstance(reply, ModelsReply):  # a daemon from before `config` listed models instead
            raise ConnectionClosed("the daemon cannot reload its config (too old: restart it)")
        if not isinstance(reply, ReloadReply):
            raise ConnectionClosed(f"unexpected reply {type(reply).__name__}")
        return reply.result

    async def shutdown(self) -> None:
        reply = await self._query(Shutdown(id=next(self._ids)))
        if not isinstance(reply, Ok):
            raise ConnectionClosed(f"unexpected reply {type(reply).__name__}")

    async def chat(
        self,
        model: str,
        prompt: str | ChatRequest,
        *,
        system: str | None = None,
        max_tokens: int | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Stream the events of one answer; the last is `done` or `error`. Leaving early cancels it."""
        rid = next(self._ids)
        request = make_request(prompt, system=system, max_tokens=max_tokens)
        finished = False
        async with self._route(rid) as receive:
            await self._send(Chat(id=rid, model=model, request=request))
            try:
                while True:
                    frame = await self._next(receive)
                    if isinstance(frame, Error):
                        finished = True
                        yield error_event(frame)
                        return
                    if isinstance(frame, Event):
                        finished = isinstance(frame.event, DoneEvent)
                        yield frame.event
                        if finished:
                            return
            finally:
                if not finished and self._closed is None:
                    with anyio.CancelScope(shield=True):
                        try:
                            await self._send(Cancel(id=rid))
                        except ConnectionClosed:
                            pass


@asynccontextmanager
async def open_client(socket_path: str | os.PathLike[str] | None = None) -> AsyncIterator[AsyncClient]:
    """Connect, greet, run the reader; close everything on exit."""
    path = Path(socket_path) if socket_path else default_socket_path()
    found = locate(path)  # an endpoint file (the tcp transport) or None (a Unix socket); tiny, read at once
    stream: anyio.abc.SocketStream
    try:
        if found is not None:
            stream = await anyio.connect_tcp(found[0].host, found[0].port)
        else:
            stream = await anyio.connect_unix(str(path))
    except OSError as e:
        raise DaemonUnavailable(f"no daemon at {path} ({e.strerror or e})") from None
    async with stream:
        if found is None:
            check_same_user(stream.extra(anyio.abc.SocketAttribute.raw_socket), path)
        client = AsyncClient(stream)
        decoder = FrameDecoder()
        handshake = (
            Handshake(found[1], found[0].address, "combined-models-async")
            if found is not None
            else Handshake("", "", "combined-models-async")
        )
        await client._send(handshake.hello)
        # The welcome arrives before any reply; read it before starting the router.
        while True:
            try:
                data = await stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError) as e:
                raise ConnectionClosed("the daemon closed the connection during the handshake") from e
            bodies = decoder.feed(data)
            if bodies:
                break
        first = server_decoder.decode(bodies[0])
        if isinstance(first, Error):
            raise ConnectionClosed(f"{first.kind}: {first.message}")
        if not isinstance(first, Welcome):
            raise ConnectionClosed(f"unexpected first frame: {first!r}")
        handshake.check(first)  # before any other frame is sent; leaving closes the stream
        client.welcome = first
        async with anyio.create_task_group() as tg:
            tg.start_soon(client._read_loop, decoder)
            try:
                yield client
            finally:
                tg.cancel_scope.cancel()


__all__ = ["AsyncClient", "ConnectionClosed", "DaemonUnavailable", "ErrorEvent", "open_client"]
