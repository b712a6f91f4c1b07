"""Bounds on what clients and upstreams may send, sans-IO.

Nesting is the one bound a size limit does not give: a few kilobytes of `[[[[…`
are enough to exhaust the interpreter's recursion in a decoder, an encoder or
our own code. Decoders raise `RecursionError` on such input; `decode_bounded`
turns that into `TooDeep`, and `too_deep` checks a decoded value without
recursing itself, so whatever comes after never sees more than `MAX_DEPTH`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .chat import ChatRequest, ToolCallPart

# Deep enough for any JSON schema or tool-call argument a model uses (they nest 5-20 levels),
# far from the interpreter's recursion limit wherever the value travels next.
MAX_DEPTH = 64
# The longest model id kept in a state file (real ids are under 100 characters).
MAX_MODEL_ID = 512

T = TypeVar("T")


class TooDeep(ValueError):
    """A value nested deeper than the limit."""

    def __init__(self, where: str = "", limit: int = MAX_DEPTH) -> None:
        at = f" (at `{where}`)" if where else ""
        super().__init__(f"nested more than {limit} levels deep{at}")
        self.where = where


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` (dicts, lists, tuples and scalars) nests deeper than `limit`. Iterative."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list | tuple))
    return False


def decode_bounded(decode: Callable[[bytes], T], data: bytes) -> T:
    """`decode(data)`, with a structure too deep for the interpreter reported as `TooDeep`."""
    try:
        return decode(data)
    except RecursionError:
        raise TooDeep() from None


def check_request(request: ChatRequest, limit: int = MAX_DEPTH) -> None:
    """Raise `TooDeep` when a free-form part of `request` nests too deep.

    Those are tool schemas, tool-call arguments, and the opaque Anthropic-only entries
    (server tools, `context_management`).

    Everything else in a request has a fixed shape, so these are the only places depth can hide.
    """
    for i, tool in enumerate(request.tools):
        if too_deep(tool.parameters, limit):
            raise TooDeep(f"tools[{i}].parameters", limit)
    for i, entry in enumerate(request.server_tools):
        if too_deep(entry, limit):
            raise TooDeep(f"server_tools[{i}]", limit)
    if request.context_management is not None and too_deep(request.context_management, limit):
        raise TooDeep("context_management", limit)
    for i, message in enumerate(request.messages):
        if isinstance(message.content, str):
            continue
        for j, part in enumerate(message.content):
            if isinstance(part, ToolCallPart) and too_deep(part.arguments, limit):
                raise TooDeep(f"messages[{i}].content[{j}].arguments", limit)
