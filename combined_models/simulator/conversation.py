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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import msgspec

from .answer import ChatRequest, Message, Role

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
) -> ChatRequest:
    """The `ChatRequest` for a parsed conversation, with its neutral view attached."""
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
    return ChatRequest(
        model=model,
        messages=tuple(messages),
        stream=stream,
        tool_names=tuple(tool_names),
        max_tokens=max_tokens,
        include_usage=include_usage,
        variant=variant,
        conversation={
            "system": system_text,
            "messages": [{"role": t.role, "parts": t.parts} for t in merged],
        },
    )
