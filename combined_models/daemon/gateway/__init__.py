"""The OpenAI- and Anthropic-compatible HTTP front door, served by the same supervisor as the socket.

`openai` and `anthropic` translate requests and responses without I/O; `server`
runs HTTP/1.1 on trio with h11; `auth` keeps the token and checks it.
"""

from .auth import load_token, token_path
from .server import Gateway

__all__ = ["Gateway", "load_token", "token_path"]
