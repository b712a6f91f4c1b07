"""The OpenAI Responses API (provider-protocols.md §9).

`POST /v1/responses` with Bearer auth; SSE with `event:` lines whose JSON repeats the
type and counts `sequence_number` from 0: `response.created`, `response.in_progress`,
each output item's events (`output_item.added`, its parts and deltas, the `.done`
events), then `response.completed` with the whole output and usage (or
`response.incomplete` when the answer hit `max_output_tokens`). An in-band failure is
`response.failed` with the error. Errors and model listings are OpenAI's (§1).

The simulator keeps nothing: `previous_response_id` is answered as an unknown id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ..answer import Answer, ChatRequest, Piece, TextPiece, ThinkingPiece, ToolCallArgs, ToolCallStart
from ..conversation import (
    CacheUse,
    Part,
    Turn,
    build_request,
    image_url_part,
    json_arguments,
    text_part,
    thinking_part,
    tool_call_part,
    tool_result_part,
)
from .base import (
    SSE_HEADERS,
    BadRequest,
    Context,
    Dialect,
    HttpRequest,
    Reply,
    Route,
    decode_json,
    json_reply,
    sse,
)
from .openai import OpenAIDialect

# The smallest `max_output_tokens` the API accepts.
MIN_OUTPUT_TOKENS = 16


class _Content(msgspec.Struct):
    type: str
    text: str | None = None
    image_url: str | None = None
    refusal: str | None = None


class _Summary(msgspec.Struct):
    text: str
    type: str = "summary_text"


class _Item(msgspec.Struct):
    type: str = "message"
    role: str | None = None
    content: str | list[_Content] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    input: str | None = None
    output: str | list[_Content] | None = None
    summary: list[_Summary] | None = None
    encrypted_content: str | None = None


class _Tool(msgspec.Struct):
    type: str
    name: str | None = None


class _Reasoning(msgspec.Struct):
    effort: str | None = None
    summary: str | None = None


class _Body(msgspec.Struct):
    model: str
    input: str | list[_Item] | None = None
    instructions: str | None = None
    tools: list[_Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: int | None = None
    stream: bool | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    reasoning: _Reasoning | None = None


_ROLES = frozenset({"system", "developer", "user", "assistant"})


def _parts(content: str | list[_Content] | None) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [text_part(content)]
    parts: list[Part] = []
    for c in content:
        if c.type in ("input_text", "output_text"):
            parts.append(text_part(c.text or ""))
        elif c.type == "refusal":
            parts.append(text_part(c.refusal or ""))
        elif c.type == "input_image" and c.image_url:
            parts.append(image_url_part(c.image_url))
    return parts


def _text(content: str | list[_Content] | None) -> str:
    return "".join(p["text"] for p in _parts(content) if p["type"] == "text")


def _turns(items: list[_Item], system: list[str]) -> list[Turn]:
    turns: list[Turn] = []
    calls: set[str] = set()
    for i, item in enumerate(items):
        match item.type:
            case "message":
                if item.role not in _ROLES:
                    raise BadRequest(f"Invalid value: {item.role!r}. Supported values are: {sorted(_ROLES)}.")
                if item.role in ("system", "developer"):
                    system.append(_text(item.content))
                else:
                    turns.append(Turn("user" if item.role == "user" else "assistant", _parts(item.content)))
            case "function_call" | "custom_tool_call":
                if not item.call_id or not item.name:
                    raise BadRequest(f"Missing required parameter: 'input[{i}].call_id'.")
                calls.add(item.call_id)
                args = json_arguments(item.arguments or "") if item.type == "function_call" else item.input
                turns.append(Turn("assistant", [tool_call_part(item.call_id, item.name, args)]))
            case "function_call_output" | "custom_tool_call_output":
                if item.call_id not in calls:
                    raise BadRequest(
                        f"No tool call found for function call output with call_id {item.call_id}."
                    )
                output = item.output if isinstance(item.output, str) else _text(item.output)
                turns.append(Turn("user", [tool_result_part(item.call_id, output)]))
            case "reasoning":
                text = "\n\n".join(s.text for s in item.summary or ())
                turns.append(Turn("assistant", [thinking_part(text, item.encrypted_content)]))
            case other:
                raise BadRequest(f"Invalid value: {other!r} for 'input[{i}].type'.")
    return turns


def _usage(answer: Answer, cache: CacheUse) -> dict[str, Any]:
    """`input_tokens` counts the cached tokens too."""
    return {
        "input_tokens": answer.prompt_tokens,
        "input_tokens_details": {"cached_tokens": cache.read},
        "output_tokens": answer.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": answer.thinking_tokens},
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def _status(answer: Answer) -> tuple[str, dict[str, str] | None]:
    if answer.finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    return "completed", None


class ResponsesDialect(Dialect):
    """`POST {base}/responses`, plus OpenAI's `GET {base}/models` and `GET {base}/models/{id}`.

    Auth, errors, model listings and prompt caching are OpenAI's own.
    """

    name = "openai-responses"
    base_path = "/v1"
    response_id_prefix = "resp_"
    tool_id_prefix = "call_"

    def __init__(self) -> None:
        self._openai = OpenAIDialect()

    def route(self, method: str, path: str, query: Mapping[str, str]) -> Route | None:
        if method == "POST" and path == f"{self.base_path}/responses":
            return Route("chat")
        if path == f"{self.base_path}/chat/completions":
            return None  # a Responses-only server
        return self._openai.route(method, path, query)

    def check_auth(self, route: Route, request: HttpRequest, ctx: Context) -> Reply | None:
        return self._openai.check_auth(route, request, ctx)

    def error(
        self,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        wait: float | None = None,
        request_id: str = "",
    ) -> Reply:
        return self._openai.error(status, message, code=code, wait=wait, request_id=request_id)

    def unknown_model(self, model: str, request_id: str = "") -> Reply:
        return self._openai.unknown_model(model, request_id)

    def serve(self, route: Route, request: HttpRequest, ctx: Context) -> Reply:
        return self._openai.serve(route, request, ctx)

    def cache_use(self, req: ChatRequest) -> CacheUse:
        """OpenAI's automatic caching."""
        return self._openai.cache_use(req)

    def parse_chat(self, route: Route, body: bytes) -> ChatRequest:
        b: _Body = decode_json(body, _Body)
        if b.previous_response_id is not None:
            raise BadRequest(f"Previous response with id '{b.previous_response_id}' not found.")
        if b.max_output_tokens is not None and b.max_output_tokens < MIN_OUTPUT_TOKENS:
            raise BadRequest(
                "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
                f"{MIN_OUTPUT_TOKENS}, but got {b.max_output_tokens} instead."
            )
        system = [b.instructions] if b.instructions else []
        if b.input is None:
            raise BadRequest("Missing required parameter: 'input'.")
        items = [_Item(role="user", content=b.input)] if isinstance(b.input, str) else b.input
        turns = _turns(items, system)
        if not turns:
            raise BadRequest("'input' must contain at least one message.")
        tools = () if b.tool_choice == "none" else tuple(t.name for t in b.tools or () if t.name)
        return build_request(
            model=b.model,
            system=system,
            turns=turns,
            stream=bool(b.stream),
            tool_names=tools,
            max_tokens=b.max_output_tokens,
            include_usage=True,
        )

    def completion(self, req: ChatRequest, answer: Answer, *, response_id: str, created: int) -> Reply:
        stream = ResponsesStream(self, req, answer, response_id=response_id, created=created)
        for piece in answer.pieces:
            stream.piece(piece)
        stream.close_item()
        status, details = _status(answer)
        return json_reply(200, stream.response(status, details))

    def stream(self, req: ChatRequest, answer: Answer, *, response_id: str, created: int) -> ResponsesStream:
        return ResponsesStream(self, req, answer, response_id=response_id, created=created)


class ResponsesStream:
    """The event sequence of §9.3, one output item after another."""

    def __init__(
        self, dialect: ResponsesDialect, req: ChatRequest, answer: Answer, *, response_id: str, created: int
    ) -> None:
        self.headers: Sequence[tuple[str, str]] = SSE_HEADERS
        self._req = req
        self._answer = answer
        self._cache = dialect.cache_use(req)
        self._id = response_id
        self._created = created
        self._seq = 0
        self._items: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return sse(data, kind)

    def response(self, status: str, incomplete: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
        done = status in ("completed", "incomplete")
        return {
            "id": self._id,
            "object": "response",
            "created_at": self._created,
            "status": status,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": None,
            "max_output_tokens": self._req.max_tokens,
            "model": self._req.model,
            "output": self._items if done or status == "failed" else [],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": _usage(self._answer, self._cache) if done else None,
            "metadata": {},
            **extra,
        }

    def _at(self) -> dict[str, Any]:
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": len(self._items) - 1}

    def _begin(self, item: dict[str, Any]) -> bytes:
        out = self.close_item()
        self._items.append(item)
        self._open = item
        return out + self._event(
            "response.output_item.added",
            output_index=len(self._items) - 1,
            item=dict(item, status="in_progress"),
        )

    def close_item(self) -> bytes:
        """The `.done` events of the open item (the item itself is complete in `_items`)."""
        item = self._open
        if item is None:
            return b""
        at = self._at()
        self._open = None
        out = b""
        if item["type"] == "message":
            part = item["content"][0]
            out += self._event(
                "response.output_text.done", **at, content_index=0, text=part["text"], logprobs=[]
            )
            out += self._event("response.content_part.done", **at, content_index=0, part=part)
        elif item["type"] == "reasoning":
            part = item["summary"][0]
            out += self._event(
                "response.reasoning_summary_text.done", **at, summary_index=0, text=part["text"]
            )
            out += self._event("response.reasoning_summary_part.done", **at, summary_index=0, part=part)
        else:
            out += self._event(
                "response.function_call_arguments.done", **at, name=item["name"], arguments=item["arguments"]
            )
        item["status"] = "completed"
        return out + self._event("response.output_item.done", output_index=at["output_index"], item=item)

    def start(self) -> bytes:
        response = self.response("in_progress")
        return self._event("response.created", response=response) + self._event(
            "response.in_progress", response=response
        )

    def piece(self, piece: Piece) -> bytes:
        n = len(self._items)
        if isinstance(piece, TextPiece):
            out = b""
            if self._open is None or self._open["type"] != "message":
                out = self._begin(
                    {"type": "message", "id": f"msg_{self._id}_{n}", "role": "assistant", "content": []}
                )
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                out += self._event("response.content_part.added", **self._at(), content_index=0, part=part)
                assert self._open is not None
                self._open["content"].append(dict(part))
            assert self._open is not None
            self._open["content"][0]["text"] += piece.text
            return out + self._event(
                "response.output_text.delta", **self._at(), content_index=0, delta=piece.text, logprobs=[]
            )
        if isinstance(piece, ThinkingPiece):
            out = b""
            if self._open is None or self._open["type"] != "reasoning":
                out = self._begin({"type": "reasoning", "id": f"rs_{self._id}_{n}", "summary": []})
                part = {"type": "summary_text", "text": ""}
                out += self._event(
                    "response.reasoning_summary_part.added", **self._at(), summary_index=0, part=part
                )
                assert self._open is not None
                self._open["summary"].append(dict(part))
            assert self._open is not None
            self._open["summary"][0]["text"] += piece.text
            return out + self._event(
                "response.reasoning_summary_text.delta", **self._at(), summary_index=0, delta=piece.text
            )
        if isinstance(piece, ToolCallStart):
            item = {
                "type": "function_call",
                "id": f"fc_{self._id}_{n}",
                "call_id": piece.id,
                "name": piece.name,
                "arguments": "",
            }
            return self._begin(item)
        assert isinstance(piece, ToolCallArgs) and self._open is not None
        self._open["arguments"] += piece.fragment
        return self._event("response.function_call_arguments.delta", **self._at(), delta=piece.fragment)

    def finish(self) -> bytes:
        out = self.close_item()
        status, details = _status(self._answer)
        return out + self._event(f"response.{status}", response=self.response(status, details))

    def keepalive(self) -> bytes:
        return b""

    def inband_error(self, message: str, code: str) -> bytes:
        error = {
            "code": code or "server_error",
            "message": message or "An error occurred while processing your request.",
        }
        return self._event("response.failed", response=self.response("failed", error=error))

    def malformed(self) -> bytes:
        # An event cut off mid-object, as a proxy that truncates a line would leave it.
        event = self._event("response.output_text.delta", item_id="msg", output_index=0, delta="x")
        head, _, data = event.partition(b"data: ")
        return head + b"data: " + data[:30] + b"\n\n"
