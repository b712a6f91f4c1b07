"""The OpenAI- and Anthropic-compatible HTTP front door, served by the same daemon as the socket.

`openai` (Chat Completions), `responses` (the Responses API) and `anthropic`
(Messages) translate requests and responses without I/O, each behind one `FrontEnd`; `server` runs HTTP/1.1 on trio with h11; `auth` keeps
the token and checks it. `Gateway` is imported on first use, so the token
helpers and the sans-IO modules load no I/O library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .auth import load_token, token_path

if TYPE_CHECKING:
    from .server import Gateway

__all__ = ["Gateway", "load_token", "token_path"]


def __getattr__(name: str) -> Any:
    if name != "Gateway":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = importlib.import_module(".server", __name__).Gateway
    globals()[name] = value  # found once; later reads do not come back here
    return value
