"""Who is at the other end of a Unix socket, where the OS tells. Stdlib only (the sync client imports it)."""

from __future__ import annotations

import socket
import struct
from typing import Protocol

_UCRED = struct.Struct("3i")  # Linux `struct ucred`: pid, uid, gid
_XUCRED_HEAD = struct.Struct("2I")  # BSD/macOS `struct xucred` starts with cr_version, cr_uid
_XUCRED_SIZE = 76  # cr_version, cr_uid, cr_ngroups (padded), 16 gids
_SOL_LOCAL = 0  # BSD/macOS level for LOCAL_PEERCRED


class HasSockopt(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


def peer_uid(sock: HasSockopt) -> int | None:
    """The uid of the process at the other end of a connected Unix socket; None where the OS tells nothing."""
    linux = getattr(socket, "SO_PEERCRED", None)
    bsd = getattr(socket, "LOCAL_PEERCRED", None)
    try:
        if linux is not None:
            return int(_UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, linux, _UCRED.size))[1])
        if bsd is not None:
            raw = sock.getsockopt(_SOL_LOCAL, bsd, _XUCRED_SIZE)
            return int(_XUCRED_HEAD.unpack_from(raw)[1])
    except (OSError, struct.error):
        return None
    return None
