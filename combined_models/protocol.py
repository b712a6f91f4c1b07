"""The native wire protocol: msgpack frames over a Unix socket.

Each frame is a 4-byte big-endian length followed by that many bytes of
msgpack: one map whose `type` field names the frame. The first frame each way
is the handshake (`hello` / `welcome`, carrying the protocol version). Every
request carries a client-chosen `id`; replies and stream events carry the same
id, so one connection multiplexes many concurrent requests. See PROTOCOL.md.

Sans-IO: `FrameDecoder` takes bytes and returns frames; nothing here does I/O.
"""

from __future__ import annotations

import struct

import msgspec

from .chat import Attempt, ChatRequest, ErrorKind, StreamEvent

PROTOCOL_VERSION = 1
MAX_FRAME = 16 * 1024 * 1024  # images travel inline; anything larger is a broken peer
_LEN = struct.Struct(">I")


# ------------------------------------------------------------------ client → daemon


class Hello(msgspec.Struct, tag="hello", tag_field="type", kw_only=True):
    version: int
    client: str = ""
    # Over loopback TCP (`transport.py`): a fresh nonce (hex) and `proof`, HMAC-SHA256 of it under
    # the socket token; the token itself is never sent. Unix sockets need neither (peer credentials
    # prove the user) and leave them empty; a daemon that predates them ignores the fields.
    nonce: str = ""
    proof: str = ""


class Chat(msgspec.Struct, tag="chat", tag_field="type", kw_only=True):
    id: int
    model: str
    request: ChatRequest


class Cancel(msgspec.Struct, tag="cancel", tag_field="type", kw_only=True):
    id: int


class StatusQuery(msgspec.Struct, tag="status", tag_field="type", kw_only=True):
    id: int


class ModelsQuery(msgspec.Struct, tag="models", tag_field="type", kw_only=True):
    id: int


class Shutdown(msgspec.Struct, tag="shutdown", tag_field="type", kw_only=True):
    id: int


class Reload(msgspec.Struct, tag="reload", tag_field="type", kw_only=True):
    """List every provider's models again now; answered with `models_reply` once done.

    `config`: re-read the daemon's config file and apply it instead; answered with `reload_reply`.
    (A daemon that predates the field ignores it and answers `models_reply`.)
    """

    id: int
    config: bool = False


class ExplainQuery(msgspec.Struct, tag="explain", tag_field="type", kw_only=True):
    """Why the members of combined model `model` were grouped; answered with `explain_reply`."""

    id: int
    model: str


ClientFrame = Hello | Chat | Cancel | StatusQuery | ModelsQuery | Shutdown | Reload | ExplainQuery


# ------------------------------------------------------------------ daemon → client


class Welcome(msgspec.Struct, tag="welcome", tag_field="type", kw_only=True):
    version: int
    server: str
    pid: int
    # Over loopback TCP: HMAC-SHA256 of the hello's nonce under the socket token, with the server's
    # label (`transport.server_proof`); the client checks it before sending anything else. Empty
    # over a Unix socket.
    proof: str = ""


class Event(msgspec.Struct, tag="event", tag_field="type", kw_only=True):
    """One stream event of a chat request; the stream ends with a `done` event or an `error` frame."""

    id: int
    event: StreamEvent


class ModelHealth(msgspec.Struct, kw_only=True):
    model: str
    state: str
    cooldown_remaining_s: float
    reason: str = ""


class ProviderStatus(msgspec.Struct, kw_only=True):
    id: str
    state: str
    cooldown_remaining_s: float
    in_flight: int
    requests: int
    failures: int
    last_error: str | None
    api: str = ""
    last_error_kind: str | None = None
    success_rate: float | None = None  # over the recent requests; None before any
    failovers_saved: int = 0  # requests this provider finished after another one failed
    key_source: str = ""  # where the credential came from, never the credential
    models: list[ModelHealth] = msgspec.field(default_factory=list)
    catalog: str = ""  # where its model list came from: static, live, cached, none
    catalog_error: str | None = None  # why the last listing failed (the cached list is still served)
    models_offered: int = 0
    models_truncated: int = 0  # per-model entries left out of `models` so the reply fits in one frame
    cache_read_ratio: float | None = None  # share of its prompt tokens read from a cache; None before any
    pinned: int = 0  # conversations whose next turn comes here first (session affinity)


class DaemonInfo(msgspec.Struct, kw_only=True):
    pid: int
    version: str
    uptime_s: float
    socket: str = ""
    config: str = ""
    http: str = ""  # the HTTP front door's host:port; empty when it is off
    http_error: str = ""  # why the front door is off although the config turns it on (cannot bind)
    transport: str = ""  # how the socket door listens: "unix" or "tcp" (loopback, token handshake)


class SharedStatus(msgspec.Struct, kw_only=True):
    """The shared health backend (Valkey or Redis), when the config's `[shared]` names one."""

    state: str = "off"  # off, connecting, connected, down
    url: str = ""  # without any password
    last_error: str | None = None  # why it is down, or why it last went down
    facts_sent: int = 0
    facts_received: int = 0  # from other daemons (its own echoes are not counted)
    facts_applied: int = 0  # received facts that lengthened a cooldown here
    facts_dropped: int = 0  # facts not sent because the queue to the store was full
    reconnects: int = 0
    clock_skew_ms: int | None = None  # our clock minus the last sender's, delivery included; None before any


class StatusInfo(msgspec.Struct, kw_only=True):
    daemon: DaemonInfo
    providers: list[ProviderStatus]
    shared: SharedStatus = msgspec.field(default_factory=SharedStatus)


class Member(msgspec.Struct, kw_only=True, omit_defaults=True):
    provider: str
    model: str
    # From the optional models.dev metadata, when the config turns it on and it knows the model.
    context_window: int | None = None
    input_cost: float | None = None  # USD per million tokens
    output_cost: float | None = None


class CombinedModel(msgspec.Struct, kw_only=True):
    id: str
    members: list[Member]
    explicit: bool = False


class ModelsInfo(msgspec.Struct, kw_only=True):
    models: list[CombinedModel]
    truncated: bool = False  # some combined models were left out so the reply fits in one frame


class ReloadInfo(msgspec.Struct, kw_only=True):
    """What a config reload did: applied, or refused with the reason (the config stays as it was)."""

    applied: bool
    error: str = ""  # why it was refused: the config error naming the file and key, or the daemon's state
    changes: list[str] = msgspec.field(default_factory=list)  # a line per kind of change
    restart: list[str] = msgspec.field(default_factory=list)  # changed keys that need a restart


class StatusReply(msgspec.Struct, tag="status_reply", tag_field="type", kw_only=True):
    id: int
    status: StatusInfo


class ModelsReply(msgspec.Struct, tag="models_reply", tag_field="type", kw_only=True):
    id: int
    models: ModelsInfo


class ReloadReply(msgspec.Struct, tag="reload_reply", tag_field="type", kw_only=True):
    """The answer to `reload` with `config`: what it did (ask `models` for the combined models after)."""

    id: int
    result: ReloadInfo


class Ok(msgspec.Struct, tag="ok", tag_field="type", kw_only=True):
    id: int


class ExplainReply(msgspec.Struct, tag="explain_reply", tag_field="type", kw_only=True):
    id: int
    lines: list[str]


class Error(msgspec.Struct, tag="error", tag_field="type", kw_only=True):
    """A failed request (`id` > 0) or a broken connection (`id` 0: the daemon closes it next)."""

    id: int
    kind: ErrorKind
    message: str
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    retry_after_s: float | None = None


ServerFrame = Welcome | Event | StatusReply | ModelsReply | ExplainReply | ReloadReply | Ok | Error


# ------------------------------------------------------------------ codec

_encoder = msgspec.msgpack.Encoder()
client_decoder = msgspec.msgpack.Decoder(ClientFrame)
server_decoder = msgspec.msgpack.Decoder(ServerFrame)


class FrameTooLarge(ValueError):
    pass


def encode_frame(frame: ClientFrame | ServerFrame) -> bytes:
    body = _encoder.encode(frame)
    if len(body) > MAX_FRAME:
        raise FrameTooLarge(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return _LEN.pack(len(body)) + body


class FrameDecoder:
    """Length-prefixed frames out of a byte stream. Returns raw bodies; decode with the msgspec decoders."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        """Buffer `data`; return every complete frame body. Raises FrameTooLarge on an oversized length."""
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= 4:
            (size,) = _LEN.unpack_from(self._buf)
            if size > self._max:
                raise FrameTooLarge(f"frame of {size} bytes exceeds the {self._max}-byte limit")
            if len(self._buf) < 4 + size:
                break
            out.append(bytes(self._buf[4 : 4 + size]))
            del self._buf[: 4 + size]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)
