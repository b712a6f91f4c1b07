"""`Client`: a blocking client of the daemon's socket, for scripts and `cmctl`.

Imports nothing heavy (no trio, no httpx), so `cmctl status` starts fast.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import msgspec

from ..chat import ChatRequest, DoneEvent, ErrorEvent, Message, StreamEvent
from ..paths import socket_path as default_socket_path
from ..peercred import HasSockopt, peer_uid
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
    Hello,
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
from ..transport import (
    Endpoint,
    TransportError,
    client_proof,
    connect_tcp,
    is_endpoint_file,
    new_nonce,
    proof_matches,
    read_endpoint,
    read_token,
    server_proof,
    token_path,
)


class DaemonUnavailable(Exception):
    """Nothing answers on the socket (cmctl exit code 3)."""


class ConnectionClosed(Exception):
    """The daemon closed the connection (or sent a connection-level error) mid-request."""


class RequestFailed(Exception):
    """A request ended with an error frame; `.error` has the kind, message and attempts."""

    def __init__(self, error: ErrorEvent) -> None:
        super().__init__(f"{error.kind}: {error.message}")
        self.error = error


def error_event(frame: Error) -> ErrorEvent:
    return ErrorEvent(
        kind=frame.kind, message=frame.message, attempts=frame.attempts, retry_after_s=frame.retry_after_s
    )


def make_request(
    prompt: str | ChatRequest, *, system: str | None = None, max_tokens: int | None = None
) -> ChatRequest:
    if isinstance(prompt, ChatRequest):
        return prompt
    return ChatRequest(messages=[Message("user", prompt)], system=system, max_tokens=max_tokens)


def check_same_user(sock: HasSockopt, path: Path) -> None:
    """Raise DaemonUnavailable when another user's process serves `path` (where the OS tells).

    Checked before anything is sent: a prompt must not reach a process the user does not own.
    """
    uid = peer_uid(sock)
    if uid is not None and uid != os.getuid():
        raise DaemonUnavailable(
            f"the process serving {path} runs as uid {uid}, not as you (uid {os.getuid()}); not talking to it"
        )


def locate(path: Path) -> tuple[Endpoint, str] | None:
    """The TCP endpoint and token of the daemon at `path` when an endpoint file is there; None for a socket.

    Raises DaemonUnavailable when the endpoint file or the token cannot be used.
    """
    if not is_endpoint_file(path):
        return None
    try:
        endpoint = read_endpoint(path)
        return endpoint, read_token(Path(endpoint.token_file) if endpoint.token_file else token_path(path))
    except FileNotFoundError:
        raise DaemonUnavailable(f"no daemon at {path}") from None
    except TransportError as e:
        raise DaemonUnavailable(f"cannot reach the daemon at {path}: {e}") from None


class Handshake:
    """The client's half of the TCP handshake: a hello proving it holds the token, and the check of the welcome.

    The token itself is never sent. A welcome that does not prove the daemon holds it too
    (a process squatting the port a dead daemon left in its endpoint file, say) is refused
    before anything else is sent. With no token (a Unix socket) the hello carries no proof
    and the welcome is not checked: peer credentials proved the user.
    """

    def __init__(self, token: str, address: str, client: str) -> None:
        self.token, self.address = token, address
        self.nonce = new_nonce() if token else ""
        proof = client_proof(token, self.nonce) if token else ""
        self.hello = Hello(version=PROTOCOL_VERSION, client=client, nonce=self.nonce, proof=proof)

    def check(self, welcome: Welcome) -> None:
        """Raise DaemonUnavailable unless `welcome` proves the daemon holds the token."""
        if self.token and not proof_matches(welcome.proof, server_proof(self.token, self.nonce)):
            raise DaemonUnavailable(
                f"the process at {self.address} could not prove it is your daemon (a stale endpoint file?)"
            )


def connect_socket(path: Path, timeout: float | None) -> tuple[socket.socket, str]:
    """A connected socket to the daemon at `path`, and the token its hello must prove ("" for a Unix socket).

    A Unix socket is checked to be served by this user before it is returned.
    """
    found = locate(path)
    if found is not None:
        endpoint, token = found
        try:
            return connect_tcp(endpoint, timeout), token
        except OSError as e:
            raise DaemonUnavailable(f"no daemon at {path} ({endpoint.address}: {e.strerror or e})") from None
    if not hasattr(socket, "AF_UNIX"):
        raise DaemonUnavailable(f"no daemon at {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        check_same_user(sock, path)
    except OSError as e:
        sock.close()
        raise DaemonUnavailable(f"no daemon at {path} ({e.strerror or e})") from None
    except DaemonUnavailable:
        sock.close()
        raise
    return sock, ""


def _peer_address(sock: socket.socket) -> str:
    """host:port of a TCP peer (for messages); "" for a Unix socket."""
    if sock.family == getattr(socket, "AF_UNIX", None):
        return ""
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "the daemon's address"
    return f"{host}:{port}"


class Client:
    """One connection to the daemon; one request at a time (use several clients for parallel work)."""

    def __init__(
        self, socket_path: str | os.PathLike[str] | None = None, *, timeout: float | None = None
    ) -> None:
        self.socket_path = Path(socket_path) if socket_path else default_socket_path()
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._decoder = FrameDecoder()
        self._pending: list[ServerFrame] = []
        self._ids = itertools.count(1)
        self.welcome: Welcome | None = None

    def connect(self) -> Client:
        sock, token = connect_socket(self.socket_path, self._timeout)
        self._sock = sock
        try:
            handshake = Handshake(token, _peer_address(sock), "combined-models-client")
            self._send(handshake.hello)
            frame = self._recv()
            if isinstance(frame, Error):
                raise ConnectionClosed(f"{frame.kind}: {frame.message}")
            if not isinstance(frame, Welcome):
                raise ConnectionClosed(f"unexpected first frame {type(frame).__name__}")
            handshake.check(frame)  # before any other frame is sent
        except BaseException:
            self.close()
            raise
        self.welcome = frame
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        return self.connect() if self._sock is None else self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------ frames

    def _send(self, frame: ClientFrame) -> None:
        assert self._sock is not None, "not connected"
        try:
            self._sock.sendall(encode_frame(frame))
        except OSError as e:
            raise ConnectionClosed(f"connection to the daemon broke: {e}") from None

    def _recv(self) -> ServerFrame:
        assert self._sock is not None, "not connected"
        while not self._pending:
            try:
                data = self._sock.recv(65536)
            except OSError as e:
                raise ConnectionClosed(f"connection to the daemon broke: {e}") from None
            if not data:
                raise ConnectionClosed("the daemon closed the connection")
            for body in self._decoder.feed(data):
                try:
                    self._pending.append(server_decoder.decode(body))
                except msgspec.DecodeError as e:
                    raise ConnectionClosed(f"undecodable frame from the daemon: {e}") from None
        return self._pending.pop(0)

    def _reply(self, rid: int) -> ServerFrame:
        while True:
            frame = self._recv()
            if isinstance(frame, Error) and frame.id == 0:
                raise ConnectionClosed(f"{frame.kind}: {frame.message}")
            if getattr(frame, "id", None) == rid:
                return frame

    # ------------------------------------------------------------ requests

    def status(self) -> StatusInfo:
        rid = next(self._ids)
        self._send(StatusQuery(id=rid))
        frame = self._reply(rid)
        if not isinstance(frame, StatusReply):
            raise ConnectionClosed(f"unexpected reply {type(frame).__name__}")
        return frame.status

    def models(self) -> ModelsInfo:
        rid = next(self._ids)
        self._send(ModelsQuery(id=rid))
        frame = self._reply(rid)
        if not isinstance(frame, ModelsReply):
            raise ConnectionClosed(f"unexpected reply {type(frame).__name__}")
        return frame.models

    def reload(self) -> ModelsInfo:
        """List every provider's models again now; returns the combined models after."""
        rid = next(self._ids)
        self._send(Reload(id=rid))
        frame = self._reply(rid)
        if not isinstance(frame, ModelsReply):
            raise ConnectionClosed(f"unexpected reply {type(frame).__name__}")
        return frame.models

    def reload_config(self) -> ReloadInfo:
        """Have the daemon re-read its config file and apply it; the result says what changed or why not."""
        rid = next(self._ids)
        self._send(Reload(id=rid, config=True))
        frame = self._reply(rid)
        if isinstance(frame, ModelsReply):  # a daemon from before `config` listed models instead
            raise ConnectionClosed("the daemon cannot reload its config (too old: restart it)")
        if not isinstance(frame, ReloadReply):
            raise ConnectionClosed(f"unexpected reply {type(frame).__name__}")
        return frame.result

    def explain(self, model: str) -> list[str]:
        """Why the members of a combined model were grouped. Raises RequestFailed for an unknown id."""
        rid = next(self._ids)
        self._send(ExplainQuery(id=rid, model=model))
        frame = self._reply(rid)
        if isinstance(frame, Error):
            raise RequestFailed(error_event(frame))
        if not isinstance(frame, ExplainReply):
            raise ConnectionClosed(f"unexpected reply {type(frame).__name__}")
        return frame.lines

    def shutdown(self) -> None:
        rid = next(self._ids)
        self._send(Shutdown(id=rid))
        frame = self._reply(rid)
        if not isinstance(frame, Ok):
            raise ConnectionClosed(f"unexpected reply {type(frame).__name__}")

    def chat(
        self,
        model: str,
        prompt: str | ChatRequest,
        *,
        system: str | None = None,
        max_tokens: int | None = None,
    ) -> Iterator[StreamEvent]:
        """Stream the events of one answer. The last one is a `done` or an `error` event.

        Closing the iterator early cancels the request in the daemon.
        """
        rid = next(self._ids)
        self._send(
            Chat(id=rid, model=model, request=make_request(prompt, system=system, max_tokens=max_tokens))
        )
        finished = False
        try:
            while True:
                frame = self._reply(rid)
                if isinstance(frame, Error):
                    finished = True
                    yield error_event(frame)
                    return
                if isinstance(frame, Event):
                    if isinstance(frame.event, DoneEvent):
                        finished = True
                    yield frame.event
                    if finished:
                        return
        finally:
            if not finished and self._sock is not None:
                try:
                    self._send(Cancel(id=rid))
                except ConnectionClosed:
                    pass
