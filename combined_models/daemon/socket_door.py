"""The socket door: the msgpack protocol on the daemon's Unix socket, one task per connection.

Over the tcp transport (`transport.py`) each connection must first send a hello proving
it holds the socket token (a nonce and its HMAC under the token; at most MAX_HELLO bytes,
within the partial-frame timeout); until it has, nothing else is read, and anything else
gets one error and the connection closes. The welcome proves in turn that the daemon
holds the token (an HMAC of the same nonce under another label).

Requests are multiplexed by id. A malformed, oversized, too deeply nested or
wrong-typed frame gets an error frame and closes that connection; every other
client keeps working. Each connection and each request is a boundary
(`contained`): whatever fails inside stays there, answered with an `internal`
error where the client can still read. A connection that goes away, or stops
reading for `client_stall_timeout`, cancels its requests, which closes their
upstream requests at once. The door sees the daemon only through its facade.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket as pysocket
from collections.abc import AsyncIterator

import msgspec
import trio

from .. import __version__
from ..chat import ErrorEvent, ErrorKind, StreamEvent
from ..limits import MAX_DEPTH, TooDeep, check_request, decode_bounded
from ..peercred import peer_uid
from ..protocol import (
    PROTOCOL_VERSION,
    Cancel,
    Chat,
    ClientFrame,
    Error,
    Event,
    ExplainQuery,
    ExplainReply,
    FrameDecoder,
    FrameTooLarge,
    Hello,
    ModelsInfo,
    ModelsQuery,
    ModelsReply,
    Ok,
    Reload,
    ReloadReply,
    ServerFrame,
    Shutdown,
    StatusInfo,
    StatusQuery,
    StatusReply,
    Welcome,
    client_decoder,
    encode_frame,
)
from ..transport import (
    HANDSHAKE_FAILED,
    MAX_HELLO,
    TransportError,
    claimed_token,
    client_proof,
    proof_matches,
    server_proof,
    valid_nonce,
)
from .accept import Door
from .containment import contained
from .facade import DaemonFacade

log = logging.getLogger("combined_models.daemon")


class SocketDoor:
    """The socket door of one daemon: its accept loop and the connections it serves.

    Start it with `await nursery.start(door.run, sock)`. On stop, `stop_accepting`
    first; once the grace period is over, `hang_up` ends the connections left.
    """

    def __init__(self, daemon: DaemonFacade) -> None:
        self.daemon = daemon
        self.connections: set[Connection] = set()  # being served
        self.door = Door(
            "socket",
            lambda stream: Connection(stream, self).serve(),
            max_connections=daemon.limits.max_connections,
            log=log,
            refuse=_refuse_busy,
            accept_peer=_same_user,
        )
        self._accepting = trio.CancelScope()
        self._serving = trio.CancelScope()  # the accept loop and every connection
        self.transport = ""  # "unix" or "tcp", once running
        # Over TCP, the token each connection's hello must prove it holds before anything else is read.
        self.token: str | None = None

    async def run(
        self,
        sock: pysocket.socket,
        *,
        token: str | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on `sock` (bound and listening) and serve each connection, until `hang_up`.

        A Unix socket needs no token (peer credentials prove the user). Any other socket
        (loopback TCP) requires `token`: by default the one `claim_endpoint` made it with.
        """
        if sock.family == getattr(pysocket, "AF_UNIX", None):
            self.transport, self.token = "unix", None
        else:
            token = token or claimed_token(sock)
            if not token:
                raise TransportError("a TCP socket needs a token: claim it with `claim_endpoint`")
            self.transport, self.token = "tcp", token
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        with self._serving:
            async with trio.open_nursery() as connections:
                task_status.started()
                with self._accepting:
                    await self.door.serve(listener, connections)
                # Stopped accepting (the daemon is stopping): requests under way go on in `connections`.

    def stop_accepting(self) -> None:
        self._accepting.cancel()

    def hang_up(self) -> None:
        """End every connection now, writes to clients that stopped reading included."""
        for conn in list(self.connections):
            conn.hang_up()
        self._serving.cancel()


class Connection:
    """One client connection. Each request is its own boundary; writes go through one lock, each bounded in time."""

    def __init__(self, stream: trio.SocketStream, socket_door: SocketDoor) -> None:
        self.stream = stream
        self.socket_door = socket_door
        self.daemon = socket_door.daemon
        limits = self.daemon.limits
        self._stall_timeout = limits.client_stall_timeout
        self._partial_timeout = limits.partial_frame_timeout
        self._send_lock = trio.Lock()
        self._requests: dict[int, trio.CancelScope] = {}
        self._scope = trio.CancelScope()  # the reads and every request of this connection
        self._broken = False  # a write failed or stalled, maybe part-way: nothing more may be written
        self._writing: trio.CancelScope | None = None  # the write under way

    def hang_up(self) -> None:
        """End this connection: its requests are cancelled (closing their upstream requests)."""
        self._broken = True
        self._scope.cancel()
        if self._writing is not None:
            self._writing.cancel()

    async def send(self, *frames: ServerFrame) -> None:
        """Frames in one write. Raises FrameTooLarge (nothing written) when one cannot fit in a frame.

        A client that is gone, or takes no bytes for `client_stall_timeout`, ends the connection:
        `hang_up`, then this raises Cancelled, as if the client had gone away. That is what frees
        the provider slot a stuck reader holds: the provider relay does not time writes to us.
        """
        data = b"".join(encode_reply(f) for f in frames)
        # Not `async with`: the lock's own checkpoint is a trip round the event loop per frame.
        # A free lock is taken at once (send_all still checkpoints); a held one is waited for.
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        delivered = False
        try:
            if not self._broken:
                # Shielded: a request cancelled mid-write must not cut a frame in half on a stream
                # its neighbours share. Only a stall or `hang_up` ends a write.
                deadline = trio.current_time() + self._stall_timeout
                with trio.CancelScope(deadline=deadline, shield=True) as self._writing:
                    await self.stream.send_all(data)
                    delivered = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._writing = None
            self._send_lock.release()
        if not delivered:
            if not self._broken:
                log.debug("a client stopped reading or went away; closing its connection")
            self.hang_up()
            await trio.lowlevel.checkpoint()  # raises Cancelled in this connection's tasks
            raise trio.ClosedResourceError("the client connection is closed")  # reached only outside them

    async def serve(self) -> None:
        """Read frames and answer them until the client goes or breaks the protocol (a `Door` handler)."""
        failed = False

        def note(_: BaseException) -> None:
            nonlocal failed
            failed = True

        self.socket_door.connections.add(self)
        try:
            with self._scope, contained(log, "a socket connection", on_failure=note):
                async with trio.open_nursery() as nursery:
                    await self._read_loop(nursery)
                    nursery.cancel_scope.cancel()  # the client is gone: so are its requests
            if failed and not self._broken:
                with contained(log, "reporting a connection's failure"):
                    await self.send(Error(id=0, kind=ErrorKind.INTERNAL, message=INTERNAL_ERROR))
        finally:
            self.socket_door.connections.discard(self)

    async def _fail(self, kind: ErrorKind, message: str) -> None:
        """A connection-level error frame; the connection closes after it."""
        await self.send(Error(id=0, kind=kind, message=message))

    async def _receive(self, max_bytes: int = 65536) -> bytes:
        try:
            return await self.stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def _handshake(self, token: str) -> tuple[Hello, bytes] | None:
        """The first frame of a TCP connection: a hello proving it holds `token`, with the bytes read past it.

        Nothing else is read or handled before it. It must come whole within the partial-frame
        timeout (counted from the connection's start), hold at most MAX_HELLO bytes and carry a
        nonce (MIN_NONCE..MAX_NONCE hex digits) with its client proof under `token`; anything
        else gets one error, naming nothing about the token, and None (the connection closes).
        """
        buf = bytearray()
        size = -1
        with trio.move_on_after(self._partial_timeout):
            while size < 0 or len(buf) < 4 + size:
                data = await self._receive(4 + (size if size >= 0 else MAX_HELLO) - len(buf))
                if not data:
                    return None  # gone before greeting: nothing to answer
                buf += data
                if size < 0 and len(buf) >= 4:
                    size = int.from_bytes(buf[:4], "big")
                    if size > MAX_HELLO:
                        break
        frame: object = None
        if 0 <= size <= MAX_HELLO and len(buf) >= 4 + size:
            with contextlib.suppress(msgspec.DecodeError, TooDeep):
                frame = decode_bounded(client_decoder.decode, bytes(buf[4 : 4 + size]))
        if not isinstance(frame, Hello) or not _proves_token(frame, token):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._fail(ErrorKind.PROTOCOL_ERROR, HANDSHAKE_FAILED)
            return None
        return frame, bytes(buf[4 + size :])

    async def _greet(self, frame: ClientFrame, proof: str = "") -> bool:
        """Answer the first frame: a hello of our version gets `welcome` (with `proof`); else an error, and False."""
        if not isinstance(frame, Hello):
            await self._fail(ErrorKind.PROTOCOL_ERROR, "the first frame must be a hello")
            return False
        if frame.version != PROTOCOL_VERSION:
            await self._fail(
                ErrorKind.PROTOCOL_ERROR,
                f"protocol version {frame.version} not supported (this daemon speaks {PROTOCOL_VERSION})",
            )
            return False
        await self.send(
            Welcome(
                version=PROTOCOL_VERSION,
                server=f"combined-models {__version__}",
                pid=os.getpid(),
                proof=proof,
            )
        )
        return True

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        decoder = FrameDecoder()
        greeted = False
        pending = b""  # bytes read past the TCP handshake's hello
        token = self.socket_door.token
        if token is not None:
            shook = await self._handshake(token)
            if shook is None:
                return
            hello, pending = shook
            if not await self._greet(hello, server_proof(token, hello.nonce)):
                return
            greeted = True
        incomplete_since = 0.0  # when the first bytes of the frame still incomplete arrived
        while True:
            # An idle connection may stay open (editors keep theirs); a frame begun must end in time.
            deadline = incomplete_since + self._partial_timeout if decoder.pending else math.inf
            with trio.move_on_at(deadline) as waiting:
                data, pending = (pending, b"") if pending else (await self._receive(), b"")
            if waiting.cancelled_caught:
                await self._fail(
                    ErrorKind.PROTOCOL_ERROR, f"a frame stayed incomplete for {self._partial_timeout:g}s"
                )
                return
            if not data:
                return
            was_incomplete = decoder.pending > 0
            try:
                bodies = decoder.feed(data)
            except FrameTooLarge as e:
                await self._fail(ErrorKind.FRAME_TOO_LARGE, str(e))
                return
            if decoder.pending and (bodies or not was_incomplete):
                incomplete_since = trio.current_time()
            for body in bodies:
                try:
                    frame = decode_bounded(client_decoder.decode, body)
                except TooDeep:
                    await self._fail(
                        ErrorKind.PROTOCOL_ERROR, f"frame nested too deeply (the limit is {MAX_DEPTH})"
                    )
                    return
                except msgspec.ValidationError as e:  # before DecodeError: it is a subclass
                    await self._fail(ErrorKind.PROTOCOL_ERROR, f"invalid frame: {e}")
                    return
                except msgspec.DecodeError as e:
                    await self._fail(ErrorKind.PROTOCOL_ERROR, f"undecodable frame: {e}")
                    return
                if not greeted:
                    if not await self._greet(frame):
                        return
                    greeted = True
                    continue
                await self._dispatch(frame, nursery)

    async def _dispatch(self, frame: ClientFrame, nursery: trio.Nursery) -> None:
        if isinstance(frame, Chat):
            await self._start_chat(frame, nursery)
        elif isinstance(frame, Cancel):
            if frame.id in self._requests:
                self._requests[frame.id].cancel()
        elif isinstance(frame, Reload):
            nursery.start_soon(self._reload, frame)
        elif isinstance(frame, Hello):
            await self.send(Error(id=0, kind=ErrorKind.PROTOCOL_ERROR, message="hello sent twice"))
        else:
            async with self._request(frame.id, frame.__struct_config__.tag):
                await self._answer(frame)

    @contextlib.asynccontextmanager
    async def _request(self, rid: int, what: object) -> AsyncIterator[None]:
        """One request's boundary: a failure inside is logged and answered with an `internal` error.

        The connection's other requests and the daemon go on; cancellation passes through.
        """
        failed = False

        def note(_: BaseException) -> None:
            nonlocal failed
            failed = True

        with contained(log, "%s request %d", what, rid, on_failure=note):
            yield
        if failed:
            await self.send(Error(id=rid, kind=ErrorKind.INTERNAL, message=INTERNAL_ERROR))

    async def _answer(self, frame: StatusQuery | ModelsQuery | Shutdown | ExplainQuery) -> None:
        daemon = self.daemon
        if isinstance(frame, StatusQuery):
            await self.send(StatusReply(id=frame.id, status=daemon.status()))
        elif isinstance(frame, ModelsQuery):
            await self.send(ModelsReply(id=frame.id, models=daemon.models_info()))
        elif isinstance(frame, Shutdown):
            await self.send(Ok(id=frame.id))
            daemon.request_stop()
        else:
            try:
                lines = daemon.explain(frame.model)
            except KeyError:
                await self.send(
                    Error(
                        id=frame.id,
                        kind=ErrorKind.UNKNOWN_MODEL,
                        message=f"no combined model {frame.model!r}",
                    )
                )
            else:
                await self.send(ExplainReply(id=frame.id, lines=lines))

    async def _start_chat(self, frame: Chat, nursery: trio.Nursery) -> None:
        if frame.id in self._requests or frame.id <= 0:
            await self.send(
                Error(id=frame.id, kind=ErrorKind.PROTOCOL_ERROR, message=f"request id {frame.id} is in use")
            )
            return
        if self.daemon.stopping:
            await self.send(
                Error(id=frame.id, kind=ErrorKind.SHUTTING_DOWN, message="the daemon is stopping")
            )
            return
        try:
            check_request(frame.request)
        except TooDeep as e:
            await self.send(Error(id=frame.id, kind=ErrorKind.BAD_REQUEST, message=f"the request is {e}"))
            return
        scope = trio.CancelScope()
        self._requests[frame.id] = scope
        nursery.start_soon(self._chat, frame, scope)

    async def _reload(self, frame: Reload) -> None:
        rid = frame.id
        async with self._request(rid, "reload"):
            if frame.config:  # re-read the config file; a refused one is a reply too, not an error frame
                await self.send(ReloadReply(id=rid, result=await self.daemon.reload_config()))
                return
            await self.daemon.refresh_catalogs()
            await self.send(ModelsReply(id=rid, models=self.daemon.models_info()))

    async def _chat(self, frame: Chat, scope: trio.CancelScope) -> None:
        rid = frame.id

        async def send(events: list[StreamEvent]) -> None:
            await self.send(*(_frame_for(rid, e) for e in events))

        try:
            with self.daemon.tracking():
                async with self._request(rid, "chat"):
                    try:
                        with scope:
                            await self.daemon.chat(frame.model, frame.request, send)
                    except FrameTooLarge as e:  # raised before any byte of that event was written
                        await self.send(
                            Error(
                                id=rid,
                                kind=ErrorKind.FRAME_TOO_LARGE,
                                message=f"the answer cannot be sent: {e}",
                            )
                        )
                        return
                    if scope.cancelled_caught:
                        await self.send(
                            Error(id=rid, kind=ErrorKind.CANCELLED, message="cancelled by the client")
                        )
        finally:
            del self._requests[rid]


INTERNAL_ERROR = "internal error in the daemon (see its log)"


def _frame_for(rid: int, event: StreamEvent) -> ServerFrame:
    if isinstance(event, ErrorEvent):
        return Error(
            id=rid,
            kind=event.kind,
            message=event.message,
            attempts=event.attempts,
            retry_after_s=event.retry_after_s,
        )
    return Event(id=rid, event=event)


def cut_status(status: StatusInfo, keep: int) -> StatusInfo:
    """`status` with each provider's per-model list cut to `keep` entries, counting those left out. Pure."""
    providers = [
        msgspec.structs.replace(
            p, models=p.models[:keep], models_truncated=p.models_truncated + max(0, len(p.models) - keep)
        )
        for p in status.providers
    ]
    return msgspec.structs.replace(status, providers=providers)


def cut_models(models: ModelsInfo, keep: int) -> ModelsInfo:
    """`models` with its list cut to `keep` combined models, flagged when some were left out. Pure."""
    return ModelsInfo(models=models.models[:keep], truncated=models.truncated or len(models.models) > keep)


def encode_reply(frame: ServerFrame) -> bytes:
    """The frame's bytes; a status or models reply too large for one frame is cut until it fits.

    Any other frame too large raises FrameTooLarge.
    """
    try:
        return encode_frame(frame)
    except FrameTooLarge:
        if not isinstance(frame, StatusReply | ModelsReply):
            raise
    if isinstance(frame, StatusReply):
        keep = max((len(p.models) for p in frame.status.providers), default=0)
    else:
        keep = len(frame.models.models)
    while True:
        keep //= 2  # each round halves what is kept: a few rounds at most
        cut: ServerFrame = (
            StatusReply(id=frame.id, status=cut_status(frame.status, keep))
            if isinstance(frame, StatusReply)
            else ModelsReply(id=frame.id, models=cut_models(frame.models, keep))
        )
        try:
            return encode_frame(cut)
        except FrameTooLarge:
            if keep == 0:
                raise


def _proves_token(hello: Hello, token: str) -> bool:
    """Whether `hello` carries a well-formed nonce and its client proof under `token` (compared in constant time)."""
    return valid_nonce(hello.nonce) and proof_matches(hello.proof, client_proof(token, hello.nonce))


def _same_user(stream: trio.SocketStream) -> bool:
    """Whether the connecting process runs as this user (where the OS tells: Unix sockets only).

    Over TCP the OS tells nothing; the token handshake proves the user instead.
    """
    if stream.socket.family != getattr(pysocket, "AF_UNIX", None):
        return True
    uid = peer_uid(stream.socket)
    if uid is not None and uid != os.getuid():
        log.warning("refused a connection from uid %d", uid)
        return False
    return True


async def _refuse_busy(stream: trio.SocketStream) -> None:
    busy = Error(
        id=0, kind=ErrorKind.BUSY, message="the daemon has too many connections open; try again later"
    )
    await stream.send_all(encode_frame(busy))
