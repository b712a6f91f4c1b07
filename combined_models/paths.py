"""Where combined-models keeps its files: every path comes from platformdirs or the environment."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import sys
import tempfile
import warnings
from pathlib import Path
from typing import BinaryIO

import platformdirs

APP = "combined-models"
ENV_SOCKET = "COMBINED_MODELS_SOCKET"
ENV_CONFIG = "COMBINED_MODELS_CONFIG"
# sockaddr_un.sun_path is 108 bytes on Linux and 104 on macOS, NUL included.
MAX_SOCKET_PATH = 103 if sys.platform == "darwin" else 107


class PathError(OSError):
    """A path we may not use (too long, wrong owner, a symbolic link where a directory must be)."""


def config_file() -> Path:
    env = os.environ.get(ENV_CONFIG)
    return Path(env).expanduser() if env else Path(platformdirs.user_config_dir(APP)) / "config.toml"


def state_dir() -> Path:
    return Path(platformdirs.user_state_dir(APP))


# In the log dir: the daemon's own log (rotated), and what escapes logging when it runs detached
# (a crash before logging is set up, a traceback): kept apart, so a rotation never strands it.
DAEMON_LOG = "daemon.log"
DAEMON_OUT = "daemon.out"


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


def ensure_private_dir(path: Path, *, follow_symlinks: bool = False) -> None:
    """Make `path` a 0700 directory of ours: create it, or check an existing one and tighten it.

    Refused with PathError: a symbolic link (unless `follow_symlinks`, for dirs
    under the home, where only the user can plant one), anything but a
    directory, a directory someone else owns. The mode is changed through the
    opened directory, never through a path an attacker could swap meanwhile,
    and only on a directory of ours.
    """
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP or path.is_symlink():
            raise PathError(f"{path} is a symbolic link; refusing it for private files") from None
        if e.errno == errno.ENOTDIR:
            raise PathError(f"{path} is not a directory") from None
        raise
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise PathError(f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()})")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def open_private_log(path: Path) -> BinaryIO:
    """Open log file `path` for appending: 0600 in a 0700 dir of ours (a log holds prompts and errors)."""
    ensure_private_dir(path.parent, follow_symlinks=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:  # a link planted where the log goes: logs would go where it points
            raise PathError(f"{path} is a symbolic link; refusing to write the log through it") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            raise PathError(f"{path} is not a regular file of yours")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "ab")


def write_private(path: Path, data: bytes) -> None:
    """Write `data` atomically (temp file + rename) with mode 0600, in a 0700 dir of ours."""
    ensure_private_dir(path.parent, follow_symlinks=True)
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
