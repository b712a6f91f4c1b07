"""Amazon Bedrock Runtime Converse / ConverseStream, and the control-plane listings (§3).

`POST /model/{modelId}/converse[-stream]` (the id percent-decoded from the path), with a
Bedrock API key (`Bearer`) or SigV4 (service `bedrock`). The stream is the binary AWS
event-stream; errors are `x-amzn-ErrorType` + `{"message"}`. Claude semantics: a final
assistant message is continued. `GET /foundation-models` and `GET /inference-profiles`
are served on the same port for discovery.
"""

from __future__ import annotations

import base64
import random
import string
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from .. import eventstream
from ..answer import Answer, ChatRequest, Piece, TextPiece, ThinkingPiece, ToolCallArgs, ToolCallStart
from ..conversation import (
    CacheUse,
    Part,
    Turn,
    build_request,
    image_part,
    text_part,
    thinking_part,
    tool_call_part,
    tool_result_part,
)
from ..sigv4 import SigV4Error, verify
from .base import BadRequest, Context, Dialect, HttpRequest, Reply, Route, decode_json, json_reply, page

# Geography prefixes of system-defined (cross-region) inference profiles.
GEO_PREFIXES = ("us", "eu", "apac", "global", "us-gov", "jp", "au")
LISTED_GEOS = ("us", "eu", "global")  # profiles /inference-profiles reports for each model
REGION = "us-east-1"
ACCOUNT = "123456789012"

# status -> (exception name, default message)
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("ValidationException", "Malformed input request, please reformat your input and try again."),
    403: ("AccessDeniedException", "You don't have access to the model with the specified model ID."),
    404: ("ResourceNotFoundException", "The requested resource could not be found."),
    408: ("ModelTimeoutException", "Model has timed out in processing the request."),
    424: ("ModelErrorException", "The model returned an error."),
    429: ("ThrottlingException", "Too many requests, please wait before trying again."),
    500: (
        "InternalServerException",
        "The server encountered an internal error while processing the request.",
    ),
    503: ("ServiceUnavailableException", "Bedrock is unable to process your request."),
}

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
MAX_CACHE_POINTS = 4
_PADDING = string.ascii_letters + string.digits


class _Image(msgspec.Struct):
    format: str
    source: dict[str, Any]


class _ToolUse(msgspec.Struct):
    toolUseId: str
    name: str
    input: Any = None


class _ToolResult(msgspec.Struct):
    toolUseId: str
    content: list[dict[str, Any]] = []
    status: str | None = None


class _ReasoningText(msgspec.Struct):
    text: str = ""
    signature: str | None = None


class _Reasoning(msgspec.Struct):
    reasoningText: _ReasoningText | None = None
    redactedContent: str | None = None


class _CachePoint(msgspec.Struct):
    type: str
    ttl: str = "5m"


class _Block(msgspec.Struct):
    text: str | None = None
    image: _Image | None = None
    toolUse: _ToolUse | None = None
    toolResult: _ToolResult | None = None
    reasoningContent: _Reasoning | None = None
    cachePoint: _CachePoint | None = None


class _Message(msgspec.Struct):
    role: str
    content: list[_Block]


class _SystemBlock(msgspec.Struct):
    text: str | None = None
    cachePoint: _CachePoint | None = None


class _InferenceConfig(msgspec.Struct):
    maxTokens: int | None = None


class _ToolSpec(msgspec.Struct):
    name: str


class _Tool(msgspec.Struct):
    toolSpec: _ToolSpec | None = None
    cachePoint: _CachePoint | None = None


class _ToolConfig(msgspec.Struct):
    tools: list[_Tool] = []


class _Body(msgspec.Struct):
    messages: list[_Message] = []
    system: list[_SystemBlock] = []
    inferenceConfig: _InferenceConfig | None = None
    toolConfig: _ToolConfig | None = None


def _tool_result_content(blocks: Sequence[dict[str, Any]]) -> Any:
    """Text blocks joined; a JSON block's value as it is; with images, the text and image parts in order."""
    for b in blocks:
        if "json" in b:
            return b["json"]
    if any("image" in b for b in blocks):
        return [
            text_part(b["text"]) if "text" in b else image_part(*_image_of(b["image"]))
            for b in blocks
            if isinstance(b.get("text"), str) or isinstance(b.get("image"), dict)
        ]
    return "".join(b["text"] for b in blocks if isinstance(b.get("text"), str))


def _image_of(image: dict[str, Any]) -> tuple[str, str]:
    source = image.get("source")
    data = source.get("bytes", "") if isinstance(source, dict) else ""
    return f"image/{image.get('format')}", str(data)


def _part(b: _Block) -> Part | None:
    if b.text is not None:
        return text_part(b.text)
    if b.image is not None:
        return image_part(f"image/{b.image.format}", str(b.image.source.get("bytes", "")))
    if b.toolUse is not None:
        return tool_call_part(b.toolUse.toolUseId, b.toolUse.name, b.toolUse.input)
    if b.toolResult is not None:
        return tool_result_part(b.toolResult.toolUseId, _tool_result_content(b.toolResult.content))
    if b.reasoningContent is not None and b.reasoningContent.reasoningText is not None:
        r = b.reasoningContent.reasoningText
        return thinking_part(r.text, r.signature)
    if b.reasoningContent is not None:
        return {"type": "redacted_thinking"}
    return None


def _check_cache_points(b: _Body) -> None:
    """Valid cachePoint blocks, none inside a toolResult, at most four."""
    points: list[_CachePoint] = [x.cachePoint for x in b.system if x.cachePoint]
    points += [t.cachePoint for t in (b.toolConfig.tools if b.toolConfig else []) if t.cachePoint]
    for m in b.messages:
        for x in m.content:
            if x.cachePoint:
                points.append(x.cachePoint)
            if x.toolResult is not None and any("cachePoint" in c for c in x.toolResult.content):
                raise BadRequest(
                    "1 validation error detected: Value at 'messages.content.toolResult.content' failed to "
                    "satisfy constraint: cachePoint is not a valid ToolResultContentBlock member"
                )
    for point in points:
        if point.type != "default" or point.ttl not in ("5m", "1h"):
            raise BadRequest("The cachePoint type must be 'default' and its ttl '5m' or '1h'.")
    if len(points) > MAX_CACHE_POINTS:
        raise BadRequest(
            f"The number of cache points ({len(points)}) exceeds the maximum of {MAX_CACHE_POINTS}."
        )


def _turn_parts(blocks: Sequence[_Block], turns: list[Turn]) -> list[Part]:
    """A message's parts; a cachePoint marks the part before it (the previous turn's last, if it leads)."""
    parts: list[Part] = []
    for x in blocks:
        if x.cachePoint is not None:
            before = parts or next((t.parts for t in reversed(turns) if t.parts), [])
            if before:
                before[-1]["cache"] = x.cachePoint.ttl
            continue
        part = _part(x)
        if part:
            parts.append(part)
    return parts


def _marked_after(blocks: Sequence[Any], keep: Callable[[Any], object]) -> tuple[list[Any], dict[int, str]]:
    """The blocks `keep` says are content, and which of them a cachePoint follows (index -> ttl)."""
    kept: list[Any] = []
    marks: dict[int, str] = {}
    for x in blocks:
        if x.cachePoint is not None and kept:
            marks[len(kept) - 1] = x.cachePoint.ttl
        elif keep(x):
            kept.append(x)
    return kept, marks


def base_model(model_id: str) -> str:
    """The foundation-model id behind a system-defined inference profile id (`us.x` -> `x`)."""
    geo, dot, rest = model_id.partition(".")
    return rest if dot and geo in GEO_PREFIXES else model_id


def _token(index: int) -> str:
    return base64.urlsafe_b64encode(f"sim:{index}".encode()).decode()


def _index_of(token: str) -> int:
    try:
        return int(base64.urlsafe_b64decode(token.encode()).decode().removeprefix("sim:"))
    except ValueError:
        raise BadRequest("Invalid pagination token.") from None


class BedrockDialect(Dialect):
    """Converse / ConverseStream on `/model/{id}/...`, plus `/foundation-models` and `/inference-profiles`."""

    name = "bedrock"
    base_path = ""
    request_id_header = "x-amzn-RequestId"
    response_id_prefix = "resp_"
    tool_id_prefix = "tooluse_"

    def route(self, method: str, path: str, query: Mapping[str, str]) -> Route | None:
        if method == "POST" and path.startswith("/model/"):
            model, _, op = path[len("/model/") :].partition("/")
            if op in ("converse", "converse-stream") and model:
                return Route("chat", urllib.parse.unquote(model), stream=op == "converse-stream")
        if method == "GET" and path == "/foundation-models":
            return Route("endpoint", name="foundation-models")
        if method == "GET" and path == "/inference-profiles":
            return Route("endpoint", name="inference-profiles")
        return None

    def check_auth(self, route: Route, request: HttpRequest, ctx: Context) -> Reply | None:
        auth, rid = request.headers.get("authorization"), request.request_id
        if not auth:
            return self.error(403, "Missing Authentication Token", code="MissingAuthenticationTokenException")
        if auth.startswith("Bearer "):
            if ctx.api_key is not None and auth != f"Bearer {ctx.api_key}":
                return self.error(
                    403,
                    "The security token included in the request is invalid.",
                    code="UnrecognizedClientException",
                )
            return None
        try:
            verify(
                method=request.method,
                target=request.target,
                headers=request.headers,
                body=request.body,
                service="bedrock",
                secret=ctx.aws_secret,
                now=ctx.now,
            )
        except SigV4Error as e:
            return self.error(403, str(e), code=e.code, request_id=rid)
        return None

    def model_known(self, model: str, models: Sequence[str]) -> bool:
        return base_model(model) in {base_model(m) for m in models}  # any geography of a listed model

    def parse_chat(self, route: Route, body: bytes) -> ChatRequest:
        b: _Body = decode_json(body or b"{}", _Body)
        if not b.messages or b.messages[0].role != "user":
            raise BadRequest(
                "A conversation must start with a user message. Try again with a conversation that starts "
                "with a user message."
            )
        turns: list[Turn] = []
        for m in b.messages:
            if m.role not in ("user", "assistant"):
                raise BadRequest(
                    f"1 validation error detected: Value '{m.role}' at 'messages.role' failed to "
                    "satisfy constraint: Member must satisfy enum value set: [user, assistant]"
                )
            turns.append(Turn("user" if m.role == "user" else "assistant", _turn_parts(m.content, turns)))
        uses_tools = any(x.toolUse or x.toolResult for m in b.messages for x in m.content)
        if uses_tools and b.toolConfig is None:
            raise BadRequest(
                "The toolConfig field must be defined when using toolUse and toolResult content blocks."
            )
        _check_cache_points(b)
        last = b.messages[-1]
        content = [x for x in last.content if x.cachePoint is None]
        tail = content[-1].text if content else None
        if last.role == "assistant" and tail is not None and tail != tail.rstrip():
            # Claude behind Converse keeps the Messages API's prefill rule.
            raise BadRequest("messages: final assistant content cannot end with trailing whitespace")
        limit = b.inferenceConfig.maxTokens if b.inferenceConfig else None
        if limit is not None and limit < 1:
            raise BadRequest("The maximum tokens you requested exceeds the model limit or is below 1.")
        tools, tool_cache = _marked_after(b.toolConfig.tools if b.toolConfig else [], lambda t: t.toolSpec)
        system, system_cache = _marked_after(b.system, lambda x: x.text)
        return build_request(
            model=route.model or "",
            system=[x.text for x in system],
            turns=turns,
            stream=bool(route.stream),
            tool_names=[t.toolSpec.name for t in tools],
            max_tokens=limit,
            system_cache=system_cache,
            tool_cache=tool_cache,
        )

    def error(
        self,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        wait: float | None = None,  # Bedrock sends no retry hint
        request_id: str = "",
    ) -> Reply:
        default_name = "InternalServerException" if status >= 500 else "ValidationException"
        name, default_message = _ERRORS.get(status, (default_name, f"HTTP {status}"))
        error_type = f"{code or name}:http://internal.amazon.com/coral/com.amazon.bedrock/"
        return json_reply(status, {"message": message or default_message}, [("x-amzn-ErrorType", error_type)])

    def unknown_model(self, model: str, request_id: str = "") -> Reply:
        return self.error(404, f"Model {model} not found.", code="ResourceNotFoundException")

    def completion(self, req: ChatRequest, answer: Answer, *, response_id: str, created: int) -> Reply:
        content: list[dict[str, Any]] = []
        if answer.thinking:
            content.append(
                {
                    "reasoningContent": {
                        "reasoningText": {"text": answer.thinking, "signature": answer.signature}
                    }
                }
            )
        if answer.text:
            content.append({"text": answer.text})
        if (call := answer.tool_call) is not None:
            call_id, name, arguments = call
            content.append(
                {"toolUse": {"toolUseId": call_id, "name": name, "input": msgspec.json.decode(arguments)}}
            )
        return json_reply(
            200,
            {
                "output": {"message": {"role": "assistant", "content": content}},
                "stopReason": STOP_REASONS[answer.finish_reason],
                "usage": _usage(answer, self.prompt_cache().use(req)),
                "metrics": {"latencyMs": 1},
            },
        )

    def stream(self, req: ChatRequest, answer: Answer, *, response_id: str, created: int) -> BedrockStream:
        return BedrockStream(answer, random.Random(response_id), self.prompt_cache().use(req))

    def serve(self, route: Route, request: HttpRequest, ctx: Context) -> Reply:
        bases = list(dict.fromkeys(base_model(m) for m in ctx.models))
        if route.name == "foundation-models":
            return json_reply(200, {"modelSummaries": [_summary(m) for m in bases]})
        if route.name != "inference-profiles":
            return self.not_found(request)
        q = request.query
        if q.get("type", "SYSTEM_DEFINED") != "SYSTEM_DEFINED":
            return json_reply(200, {"inferenceProfileSummaries": []})
        profiles = [f"{geo}.{m}" for m in bases for geo in LISTED_GEOS]
        try:
            size = int(q.get("maxResults", "1000"))
            start = _index_of(q["nextToken"]) if "nextToken" in q else 0
        except (ValueError, BadRequest):
            return self.error(400, "Invalid maxResults or nextToken.", request_id=request.request_id)
        ids, more = page(profiles, start, max(1, size))
        body: dict[str, Any] = {"inferenceProfileSummaries": [_profile(p) for p in ids]}
        if more:
            body["nextToken"] = _token(start + len(ids))
        return json_reply(200, body)


def _arn(model: str) -> str:
    return f"arn:aws:bedrock:{REGION}::foundation-model/{model}"


def _summary(model: str) -> dict[str, Any]:
    return {
        "modelArn": _arn(model),
        "modelId": model,
        "modelName": model,
        "providerName": model.split(".", 1)[0].capitalize() if "." in model else "Simulator",
        "inputModalities": ["TEXT", "IMAGE"],
        "outputModalities": ["TEXT"],
        "responseStreamingSupported": True,
        "customizationsSupported": [],
        "inferenceTypesSupported": ["INFERENCE_PROFILE"],
        "modelLifecycle": {"status": "ACTIVE"},
    }


def _profile(profile_id: str) -> dict[str, Any]:
    geo, _, model = profile_id.partition(".")
    return {
        "inferenceProfileName": f"{geo.upper()} {model}",
        "inferenceProfileId": profile_id,
        "inferenceProfileArn": f"arn:aws:bedrock:{REGION}:{ACCOUNT}:inference-profile/{profile_id}",
        "models": [{"modelArn": _arn(model)}],
        "status": "ACTIVE",
        "type": "SYSTEM_DEFINED",
        "description": f"Routes requests to {model} across {geo.upper()} regions.",
    }


def _usage(answer: Answer, cache: CacheUse) -> dict[str, int]:
    """`inputTokens` leaves out what the cache read or wrote; `totalTokens` sums all four."""
    usage = {
        "inputTokens": max(0, answer.prompt_tokens - cache.read - cache.written),
        "outputTokens": answer.completion_tokens,
    }
    if cache.marked:
        usage |= {"cacheReadInputTokens": cache.read, "cacheWriteInputTokens": cache.written}
    return usage | {"totalTokens": sum(usage.values())}


def _lower_camel(name: str) -> str:
    return name[:1].lower() + name[1:]


class BedrockStream:
    """messageStart, content blocks (text and reasoning start with a delta, tool use with
    contentBlockStart), contentBlockStop, messageStop, then metadata with the usage."""

    headers: Sequence[tuple[str, str]] = (("content-type", "application/vnd.amazon.eventstream"),)

    def __init__(self, answer: Answer, rng: random.Random, cache: CacheUse) -> None:
        self._answer = answer
        self._rng = rng
        self._cache = cache
        self._index = -1
        self._open: str | None = None  # "reasoning", "text" or "tool"

    def _payload(self, obj: dict[str, Any]) -> bytes:
        # Real traffic pads payloads with a "p" key of varying length; clients must ignore it.
        return msgspec.json.encode(obj | {"p": _PADDING[: self._rng.randint(1, len(_PADDING))]})

    def _event(self, event_type: str, obj: dict[str, Any]) -> bytes:
        return eventstream.event(event_type, self._payload(obj))

    def _close(self) -> bytes:
        """End the open block; a reasoning block ends with its signature."""
        out = b""
        if self._open == "reasoning":
            out += self._delta({"reasoningContent": {"signature": self._answer.signature}})
        if self._open is not None:
            out += self._event("contentBlockStop", {"contentBlockIndex": self._index})
        self._open = None
        return out

    def _switch(self, kind: str) -> bytes:
        out = self._close()
        self._open, self._index = kind, self._index + 1
        return out

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return self._event("contentBlockDelta", {"contentBlockIndex": self._index, "delta": delta})

    def start(self) -> bytes:
        return self._event("messageStart", {"role": "assistant"})

    def piece(self, piece: Piece) -> bytes:
        if isinstance(piece, ThinkingPiece):
            out = b"" if self._open == "reasoning" else self._switch("reasoning")
            return out + self._delta({"reasoningContent": {"text": piece.text}})
        if isinstance(piece, TextPiece):
            out = b"" if self._open == "text" else self._switch("text")
            return out + self._delta({"text": piece.text})
        if isinstance(piece, ToolCallStart):
            start = {"toolUse": {"toolUseId": piece.id, "name": piece.name}}
            return self._switch("tool") + self._event(
                "contentBlockStart", {"contentBlockIndex": self._index, "start": start}
            )
        assert isinstance(piece, ToolCallArgs)
        return self._delta({"toolUse": {"input": piece.fragment}})

    def finish(self) -> bytes:
        return (
            self._close()
            + self._event("messageStop", {"stopReason": STOP_REASONS[self._answer.finish_reason]})
            + self._event(
                "metadata", {"usage": _usage(self._answer, self._cache), "metrics": {"latencyMs": 1}}
            )
        )

    def keepalive(self) -> bytes:
        return b""

    def inband_error(self, message: str, code: str) -> bytes:
        name = _lower_camel(code or "throttlingException")
        payload: dict[str, Any] = {
            "message": message or "Too many requests, please wait before trying again."
        }
        if name == "modelStreamErrorException":
            payload |= {"originalStatusCode": 500, "originalMessage": payload["message"]}
        return eventstream.exception(name, msgspec.json.encode(payload))

    def malformed(self) -> bytes:
        return eventstream.corrupt_crc(self._delta({"text": "lost"}))
