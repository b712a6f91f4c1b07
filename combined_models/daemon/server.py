"""The Unix-socket server: one task per connection, requests multiplexed by id.

A malformed, oversized or wrong-typed frame gets an error frame and closes
that connection; every other client keeps working. A connection that goes
away cancels its requests, which closes their upstream requests at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket as pysocket
import struct
from collections.abc import Iterator
from pathlib import Path

import msgspec
import trio

from .. import __version__
from ..chat import ErrorEvent, StreamEvent
from ..paths import check_socket_path, ensure_private_dir, runtime_dir
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
    ModelsQuery,
    ModelsReply,
    Ok,
    Reload,
    ServerFrame,
    Shutdown,
    StatusInfo,
    StatusQuery,
    StatusReply,
    Welcome,
    client_decoder,
    encode_frame,
)
from .gateway import Gateway
from .supervisor import Supervisor

log = logging.getLogger("combined_models.daemon")
SHUTDOWN_GRACE = 5.0  # seconds in-flight streams get to finish on stop


class AlreadyRunning(Exception):
    pass


class Connection:
    """One client connection. Writes go through one lock; each chat request is its own task."""

    def __init__(self, stream: trio.SocketStream, server: Server) -> None:
        self.stream = stream
        self.server = server
        self._send_lock = trio.Lock()
        self._requests: dict[int, trio.CancelScope] = {}

    async def send(self, *frames: ServerFrame) -> None:
        """Frames in one write."""
        data = b"".join(encode_frame(f) for f in frames)
        # Not `async with`: the lock's own checkpoint is a trip round the event loop per frame.
        # A free lock is taken at once (send_all still checkpoints); a held one is waited for.
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            await self.stream.send_all(data)
        finally:
            self._send_lock.release()

    async def serve(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await self._read_loop(nursery)
                nursery.cancel_scope.cancel()  # the client is gone: so are its requests
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.aclose()

    async def _fail(self, kind: str, message: str) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError), trio.move_on_after(1):
            await self.send(Error(id=0, kind=kind, message=message))

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        decoder = FrameDecoder()
        greeted = False
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            try:
                bodies = decoder.feed(data)
            except FrameTooLarge as e:
                await self._fail("frame_too_large", str(e))
                return
            for body in bodies:
                try:
                    frame = client_decoder.decode(body)
                except msgspec.ValidationError as e:  # before DecodeError: it is a subclass
                    await self._fail("protocol_error", f"invalid frame: {e}")
                    return
                except msgspec.DecodeError as e:
                    await self._fail("protocol_error", f"undecodable frame: {e}")
                    return
                if not greeted:
                    if not isinstance(frame, Hello):
                        await self._fail("protocol_error", "the first frame must be a hello")
                        return
                    if frame.version != PROTOCOL_VERSION:
                        await self._fail(
                            "protocol_error",
                            f"protocol version {frame.version} not supported "
                            f"(this daemon speaks {PROTOCOL_VERSION})",
                        )
                        return
                    greeted = True
                    await self.send(
                        Welcome(
                            version=PROTOCOL_VERSION, server=f"combined-models {__version__}", pid=os.getpid()
                        )
                    )
                    continue
                await self._dispatch(frame, nursery)

    async def _dispatch(self, frame: ClientFrame, nursery: trio.Nursery) -> None:
        sup = self.server.supervisor
        if isinstance(frame, Chat):
            if frame.id in self._requests or frame.id <= 0:
                await self.send(
                    Error(id=frame.id, kind="protocol_error", message=f"request id {frame.id} is in use")
                )
                return
            if self.server.stopping:
                await self.send(Error(id=frame.id, kind="shutting_down", message="the daemon is stopping"))
                return
            scope = trio.CancelScope()
            self._requests[frame.id] = scope
            nursery.start_soon(self._chat, frame, scope)
        elif isinstance(frame, Cancel):
            if frame.id in self._requests:
                self._requests[frame.id].cancel()
        elif isinstance(frame, StatusQuery):
            await self.send(StatusReply(id=frame.id, status=self.server.status()))
        elif isinstance(frame, ModelsQuery):
            await self.send(ModelsReply(id=frame.id, models=sup.models_info()))
        elif isinstance(frame, Shutdown):
            await self.send(Ok(id=frame.id))
            self.server.request_stop()
        elif isinstance(frame, Reload):
            nursery.start_soon(self._reload, frame.id)
        elif isinstance(frame, ExplainQuery):
            try:
                lines = sup.explain(frame.model)
            except KeyError:
                await self.send(
                    Error(id=frame.id, kind="unknown_model", message=f"no combined model {frame.model!r}")
                )
            else:
                await self.send(ExplainReply(id=frame.id, lines=lines))
        elif isinstance(frame, Hello):
            await self.send(Error(id=0, kind="protocol_error", message="hello sent twice"))

    async def _reload(self, rid: int) -> None:
        await self.server.supervisor.refresh_catalogs()
        await self.send(ModelsReply(id=rid, models=self.server.supervisor.models_info()))

    async def _chat(self, frame: Chat, scope: trio.CancelScope) -> None:
        rid = frame.id

        async def send(events: list[StreamEvent]) -> None:
            await self.send(*(_frame_for(rid, e) for e in events))

        self.server.active += 1
        try:
            with scope:
                await self.server.supervisor.chat(frame.model, frame.request, send)
            if scope.cancelled_caught:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.send(Error(id=rid, kind="cancelled", message="cancelled by the client"))
        except Exception:
            log.exception("request %d failed inside the daemon", rid)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.send(
                    Error(id=rid, kind="internal", message="internal error in the daemon (see its log)")
                )
        finally:
            self.server.active -= 1
            del self._requests[rid]
            if self.server.active == 0:
                self.server.idle.set()


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


def _peer_uid(sock: trio.socket.SocketType) -> int | None:
    """The connecting process's uid, where the OS tells (Linux SO_PEERCRED)."""
    opt = getattr(pysocket, "SO_PEERCRED", None)
    if opt is None:
        return None
    try:
        raw = sock.getsockopt(pysocket.SOL_SOCKET, opt, struct.calcsize("3i"))
    except OSError:
        return None
    return int(struct.unpack("3i", raw)[1])


@contextlib.contextmanager
def claim_socket(path: Path) -> Iterator[pysocket.socket]:
    """Bind `path`, making sure no live daemon serves it; a stale socket from a killed daemon is replaced.

    A lock file beside the socket, held for the daemon's life, settles races
    between two daemons starting at once.
    """
    check_socket_path(path)
    if path.parent == runtime_dir() or not path.parent.exists():
        # Our own dir: 0700 and ours, or we refuse it. A dir the user named that exists
        # (say /tmp) is left as it is: the socket itself is 0600.
        ensure_private_dir(path.parent)
    lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise AlreadyRunning(f"a daemon is already serving {path}") from None
            raise
        if path.exists() or path.is_symlink():
            probe = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # stale: its daemon is gone
            else:
                raise AlreadyRunning(f"a daemon is already serving {path}")
            finally:
                probe.close()
        sock = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600: no window where others could connect
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(512)
        try:
            yield sock
        finally:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    finally:
        os.close(lock_fd)


class Server:
    def __init__(self, supervisor: Supervisor, socket_path: Path) -> None:
        self.supervisor = supervisor
        self.socket_path = socket_path
        self.stopping = False
        self.active = 0
        self.idle = trio.Event()
        self._stop = trio.Event()
        self.gateway: Gateway | None = None

    def request_stop(self) -> None:
        self.stopping = True
        self._stop.set()

    @property
    def http_address(self) -> str:
        """The HTTP front door's bound host:port; empty when it is off or could not listen."""
        return self.gateway.address if self.gateway is not None else ""

    def status(self) -> StatusInfo:
        status = self.supervisor.status()
        status.daemon.http = self.http_address
        status.daemon.http_error = self.gateway.error if self.gateway is not None else ""
        return status

    @contextlib.contextmanager
    def tracking(self) -> Iterator[None]:
        """Count a request in flight (for the grace period on stop); the HTTP front door uses it."""
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                self.idle.set()

    async def run(
        self,
        sock: pysocket.socket | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until asked to stop, then give in-flight streams a grace period.

        `sock` is a socket from `claim_socket`; without one, the server claims its path itself.
        """
        with contextlib.ExitStack() as stack:
            if sock is None:
                sock = stack.enter_context(claim_socket(self.socket_path))
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            async with trio.open_nursery() as nursery:
                await nursery.start(self.supervisor.run)
                if self.supervisor.cfg.http.enabled:
                    self.gateway = Gateway(self)
                    await nursery.start(self.gateway.run)
                conns = trio.open_nursery()
                async with conns as conn_nursery:
                    conn_nursery.start_soon(self._accept_loop, listener, conn_nursery)
                    task_status.started()
                    log.info("serving on %s", self.socket_path)
                    await self._stop.wait()
                    if self.gateway is not None:
                        self.gateway.stop_accepting()
                    with trio.move_on_after(SHUTDOWN_GRACE):
                        while self.active:
                            self.idle = trio.Event()
                            await self.idle.wait()
                    conn_nursery.cancel_scope.cancel()
                nursery.cancel_scope.cancel()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while not self.stopping:
            try:
                stream = await listener.accept()
            except OSError as e:  # EMFILE and friends: keep serving the others
                log.warning("accept failed: %s", e)
                await trio.sleep(0.1)
                continue
            uid = _peer_uid(stream.socket)
            if uid is not None and uid != os.getuid():
                log.warning("refused a connection from uid %d", uid)
                await stream.aclose()
                continue
            nursery.start_soon(Connection(stream, self).serve)


async def serve_until_signalled(server: Server, sock: pysocket.socket | None = None) -> None:
    """Run `server` until a shutdown frame, SIGTERM or SIGINT stops it gracefully."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for _ in signals:
                    server.request_stop()

            nursery.start_soon(watch)
            await server.run(sock)
            nursery.cancel_scope.cancel()
