"""The daemon: its owner (`Server`), the socket and HTTP front doors, the registry and router, providers, dialects.

The entry points are imported on first use, not with the package: importing a
pure submodule (a dialect, health, the facade) must not load trio, h11 or httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import Server, make_server, open_daemon, run_daemon

__all__ = ["Server", "make_server", "open_daemon", "run_daemon"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(".server", __name__), name)
    globals()[name] = value  # found once; later reads do not come back here
    return value
