"""Where combined-models keeps its files: every path comes from platformdirs or the environment."""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import tempfile
import warnings
from pathlib import Path

import platformdirs

APP = "combined-models"
ENV_SOCKET = "COMBINED_MODELS_SOCKET"
ENV_CONFIG = "COMBINED_MODELS_CONFIG"
# sockaddr_un.sun_path is 108 bytes on Linux and 104 on macOS, NUL included.
MAX_SOCKET_PATH = 103 if sys.platform == "darwin" else 107


class PathError(Exception):
    """A path we may not use (too long, wrong owner, too open)."""


def config_file() -> Path:
    env = os.environ.get(ENV_CONFIG)
    return Path(env).expanduser() if env else Path(platformdirs.user_config_dir(APP)) / "config.toml"


def state_dir() -> Path:
    return Path(platformdirs.user_state_dir(APP))


def log_dir() -> Path:
    return Path(platformdirs.user_log_dir(APP))


def runtime_dir() -> Path:
    """The user's runtime dir (XDG_RUNTIME_DIR on Linux), or a private dir under the temp dir."""
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset; we fall back below
        warnings.simplefilter("ignore")
        candidate = Path(platformdirs.user_runtime_dir(APP))
    parent = candidate.parent
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return candidate
    return Path(tempfile.gettempdir()) / f"{APP}-{os.getuid()}"


def socket_path() -> Path:
    env = os.environ.get(ENV_SOCKET)
    return Path(env).expanduser() if env else runtime_dir() / "daemon.sock"


def state_file(socket: Path, name: str) -> Path:
    """A per-daemon state file: daemons on different sockets keep separate state."""
    tag = hashlib.sha256(str(socket.absolute()).encode()).hexdigest()[:12]
    return state_dir() / f"{name}-{tag}.json"


def check_socket_path(path: Path) -> None:
    if len(os.fsencode(str(path))) > MAX_SOCKET_PATH:
        raise PathError(
            f"socket path is {len(str(path))} bytes, longer than the OS allows ({MAX_SOCKET_PATH}): {path}\n"
            f"choose a shorter one with --socket or ${ENV_SOCKET}"
        )


def ensure_private_dir(path: Path) -> None:
    """Create `path` as a 0700 directory owned by us, or refuse one that someone else could use."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise PathError(f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()})")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)


def write_private(path: Path, data: bytes) -> None:
    """Write `data` atomically (temp file + rename) with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
