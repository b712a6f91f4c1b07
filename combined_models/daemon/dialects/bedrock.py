"""Amazon Bedrock Runtime ConverseStream (and the control plane's model lists), sans-IO.

Requests are signed with SigV4 over the exact body bytes, or carry a Bedrock API
key as a bearer token. The answer is the binary AWS event stream
(`eventstream.py`) whose JSON events are decoded here into neutral items.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from ...chat import (
    ChatRequest,
    DecodedItem,
    DocumentPart,
    Finished,
    ImagePart,
    Message,
    Part,
    TextEvent,
    TextPart,
    ThinkingEvent,
    ThinkingPart,
    ToolCallPart,
    ToolResultPart,
    Usage,
)
from ..errors import Failure, UpstreamError, classify_status, retry_after_from_headers
from .aws_credentials import AwsCredentials
from .base import (
    Endpoint,
    HttpRequest,
    event_object,
    join_url,
    json_body,
    kind_in_stream,
    loads_json,
    merge_headers,
    short,
)
from .claude_family import (
    StreamedToolUse,
    claude_turns,
    keep_last_breakpoints,
    replayable,
    thinking_limits,
    unit_temperature,
)
from .eventstream import EventStreamDecoder, EventStreamError, EventStreamMessage
from .sigv4 import model_path, sign_request

__all__ = ["BedrockDialect", "BedrockStreamDecoder", "classify_aws_error", "converse_body"]

PROFILES_CURSOR = "profiles"

_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
_DOCUMENT_FORMATS = {
    "application/pdf": "pdf",
    "text/csv": "csv",
    "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "text/html": "html",
    "text/plain": "txt",
    "text/markdown": "md",
}
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
_MALFORMED_STOPS = frozenset({"malformed_model_output", "malformed_tool_use"})

# Where a model takes `cachePoint` blocks: AWS lists Claude and Nova, and Nova caches no
# tools. Other models get none (a block they do not know may be refused).
_CLAUDE_CACHING = frozenset({"tools", "system", "messages"})
_NOVA_CACHING = frozenset({"system", "messages"})
_CACHE = "cache"  # a block's breakpoint while the body is built; becomes a cachePoint after it

_TOOL_ID = re.compile(r"[a-zA-Z0-9_.:-]{1,64}")
_DOC_NAME_BAD = re.compile(r"[^A-Za-z0-9\s\-()\[\]]+")
_REGION_IN_HOST = re.compile(r"^bedrock(?:-runtime)?(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com$")
_DATA_URL = re.compile(r"data:([^;,]+);base64,(.*)", re.DOTALL)


# ---------------------------------------------------------------- request body


def converse_body(request: ChatRequest, model: str) -> dict[str, Any]:
    """The ConverseStream JSON body for `request` (the model id travels in the path).

    Raises UpstreamError(UNSUPPORTED) for content Bedrock cannot take (an image by
    URL, a document or image format it does not know).
    """
    body: dict[str, Any] = {"messages": _messages(request.messages)}
    system = _system(request)
    if system:
        body["system"] = system
    max_tokens, budget = thinking_limits(request.max_tokens, _thinking_request(request, model))
    inference: dict[str, Any] = {}
    if max_tokens is not None:
        inference["maxTokens"] = max_tokens
    if budget is not None:
        body["additionalModelRequestFields"] = {"thinking": {"type": "enabled", "budget_tokens": budget}}
    elif request.temperature is not None:
        # Bedrock's range is 0-1, as Claude's. With thinking, Claude rejects any
        # temperature/top_p change, so neither is sent then.
        inference["temperature"] = unit_temperature(request.temperature)
    if request.top_p is not None and budget is None:
        inference["topP"] = request.top_p
    if request.top_k is not None and budget is None and _claude(model):
        # No Converse field: Claude takes it as a native parameter. Other vendors' models name it
        # differently or not at all, so it is left out for them.
        body.setdefault("additionalModelRequestFields", {})["top_k"] = request.top_k
    stops = [s for s in request.stop or () if s]
    if stops:
        inference["stopSequences"] = stops
    if inference:
        body["inferenceConfig"] = inference
    tool_config = _tool_config(request, body["messages"])
    if tool_config:
        body["toolConfig"] = tool_config
    _cache_points(body, model)
    return body


def _system(request: ChatRequest) -> list[dict[str, Any]]:
    blocks = request.system if isinstance(request.system, list) else [TextPart(request.system or "")]
    return [_marked({"text": b.text}, b.cache) for b in blocks if b.text.strip()]


def _marked(block: dict[str, Any], ttl: str | None) -> dict[str, Any]:
    if ttl:
        block[_CACHE] = ttl
    return block


def _cache_points(body: dict[str, Any], model: str) -> None:
    """Each marked block gets a `cachePoint` block right after it, where the model caches.

    At most four, the last ones kept (Claude's rule). A marked toolResult keeps its
    cachePoint after it, in the turn: `ToolResultContentBlock` has no cachePoint member.
    """
    lowered = model.lower()
    where: frozenset[str] = frozenset()
    if "anthropic." in lowered or "claude" in lowered:
        where = _CLAUDE_CACHING
    elif "amazon.nova" in lowered:
        where = _NOVA_CACHING
    tools = (body.get("toolConfig") or {}).get("tools") or []
    lists = [
        (tools, "tools" in where),
        (body.get("system") or [], "system" in where),
        *((m["content"], "messages" in where) for m in body["messages"]),
    ]
    keep_last_breakpoints((b for blocks, on in lists if on for b in blocks), _CACHE)
    for blocks, on in lists:
        expanded: list[dict[str, Any]] = []
        for block in blocks:
            ttl = block.pop(_CACHE, None)
            expanded.append(block)
            if ttl and on:
                point = {"type": "default"} if ttl == "5m" else {"type": "default", "ttl": ttl}
                expanded.append({"cachePoint": point})
        blocks[:] = expanded


def _claude(model: str) -> bool:
    return "anthropic." in model or "claude" in model.lower()


def _thinking_request(request: ChatRequest, model: str) -> int | None:
    """The thinking budget asked for, where Claude on Bedrock can take it.

    `thinking_budget` means "where supported", so none is asked for where the request
    would be rejected for it: other Bedrock models (whose reasoning switches differ per
    vendor), or a forced tool choice.
    """
    if not _claude(model):
        return None
    if request.tools and request.tool_choice not in (None, "auto", "none"):
        return None
    return request.thinking_budget


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    # Claude's rules, for every model: Converse itself wants alternating roles and no empty content.
    return claude_turns(
        ((msg.role, _blocks(msg)) for msg in messages),
        is_text=lambda b: "text" in b,
        is_tool_result=lambda b: "toolResult" in b,
    )


def _blocks(msg: Message) -> list[dict[str, Any]]:
    parts: list[Part] = [TextPart(msg.content)] if isinstance(msg.content, str) else list(msg.content)
    blocks: list[dict[str, Any]] = []
    text: list[str] = []

    def flush_text(ttl: str | None = None) -> None:
        # Neighbouring text parts travel as one block; a breakpoint ends one.
        if text:
            blocks.append(_marked({"text": "".join(text)}, ttl))
            text.clear()

    for p in parts:
        if isinstance(p, TextPart):
            text.append(p.text)
            if p.cache:
                flush_text(p.cache)
            continue
        flush_text()
        block = _user_block(p) if msg.role == "user" else _assistant_block(p)
        if block is not None:
            blocks.append(_marked(block, None if isinstance(p, ThinkingPart) else p.cache))
    flush_text()
    return blocks


def _user_block(p: Part) -> dict[str, Any] | None:
    if isinstance(p, ToolResultPart):
        blocks = [TextPart(p.content)] if isinstance(p.content, str) else p.content
        content = [
            {"image": _image(b)} if isinstance(b, ImagePart) else {"text": b.text}
            for b in blocks
            if isinstance(b, ImagePart) or b.text.strip()
        ]
        return {
            "toolResult": {
                "toolUseId": _tool_id(p.tool_call_id),
                "content": content,
                "status": "error" if p.is_error else "success",
            }
        }
    if isinstance(p, ImagePart):
        return {"image": _image(p)}
    if isinstance(p, DocumentPart):
        return {"document": _document(p)}
    return None  # a tool call or thinking in a user turn has no Bedrock form


def _assistant_block(p: Part) -> dict[str, Any] | None:
    if isinstance(p, ToolCallPart):
        return {"toolUse": {"toolUseId": _tool_id(p.id), "name": p.name, "input": p.arguments}}
    if isinstance(p, ThinkingPart) and replayable(p):
        return {"reasoningContent": {"reasoningText": {"text": p.text, "signature": p.signature}}}
    return None


def _image(p: ImagePart) -> dict[str, Any]:
    media_type, data = p.media_type, p.data
    if p.url:
        m = _DATA_URL.fullmatch(p.url)
        if not m:
            raise UpstreamError(Failure.UNSUPPORTED, "Bedrock takes images inline only, not by URL")
        media_type, data = m.group(1), m.group(2)
    fmt = _IMAGE_FORMATS.get(media_type.lower())
    if fmt is None:
        raise UpstreamError(Failure.UNSUPPORTED, f"Bedrock does not take {media_type} images")
    return {"format": fmt, "source": {"bytes": data}}


def _document(p: DocumentPart) -> dict[str, Any]:
    fmt = _DOCUMENT_FORMATS.get(p.media_type.lower())
    if fmt is None:
        raise UpstreamError(Failure.UNSUPPORTED, f"Bedrock does not take {p.media_type} documents")
    # Names allow letters, digits, single spaces, hyphens, parentheses and brackets only.
    name = " ".join(_DOC_NAME_BAD.sub(" ", p.title or "").split())[:200].strip()
    if not name:
        # A stable default: the same document gets the same name on every attempt.
        name = "document-" + hashlib.sha256(p.data.encode()).hexdigest()[:8]
    return {"format": fmt, "name": name, "source": {"bytes": p.data}}


def _tool_id(value: str) -> str:
    """Bedrock's toolUseId pattern; other providers' ids are mapped the same way for call and result."""
    if _TOOL_ID.fullmatch(value):
        return value
    # A hash of the original keeps two ids that clean up alike apart.
    clean = re.sub(r"[^a-zA-Z0-9_.:-]", "_", value)[:55]
    return f"{clean}_{hashlib.sha256(value.encode()).hexdigest()[:8]}"


def _tool_config(request: ChatRequest, messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Tools and the choice.

    Bedrock has no "none" choice, and rejects a history with toolUse/toolResult
    blocks unless a toolConfig is present. So "none" omits the tools when the
    history has no tool blocks (truly none), and otherwise sends them with no
    choice (the model's default, auto). Tools named in the history but missing
    from `request.tools` get a permissive stub spec for the same reason.
    """
    used = _tools_in_history(messages)
    if request.tool_choice == "none" and not used:
        return None
    tools = [
        _marked(
            {
                "toolSpec": {
                    "name": t.name,
                    **({"description": t.description} if t.description else {}),
                    "inputSchema": {"json": t.parameters},
                }
            },
            t.cache,
        )
        for t in request.tools
    ]
    declared = {t.name for t in request.tools}
    tools += [
        {
            "toolSpec": {
                "name": name,
                "description": "A tool used earlier in this conversation.",
                "inputSchema": {"json": {"type": "object"}},
            }
        }
        for name in used
        if name not in declared
    ]
    if not tools:
        return None
    config: dict[str, Any] = {"tools": tools}
    choice = request.tool_choice
    if request.tools and choice not in (None, "none"):
        if choice == "auto":
            config["toolChoice"] = {"auto": {}}
        elif choice == "required":
            config["toolChoice"] = {"any": {}}
        else:
            config["toolChoice"] = {"tool": {"name": choice}}
    return config


def _tools_in_history(messages: list[dict[str, Any]]) -> list[str]:
    """Tool names called in the history, in order."""
    names: list[str] = []
    for m in messages:
        for b in m["content"]:
            if "toolUse" in b and b["toolUse"]["name"] not in names:
                names.append(b["toolUse"]["name"])
    return names


# ---------------------------------------------------------------- auth and URLs


def _region(endpoint: Endpoint, url: str) -> str:
    if endpoint.region:
        return endpoint.region
    m = _REGION_IN_HOST.match(urlsplit(url).hostname or "")
    if m:
        return m.group(1)
    raise UpstreamError(Failure.AUTH, "no AWS region configured")


def _base(endpoint: Endpoint, explicit: str | None, host: str) -> str:
    if explicit:
        return explicit
    if not endpoint.region:
        raise UpstreamError(Failure.AUTH, "no AWS region configured")
    return f"https://{host}.{endpoint.region}.amazonaws.com"


def _authorized(
    method: str, url: str, headers: dict[str, str], body: bytes, endpoint: Endpoint, now: datetime | None
) -> HttpRequest:
    """The request with its auth: the Bedrock API key as a bearer, else a SigV4 signature."""
    if endpoint.api_key:
        headers = merge_headers(headers, {"authorization": f"Bearer {endpoint.api_key}"})
    elif isinstance(endpoint.credentials, AwsCredentials):
        signed = sign_request(
            method=method,
            url=url,
            headers=headers,
            body=body,
            credentials=endpoint.credentials,
            region=_region(endpoint, url),
            now=now or datetime.now(UTC),
        )
        headers = merge_headers(headers, signed)
    else:
        raise UpstreamError(Failure.AUTH, "no AWS credentials")
    return HttpRequest(method, url, headers, body)


# ---------------------------------------------------------------- the dialect


class BedrockDialect:
    """ConverseStream on `bedrock-runtime`, model lists on the `bedrock` control plane.

    Endpoint: `base_url` (empty: `https://bedrock-runtime.{region}.amazonaws.com`),
    `region`, and either `api_key` (a Bedrock API key) or `credentials` (AwsCredentials).
    `options["control_url"]` overrides the control-plane base.
    """

    name = "bedrock"

    def build_chat(
        self, request: ChatRequest, model: str, endpoint: Endpoint, now: datetime | None = None
    ) -> HttpRequest:
        base = _base(endpoint, endpoint.base_url, "bedrock-runtime")
        url = base.rstrip("/") + model_path(model, "converse-stream")
        body = json_body(converse_body(request, model))
        headers = {
            "content-type": "application/json",
            "accept": "application/vnd.amazon.eventstream",
            **endpoint.headers,
        }
        return _authorized("POST", url, headers, body, endpoint, now)

    def stream_decoder(self) -> BedrockStreamDecoder:
        return BedrockStreamDecoder()

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> UpstreamError:
        code, message = _error_code_and_message(headers, body)
        message = message or f"HTTP {status}"
        kind = classify_aws_error(code, message, status)
        label = f"HTTP {status} {code}" if code else f"HTTP {status}"
        # Bedrock itself sends no wait hints; a gateway in front of it might.
        retry = retry_after_from_headers(headers, now)
        return UpstreamError(kind, f"{label}: {short(message)}", status=status, retry_after=retry)

    def build_list_models(
        self, endpoint: Endpoint, now: datetime | None = None, cursor: str | None = None
    ) -> HttpRequest:
        """Two listings: foundation models (cursor None), then system inference profiles (paged)."""
        base = _base(endpoint, endpoint.options.get("control_url"), "bedrock")
        if cursor is None:
            query = {"byOutputModality": "TEXT"}
            path = "foundation-models"
        else:
            token = _profiles_token(cursor)
            # `type` and `nextToken` are the wire names (botocore bedrock service-2.json).
            query = {"type": "SYSTEM_DEFINED", "maxResults": "1000"}
            if token:
                query["nextToken"] = token
            path = "inference-profiles"
        url = join_url(base, path) + "?" + urlencode(query, quote_via=quote, safe="")
        headers = {"accept": "application/json", **endpoint.headers}
        return _authorized("GET", url, headers, b"", endpoint, now)

    def parse_models(self, body: bytes, cursor: str | None = None) -> tuple[list[str], str | None]:
        data = loads_json(body)
        if not isinstance(data, dict):
            raise ValueError("model list is not a JSON object")
        if cursor is None:
            ids = [
                str(m["modelId"])
                for m in data.get("modelSummaries") or []
                if isinstance(m, dict) and m.get("modelId") and _on_demand_streaming(m)
            ]
            return ids, PROFILES_CURSOR
        _profiles_token(cursor)
        ids = [
            str(p["inferenceProfileId"])
            for p in data.get("inferenceProfileSummaries") or []
            if isinstance(p, dict) and p.get("inferenceProfileId") and p.get("status", "ACTIVE") == "ACTIVE"
        ]
        token = data.get("nextToken")
        return ids, f"{PROFILES_CURSOR}:{token}" if isinstance(token, str) and token else None


def _on_demand_streaming(m: Mapping[str, Any]) -> bool:
    types = m.get("inferenceTypesSupported")
    if isinstance(types, list) and "ON_DEMAND" not in types:
        return False  # provisioned only, or reachable only through a profile (listed on the next page)
    return m.get("responseStreamingSupported") is not False


def _profiles_token(cursor: str) -> str:
    head, sep, token = cursor.partition(":")
    if head != PROFILES_CURSOR:
        raise ValueError(f"unknown Bedrock model-list cursor {cursor!r}")
    return token if sep else ""


# ---------------------------------------------------------------- errors


def _error_code_and_message(headers: Mapping[str, str], body: bytes) -> tuple[str, str]:
    """As botocore: `x-amzn-ErrorType` (before `:`, after the last `#`), else body `__type`/`code`."""
    raw = next((v for k, v in headers.items() if k.lower() == "x-amzn-errortype"), "")
    try:
        data = loads_json(body) if body else {}
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return _clean_code(raw), body.decode("utf-8", "replace").strip()
    if not raw:
        raw = str(data.get("__type") or data.get("code") or "")
    return _clean_code(raw), str(data.get("message") or data.get("Message") or "")


def _clean_code(raw: str) -> str:
    return raw.split(":", 1)[0].rsplit("#", 1)[-1].strip()


def _text_kind(message: str) -> Failure | None:
    """What a ValidationException's text says, beyond "bad request"."""
    text = message.lower().replace("’", "'")
    if "input is too long" in text or "too many input tokens" in text or "prompt is too long" in text:
        return Failure.CONTEXT_TOO_LONG
    if "on-demand throughput isn't supported" in text or "model identifier is invalid" in text:
        # The id is wrong for this account or region: switch member, not an outage.
        return Failure.NOT_FOUND
    if "prefill" in text or "must end with a user message" in text:
        return Failure.PREFILL_REJECTED
    return None


_AUTH_CODES = frozenset(
    {
        "accessdeniedexception",
        "unrecognizedclientexception",
        "invalidsignatureexception",
        "incompletesignatureexception",
        "signaturedoesnotmatch",
        "expiredtokenexception",
        "missingauthenticationtokenexception",
        "invalidclienttokenid",
    }
)
_TRANSIENT_CODES = frozenset(
    {"modeltimeoutexception", "internalserverexception", "modelerrorexception", "modelstreamerrorexception"}
)


def classify_aws_error(code: str, message: str, status: int) -> Failure:
    """A Bedrock error code (any case: HTTP or in-stream spelling) and message -> its failover class."""
    c = code.lower()
    text = message.lower()
    if c in ("throttlingexception", "toomanyrequestsexception"):
        # "Too many tokens per day": a daily quota, not a per-minute window.
        return Failure.QUOTA_EXHAUSTED if "per day" in text else Failure.RATE_LIMITED
    if c == "modelnotreadyexception":
        return Failure.OVERLOADED
    if c == "servicequotaexceededexception":
        return Failure.QUOTA_EXHAUSTED  # despite its HTTP 400
    if c in _AUTH_CODES:
        if c == "accessdeniedexception" and "access to the model" in text:
            return Failure.NOT_FOUND  # this model is not enabled for the account; others may be
        return Failure.AUTH
    if c == "resourcenotfoundexception":
        return Failure.NOT_FOUND
    if c == "validationexception":
        return _text_kind(message) or Failure.BAD_REQUEST
    if c in _TRANSIENT_CODES:
        return Failure.TRANSIENT
    if c == "serviceunavailableexception":
        return Failure.OVERLOADED
    return _text_kind(message) or classify_status(status)


# ---------------------------------------------------------------- stream


class BedrockStreamDecoder:
    """ConverseStream event-stream bytes -> neutral items.

    Complete at `messageStop`; the `metadata` (usage) that follows it is waited
    for, but a stream that ends or breaks after `messageStop` is still complete.
    Tool calls are yielded whole, at their `contentBlockStop`.
    """

    def __init__(self) -> None:
        self._frames = EventStreamDecoder()
        self._tools: dict[int, StreamedToolUse] = {}
        self._finish: str | None = None
        self._usage = Usage()
        self._done = False

    def feed(self, data: bytes) -> list[DecodedItem]:
        if self._done:
            return []
        try:
            messages = self._frames.feed(data)
        except EventStreamError as e:
            return self._broken(UpstreamError(Failure.TRANSIENT, f"malformed stream: {e}"), e)
        out: list[DecodedItem] = []
        for message in messages:
            try:
                out.extend(self._message(message))
            except UpstreamError as e:
                out.extend(self._broken(e))
            except Exception as e:
                # Valid JSON of the wrong shape (or too deep, or a number out of range) is a
                # malformed event too: a stream failure, not our bug.
                what = f"{message.event_type or message.message_type}: {message.payload[:80]!r}"
                out.extend(
                    self._broken(UpstreamError(Failure.TRANSIENT, f"malformed stream event {what}"), e)
                )
            if self._done:
                break
        return out

    def close(self) -> list[DecodedItem]:
        if self._done:
            return []
        try:
            self._frames.eof()
        except EventStreamError as e:
            return self._broken(UpstreamError(Failure.TRANSIENT, f"malformed stream: {e}"), e)
        if self._finish is None:
            raise UpstreamError(Failure.TRANSIENT, "stream ended before messageStop (truncated)")
        return self._finished()

    def _finished(self) -> list[DecodedItem]:
        assert self._finish is not None
        self._done = True
        return [Finished(finish_reason=self._finish, usage=self._usage)]

    def _broken(self, error: UpstreamError, cause: BaseException | None = None) -> list[DecodedItem]:
        if self._finish is not None:
            return self._finished()  # the answer was complete; only the usage is lost
        if cause is None:
            raise error
        raise error from cause

    def _message(self, message: EventStreamMessage) -> list[DecodedItem]:
        kind = message.message_type
        if kind == "event":
            payload = event_object(message.payload) if message.payload else {}
            return self._event(message.event_type or "", payload)
        if kind == "exception":
            raise _stream_exception(message)
        if kind == "error":
            code = message.headers.get(":error-code", "error")
            text = message.headers.get(":error-message", "")
            raise UpstreamError(Failure.TRANSIENT, f"{code!s} in stream: {short(str(text))}")
        return []  # unknown message types are ignored, as botocore does

    def _event(self, name: str, e: dict[str, Any]) -> list[DecodedItem]:
        if name == "contentBlockDelta":
            return self._delta(int(e["contentBlockIndex"]), e["delta"])
        if name == "contentBlockStart":
            tool = (e.get("start") or {}).get("toolUse")
            if isinstance(tool, dict):
                self._tools[int(e["contentBlockIndex"])] = StreamedToolUse(
                    str(tool["toolUseId"]), str(tool["name"])
                )
            return []
        if name == "contentBlockStop":
            block = self._tools.pop(int(e["contentBlockIndex"]), None)
            return [block.call()] if block else []
        if name == "messageStop":
            reason = str(e["stopReason"])
            if reason in _MALFORMED_STOPS:
                raise UpstreamError(Failure.TRANSIENT, f"model stopped with {reason}")
            out: list[DecodedItem] = [b.call() for _, b in sorted(self._tools.items())]
            self._tools.clear()
            self._finish = _FINISH.get(reason, reason)
            return out
        if name == "metadata":
            self._usage = _usage(e.get("usage") or {})
            return self._finished() if self._finish is not None else []
        return []  # messageStart and events added later

    def _delta(self, index: int, delta: Mapping[str, Any]) -> list[DecodedItem]:
        # A text block may start with a delta: there is no text contentBlockStart.
        text = delta.get("text")
        if isinstance(text, str):
            return [TextEvent(text)] if text else []
        tool = delta.get("toolUse")
        if isinstance(tool, dict):
            block = self._tools.get(index)
            if block is None:
                raise UpstreamError(Failure.TRANSIENT, f"tool input for block {index} without its start")
            block.fragments.append(str(tool.get("input") or ""))
            return []
        reasoning = delta.get("reasoningContent")
        if isinstance(reasoning, dict):
            out: list[DecodedItem] = []
            if isinstance(reasoning.get("text"), str) and reasoning["text"]:
                out.append(ThinkingEvent(reasoning["text"]))
            if isinstance(reasoning.get("signature"), str) and reasoning["signature"]:
                out.append(ThinkingEvent("", signature=reasoning["signature"]))
            return out  # redactedContent has no neutral form
        return []


def _stream_exception(message: EventStreamMessage) -> UpstreamError:
    """An exception frame under HTTP 200: the answer broke mid-stream, so it is for failover."""
    name = message.exception_type or "exception"
    try:
        payload = loads_json(message.payload)
    except ValueError:
        payload = None
    text = ""
    if isinstance(payload, dict):
        text = str(payload.get("message") or payload.get("Message") or payload.get("originalMessage") or "")
    kind = kind_in_stream(classify_aws_error(name, text, 500))
    return UpstreamError(kind, f"{name} in stream: {short(text or 'no message')}")


def _usage(u: Mapping[str, Any]) -> Usage:
    """Bedrock's usage in the neutral count, where the input includes what the cache read or wrote.

    Bedrock reports `inputTokens` without the cached tokens, as Anthropic does, and
    `totalTokens` as all four summed. Should a response count them in `inputTokens`
    instead (then the total is only input plus output), they are not added twice.
    """
    given = int(u.get("inputTokens") or 0)
    output = int(u.get("outputTokens") or 0)
    read = int(u.get("cacheReadInputTokens") or 0)
    write = int(u.get("cacheWriteInputTokens") or 0)
    total = u.get("totalTokens")
    included = isinstance(total, int) and read + write > 0 and total < given + output + read + write
    return Usage(
        input_tokens=given if included else given + read + write,
        output_tokens=output,
        cache_read_tokens=read,
        cache_write_tokens=write,
    )
