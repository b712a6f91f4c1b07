"""How clients reach the daemon: a Unix socket, or loopback TCP with a token handshake.

One address names a daemon either way: its socket path. With the `unix`
transport a Unix socket lives there (peer credentials prove the user). With
`tcp` (where AF_UNIX does not exist, i.e. Windows, or when asked) the daemon
listens on 127.0.0.1 and writes at that path a small 0600 *endpoint file*
naming the transport, host:port, its pid and where its token file is. The
token is fresh at each daemon start, kept 0600 in a token file of that socket
path's own (`token_path`), removed on stop, and never sent: a
client's `Hello` carries a fresh nonce and an HMAC of it under the token, the
daemon checks it before reading anything else and its `Welcome` answers with an
HMAC of the same nonce under another label, which the client checks before
sending anything else. So neither side learns anything usable from a peer that
does not hold the token (a process squatting the port of a dead daemon, say).
(The endpoint file names the token file so a client whose environment points
elsewhere, say another XDG_STATE_HOME, still finds it.) Stdlib only: the
blocking client imports this.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import secrets
import socket
import stat
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .paths import state_file, write_private

Transport = Literal["unix", "tcp"]
TRANSPORTS: tuple[Transport, ...] = ("unix", "tcp")
ENV_TRANSPORT = "COMBINED_MODELS_TRANSPORT"
TOKEN_FILE = "socket-token"
MAX_ENDPOINT_FILE = 4096  # an endpoint file is about 60 bytes
MAX_TOKEN_FILE = 4096  # a token is 43 characters
MAX_HELLO = 4096  # bytes: the largest first frame a TCP connection may send before its handshake
TCP_HOST = "127.0.0.1"
HANDSHAKE_FAILED = "handshake failed: wrong or missing token"
NONCE_BYTES = 16  # a client's nonce: 32 hex digits
MIN_NONCE, MAX_NONCE = 32, 128  # hex digits the daemon accepts
_CLIENT_LABEL = b"cm-client\0"
_SERVER_LABEL = b"cm-server\0"


class TransportError(Exception):
    """An unknown transport name, an unreadable endpoint or token file."""


def default_transport() -> Transport:
    """Unix sockets where the OS has them, else loopback TCP."""
    return "unix" if hasattr(socket, "AF_UNIX") else "tcp"


def choose_transport(configured: str | None, environ: dict[str, str] | None = None) -> Transport:
    """The transport a daemon uses: $COMBINED_MODELS_TRANSPORT, else the config's, else the default. Pure."""
    env = (os.environ if environ is None else environ).get(ENV_TRANSPORT, "").strip()
    for source, value in ((f"${ENV_TRANSPORT}", env), ("the config's `transport`", configured or "")):
        if not value:
            continue
        if value not in TRANSPORTS:
            raise TransportError(f"{source}: expected one of {', '.join(TRANSPORTS)}, got {value!r}")
        if value == "unix" and not hasattr(socket, "AF_UNIX"):
            raise TransportError(f"{source}: Unix sockets do not exist on this system; use tcp")
        return value
    return default_transport()


# ------------------------------------------------------------------ the endpoint file


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    pid: int
    token_file: str = ""  # where the daemon keeps its token; empty: the default `token_path(socket path)`
    transport: Transport = "tcp"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def encode_endpoint(endpoint: Endpoint) -> bytes:
    """The endpoint file's content. Pure."""
    doc = {
        "transport": endpoint.transport,
        "address": endpoint.address,
        "pid": endpoint.pid,
        "token_file": endpoint.token_file,
    }
    return (json.dumps(doc) + "\n").encode()


def decode_endpoint(raw: bytes) -> Endpoint:
    """An endpoint file's content, strictly checked (ValueError otherwise). Pure."""
    doc = json.loads(raw.decode("utf-8"))
    if not isinstance(doc, dict) or not {"transport", "address", "pid"} <= set(doc):
        raise ValueError("not an endpoint file")
    transport, address, pid = doc["transport"], doc["address"], doc["pid"]
    token_file = doc.get("token_file", "")
    if not isinstance(token_file, str):
        raise ValueError("malformed token_file")
    if transport != "tcp":
        raise ValueError(f"unknown transport {transport!r}")
    if not isinstance(address, str) or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise ValueError("malformed endpoint")
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"malformed address {address!r}")
    if host not in (TCP_HOST, "localhost", "::1"):
        raise ValueError(f"the endpoint {address!r} is not on loopback")
    return Endpoint(host=host, port=int(port_text), pid=pid, token_file=token_file)


def is_endpoint_file(path: Path) -> bool:
    """Whether `path` is a regular file (an endpoint file), not following a symbolic link."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def write_endpoint(path: Path, endpoint: Endpoint) -> None:
    """Write the endpoint file atomically, mode 0600: a new temp file beside it, renamed over `path`.

    The temp file is created exclusively (never through a link) and the rename
    replaces whatever entry is at `path` (a link included) without following it.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(encode_endpoint(endpoint))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_endpoint(path: Path) -> Endpoint:
    """The endpoint file at `path`, if it is a regular file of ours that nobody else may write.

    Raises FileNotFoundError when there is none, TransportError when it cannot be used.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise TransportError(f"{path} is a symbolic link; not following it") from None
        if e.errno == errno.ENOENT:
            raise
        raise TransportError(f"cannot read {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TransportError(f"{path} is not an endpoint file")
        if hasattr(os, "getuid") and (st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o022):
            # Another user's file (or one others may write) could send us, and our token, anywhere.
            raise TransportError(f"{path} is not a private file of yours; not using it")
        raw = f.read(MAX_ENDPOINT_FILE + 1)
    if len(raw) > MAX_ENDPOINT_FILE:
        raise TransportError(f"{path} is too large for an endpoint file")
    try:
        return decode_endpoint(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise TransportError(f"{path}: unusable endpoint file ({e})") from None


# ------------------------------------------------------------------ the handshake token


def token_path(socket_path: Path) -> Path:
    """Where the daemon at `socket_path` keeps its token by default: a state file of that path's own
    (plain text, so without the `.json` other state files have)."""
    return state_file(socket_path, TOKEN_FILE).with_suffix("")


def _decode_token(raw: bytes) -> str:
    token = raw.decode("utf-8").strip()
    if not token or not all("!" <= c <= "~" for c in token):
        raise ValueError("no usable token")
    return token


def read_token(path: Path) -> str:
    """The handshake token (clients). TransportError when there is none or it is unusable."""
    try:
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise TransportError(f"{path} is not a token file")
            raw = f.read(MAX_TOKEN_FILE + 1)
    except OSError as e:
        raise TransportError(f"cannot read the socket token {path}: {e.strerror or e}") from None
    try:
        if len(raw) > MAX_TOKEN_FILE:
            raise ValueError("too large")
        return _decode_token(raw)
    except (ValueError, UnicodeDecodeError):
        raise TransportError(f"{path} holds no usable token") from None


def create_token(path: Path) -> str:
    """A fresh token (the daemon, at each start), written atomically 0600 at `path` (never through a link)."""
    token = secrets.token_urlsafe(32)
    write_private(path, (token + "\n").encode())
    return token


def remove_token(path: Path) -> None:
    path.unlink(missing_ok=True)


# ------------------------------------------------------------------ the handshake proofs (pure)


def new_nonce() -> str:
    """A client's fresh nonce, one per connection."""
    return secrets.token_hex(NONCE_BYTES)


def valid_nonce(nonce: str) -> bool:
    """Whether `nonce` is what the daemon accepts: MIN_NONCE to MAX_NONCE hex digits."""
    return MIN_NONCE <= len(nonce) <= MAX_NONCE and all(c in "0123456789abcdefABCDEF" for c in nonce)


def _proof(token: str, label: bytes, nonce: str) -> str:
    return hmac.new(token.encode(), label + nonce.encode(), hashlib.sha256).hexdigest()


def client_proof(token: str, nonce: str) -> str:
    """What a client's `Hello` carries: HMAC-SHA256(token, "cm-client\\0" + nonce), in hex."""
    return _proof(token, _CLIENT_LABEL, nonce)


def server_proof(token: str, nonce: str) -> str:
    """What the daemon's `Welcome` carries: HMAC-SHA256(token, "cm-server\\0" + nonce), in hex."""
    return _proof(token, _SERVER_LABEL, nonce)


def proof_matches(presented: str, expected: str) -> bool:
    """Constant-time comparison (`hmac.compare_digest`): the time taken tells nothing about the token."""
    return hmac.compare_digest(presented.encode(), expected.encode())


# The token each listening TCP socket was claimed with (`server.claim_endpoint`), for its door.
_claimed: weakref.WeakKeyDictionary[socket.socket, str] = weakref.WeakKeyDictionary()


def remember_token(sock: socket.socket, token: str) -> None:
    _claimed[sock] = token


def claimed_token(sock: socket.socket) -> str | None:
    """The token `sock` was claimed with; None for a socket `claim_endpoint` did not make."""
    return _claimed.get(sock)


# ------------------------------------------------------------------ connecting


def probe_tcp(endpoint: Endpoint, timeout: float = 1.0) -> bool:
    """Whether something accepts connections at `endpoint`."""
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout):
            return True
    except OSError:
        return False


def connect_tcp(endpoint: Endpoint, timeout: float | None) -> socket.socket:
    """A blocking TCP connection to `endpoint` (OSError when nothing answers)."""
    sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    sock.settimeout(timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
