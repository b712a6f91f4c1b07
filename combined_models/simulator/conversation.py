"""A dialect-neutral view of the conversation in a chat request (no I/O).

Each dialect parses its own body into `Turn`s of simple part dicts; `build_request`
normalizes them the way the providers themselves read a conversation (tool results
belong to the user, consecutive turns of one role are one turn) so that the same
conversation encoded by any dialect gives an equal view::

    {"system": "Be terse." | None,
     "messages": [{"role": "user" | "assistant", "parts": [part, ...]}, ...]}

Parts:
    {"type": "text", "text": str}
    {"type": "image", "media_type": str | None, "data_length": int}  # decoded bytes; "url" for links
    {"type": "tool_call", "id": str | None, "name": str, "arguments": <JSON value>}
    {"type": "tool_result", "id": str | None, "content": str | <JSON value>}
    {"type": "thinking", "text": str, "signature": str | None}
    {"type": "redacted_thinking"}

A part after which the request puts a cache breakpoint carries `"cache": ttl` ("5m", "1h").
When the request has breakpoints, the view lists them all, in prefix order (tools, system,
messages), each after the item it follows::

    "cache": [{"after": "tools[0]" | "system[1]" | "messages[2].parts[0]", "ttl": "5m"}, ...]

`PromptCache` is a provider's prompt cache: it remembers the prompts up to each breakpoint
it saw, and says how many tokens a later request reads from it and writes to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import msgspec

from .answer import ChatRequest, Message, Prefix, Role

Part = dict[str, Any]


class Turn(NamedTuple):
    role: Literal["user", "assistant"]
    parts: list[Part]


def text_part(text: str) -> Part:
    return {"type": "text", "text": text}


def image_part(media_type: str | None, data: str) -> Part:
    # Every dialect sends base64; the decoded size compares across them regardless of padding.
    return {"type": "image", "media_type": media_type, "data_length": len(data.rstrip("=")) * 3 // 4}


def image_url_part(url: str) -> Part:
    """An OpenAI-style image URL: a data: URL is read as inline data, anything else is kept as a link."""
    if url.startswith("data:") and ";base64," in url:
        header, _, data = url.partition(";base64,")
        return image_part(header[len("data:") :] or None, data)
    return {"type": "image", "media_type": None, "data_length": 0, "url": url}


def tool_call_part(call_id: str | None, name: str, arguments: Any) -> Part:
    return {"type": "tool_call", "id": call_id, "name": name, "arguments": arguments}


def tool_result_part(call_id: str | None, content: Any) -> Part:
    return {"type": "tool_result", "id": call_id, "content": content}


def thinking_part(text: str, signature: str | None) -> Part:
    return {"type": "thinking", "text": text, "signature": signature}


def json_arguments(raw: str) -> Any:
    """OpenAI-style arguments text as a JSON value; the raw string when it does not parse."""
    try:
        return msgspec.json.decode(raw) if raw else {}
    except msgspec.DecodeError:
        return raw


def _message(turn: Turn) -> Message:
    """What the answer planner looks at: a user turn made only of tool results is a tool turn."""
    if turn.role == "user" and turn.parts and all(p["type"] == "tool_result" for p in turn.parts):
        content = "".join(p["content"] for p in turn.parts if isinstance(p["content"], str))
        return Message("tool", content)
    role: Role = turn.role
    return Message(role, "".join(p["text"] for p in turn.parts if p["type"] == "text"))


def build_request(
    *,
    model: str,
    system: Sequence[str],
    turns: Sequence[Turn],
    stream: bool,
    tool_names: Sequence[str] = (),
    max_tokens: int | None = None,
    include_usage: bool = False,
    variant: str = "",
    system_cache: Mapping[int, str] | None = None,
    tool_cache: Mapping[int, str] | None = None,
) -> ChatRequest:
    """The `ChatRequest` for a parsed conversation, with its neutral view attached.

    `system_cache` and `tool_cache` give the breakpoints after system blocks and tools
    (index -> ttl); those in messages ride on their parts.
    """
    merged: list[Turn] = []
    for turn in turns:
        # An empty text part carries nothing (OpenAI's content "" beside tool calls).
        parts = [p for p in turn.parts if not (p["type"] == "text" and not p["text"])]
        if merged and merged[-1].role == turn.role:
            merged[-1].parts.extend(parts)
        else:
            merged.append(Turn(turn.role, parts))
    system_text = "\n\n".join(s for s in system if s) or None
    messages = [Message("system", system_text)] if system_text else []
    messages += [_message(t) for t in merged]
    prefixes, breakpoints = _prefixes(model, tool_names, system, merged, tool_cache or {}, system_cache or {})
    conversation: dict[str, Any] = {
        "system": system_text,
        "messages": [{"role": t.role, "parts": t.parts} for t in merged],
    }
    if breakpoints:
        conversation["cache"] = breakpoints
    return ChatRequest(
        model=model,
        messages=tuple(messages),
        stream=stream,
        tool_names=tuple(tool_names),
        max_tokens=max_tokens,
        include_usage=include_usage,
        variant=variant,
        conversation=conversation,
        prefixes=prefixes,
    )


# ---------------------------------------------------------------- prompt caching


def _words(item: Any) -> int:
    """An item's words: a system block's, a text part's, a tool result's text; others have none."""
    if isinstance(item, str):
        return len(item.split())
    if item.get("type") == "text":
        return len(item["text"].split())
    if item.get("type") == "tool_result" and isinstance(item.get("content"), str):
        return len(item["content"].split())
    return 0


def _prefixes(
    model: str,
    tools: Sequence[str],
    system: Sequence[str],
    turns: Sequence[Turn],
    tool_cache: Mapping[int, str],
    system_cache: Mapping[int, str],
) -> tuple[tuple[Prefix, ...], list[dict[str, str]]]:
    """The prompt's prefix after each item (tools, system blocks, message parts), and its breakpoints."""
    items: list[tuple[str, Any, str | None]] = []  # (label, what the cache keys on, breakpoint ttl)
    items += [(f"tools[{i}]", {"tool": name}, tool_cache.get(i)) for i, name in enumerate(tools)]
    items += [(f"system[{i}]", text, system_cache.get(i)) for i, text in enumerate(system)]
    for m, turn in enumerate(turns):
        for j, part in enumerate(turn.parts):
            keyed = {k: v for k, v in part.items() if k != "cache"} | {"role": turn.role}
            items.append((f"messages[{m}].parts[{j}]", keyed, part.get("cache")))
    digest = hashlib.sha256(model.encode())
    prefixes: list[Prefix] = []
    breakpoints: list[dict[str, str]] = []
    words = 0
    for label, keyed, ttl in items:
        digest.update(msgspec.json.encode(keyed) + b"\0")
        words += _words(keyed)
        prefixes.append(Prefix(digest.hexdigest()[:32], words, ttl))
        if ttl:
            breakpoints.append({"after": label, "ttl": ttl})
    return tuple(prefixes), breakpoints


class CacheUse(NamedTuple):
    """What one request did with the prompt cache, in tokens (the simulator's words)."""

    read: int = 0
    written: int = 0
    marked: bool = False  # whether the request asked for caching at all (a breakpoint, or automatic)


class PromptCache:
    """One provider's prompt cache: exact prefixes, remembered at each breakpoint of a request.

    A request reads the longest prefix remembered that ends at one of its items up to its
    last breakpoint, and writes the rest up to that breakpoint. `automatic` (OpenAI's
    way): without breakpoints the whole prompt is one, and only prompts of at least that
    many tokens are cached. Never forgets: a simulator lives for a test.
    """

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def use(self, req: ChatRequest, *, automatic: int | None = None) -> CacheUse:
        prefixes = req.prefixes
        marks = [i for i, p in enumerate(prefixes) if p.breakpoint]
        minimum = 0
        if not marks and automatic is not None and prefixes:
            marks, minimum = [len(prefixes) - 1], automatic
        if not marks:
            return CacheUse()
        last = marks[-1]
        hit = next((p for p in reversed(prefixes[: last + 1]) if p.digest in self._seen), None)
        if prefixes[last].words < minimum:
            return CacheUse(marked=True)  # too short to cache: no error, nothing counted
        self._seen.update(prefixes[i].digest for i in marks)
        read = hit.words if hit is not None and hit.words >= minimum else 0
        return CacheUse(read=read, written=prefixes[last].words - read, marked=True)
