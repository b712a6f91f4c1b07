"""Minimal clients (HTTP/1.1 with h11, and raw socket frames): cheap, so the daemon's share shows."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import h11
import trio

from combined_models.chat import ChatRequest, DoneEvent, Message, TextEvent
from combined_models.protocol import (
    PROTOCOL_VERSION,
    Chat,
    Error,
    Event,
    FrameDecoder,
    Hello,
    ServerFrame,
    Welcome,
    encode_frame,
    server_decoder,
)

_CONTENT = re.compile(rb'"content":"[^"]')  # a chunk carrying text, not the empty role chunk


@dataclass
class Result:
    status: int
    first_token: float | None  # seconds from sending to the first text
    body: bytes


class Http1:
    """One connection, one request at a time."""

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self.stream = stream
        self.host = host
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, address: str) -> Http1:
        host, _, port = address.rpartition(":")
        return cls(await trio.open_tcp_stream(host, int(port)), address)

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def post(self, target: str, body: bytes, headers: list[tuple[str, str]] | None = None) -> Result:
        request = h11.Request(
            method="POST",
            target=target,
            headers=[
                ("host", self.host),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
                *(headers or []),
            ],
        )
        started = time.perf_counter()
        events = (request, h11.Data(data=body), h11.EndOfMessage())
        await self.stream.send_all(b"".join(self.h11.send(e) or b"" for e in events))
        status, first, buf = 0, None, bytearray()
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                start = max(0, len(buf) - 16)
                buf += event.data
                if first is None and _CONTENT.search(buf, start):
                    first = time.perf_counter() - started
            elif isinstance(event, h11.EndOfMessage):
                self.h11.start_next_cycle()
                return Result(status, first, bytes(buf))
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the server closed the connection mid-response")


class Native:
    """One connection to the daemon's socket speaking raw frames: as cheap a client as `Http1`."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.frames: list[ServerFrame] = []
        self.next_id = 1

    @classmethod
    async def open(cls, path: str) -> Native:
        self = cls(await trio.open_unix_socket(path))
        await self.stream.send_all(encode_frame(Hello(version=PROTOCOL_VERSION, client="bench")))
        if not isinstance(await self._frame(), Welcome):
            raise ConnectionError("no welcome from the daemon")
        return self

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def _frame(self) -> ServerFrame:
        while not self.frames:
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("the daemon closed the connection")
            self.frames += [server_decoder.decode(b) for b in self.decoder.feed(data)]
        return self.frames.pop(0)

    async def chat(self, model: str, prompt: str) -> tuple[float | None, str, bool]:
        """(seconds to the first text, the text, whether it ended with done)."""
        rid, self.next_id = self.next_id, self.next_id + 1
        request = ChatRequest(messages=[Message("user", prompt)])
        started = time.perf_counter()
        await self.stream.send_all(encode_frame(Chat(id=rid, model=model, request=request)))
        first, text = None, ""
        while True:
            frame = await self._frame()
            if isinstance(frame, Error):
                return first, text, False
            if isinstance(frame, Event) and isinstance(frame.event, TextEvent):
                first = time.perf_counter() - started if first is None else first
                text += frame.event.text
            elif isinstance(frame, Event) and isinstance(frame.event, DoneEvent):
                return first, text, True
