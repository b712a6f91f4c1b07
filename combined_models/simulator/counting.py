"""The simulated providers' token-count endpoints (provider-protocols.md §11).

Anthropic `POST /v1/messages/count_tokens`, Bedrock `POST /model/{id}/count-tokens`
(checked like its other routes, SigV4 included) and Gemini `POST /v1beta/models/{m}:countTokens`.
The other dialects have none: their usual 404 answers.

The count is `estimate_tokens` of what was received: the words of the prompt's text, so a
test can work out the number it expects and tell that it came from upstream. Each request
is recorded (`requests`) and counted in the simulator's `endpoint_requests["count_tokens"]`.
Count requests draw scripted faults from a queue of their own (`push_fault`, or
`POST /_sim/count-faults` from another process), so a fault meant for a chat is never
spent on a count the same client made meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from collections.abc import Mapping
from typing import Any

import h11
import msgspec
import trio

from ._http import HttpConnection
from .dialects.base import Context, Dialect, HttpRequest, Reply, Route, json_reply
from .dialects.bedrock import base_model
from .faults import STREAM_ONLY_KINDS, Fault, FaultQueue, status_reply

COUNTED = "count_tokens"  # the key in `endpoint_requests`
# Strings that are no prompt text: names of things, formats, opaque data.
_NOT_TEXT = frozenset(
    {
        "model",
        "type",
        "role",
        "media_type",
        "mimeType",
        "format",
        "data",
        "bytes",
        "signature",
        "thoughtSignature",
    }
)
ANTHROPIC_FIELDS = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "cache_control",
        "output_config",
        "context_management",
        "mcp_servers",
    }
)
CONVERSE_FIELDS = frozenset({"messages", "system", "toolConfig", "additionalModelRequestFields"})
GEMINI_PREFIX = "/v1beta/models/"


class CountRecord(msgspec.Struct, kw_only=True):
    """One count request as the simulator saw it, and its answer."""

    request_id: str
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # the decoded JSON body; None when it was not JSON
    model: str = ""
    fault: str | None = None
    status: int = 0
    tokens: int | None = None  # the count answered


class _FaultCommand(msgspec.Struct):
    push: list[Fault] = []
    clear: bool = False


class CountRoute(msgspec.Struct, frozen=True):
    kind: str  # "count", or "control" for the scripting endpoints
    model: str = ""  # from the path (Bedrock, Gemini); Anthropic's is in the body


def estimate_tokens(value: Any, key: str = "") -> int:
    """The simulator's token count: the words of every string in `value` that is prompt text."""
    if isinstance(value, str):
        return 0 if key in _NOT_TEXT else len(value.split())
    if isinstance(value, dict):
        return sum(estimate_tokens(v, k) for k, v in value.items())
    if isinstance(value, list):
        return sum(estimate_tokens(v, key) for v in value)
    return 0


class BadCount(Exception):
    """The count request is malformed: a 400 in the dialect's envelope."""


class CountEndpoint:
    """The count endpoint of one simulator, in its dialect."""

    def __init__(self, dialect: Dialect, name: str, endpoint_requests: dict[str, int]) -> None:
        self.dialect = dialect
        self.name = name
        self.requests: list[CountRecord] = []
        self._endpoint_requests = endpoint_requests  # the simulator's, shared
        self._faults = FaultQueue()

    def push_fault(self, fault: Fault) -> None:
        """Queue `fault` for the next count requests (chat requests never draw it)."""
        self._faults.push(fault)

    def clear_faults(self) -> None:
        self._faults.clear()

    def route(self, method: str, path: str) -> CountRoute | None:
        """The count route `path` names in this dialect; None when it names none."""
        if path in ("/_sim/count-faults", "/_sim/counts"):
            return CountRoute("control")
        if method != "POST":
            return None
        name = self.dialect.name
        if name == "anthropic" and path == "/v1/messages/count_tokens":
            return CountRoute("count")
        if name == "bedrock" and path.startswith("/model/"):
            model, _, op = path[len("/model/") :].partition("/")
            if op == "count-tokens" and model:
                return CountRoute("count", urllib.parse.unquote(model))
        if name == "gemini" and path.startswith(GEMINI_PREFIX):
            model, colon, verb = urllib.parse.unquote(path[len(GEMINI_PREFIX) :]).rpartition(":")
            if colon and verb == "countTokens" and model:
                return CountRoute("count", model)
        return None

    async def answer(
        self, conn: HttpConnection, route: CountRoute, request: h11.Request, body: bytes, ctx: Context
    ) -> None:
        method = request.method.decode("latin-1")
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        if route.kind == "control":
            reply = self._control(method, path, body)
            return await conn.send_reply(reply.status, reply.headers, reply.body)
        self._endpoint_requests[COUNTED] = self._endpoint_requests.get(COUNTED, 0) + 1
        http = HttpRequest(
            method=method,
            target=target,
            path=path,
            query=dict(urllib.parse.parse_qsl(query, keep_blank_values=True)),
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers},
            body=body,
            request_id=f"req_{self.name}_c{len(self.requests) + 1}",
        )
        try:
            decoded = msgspec.json.decode(body) if body else None
        except msgspec.DecodeError:
            decoded = None
        record = CountRecord(
            request_id=http.request_id,
            method=method,
            path=path,
            headers=http.headers,
            body=decoded,
            model=route.model,
        )
        self.requests.append(record)
        fault = self._faults.take()
        record.fault = fault.kind if fault else None
        if fault is not None and (fault.kind == "reset_before_headers" or fault.kind in STREAM_ONLY_KINDS):
            return await conn.reset()  # nothing to stream: a stream fault breaks before any byte
        if fault is not None and fault.kind == "stall_before":
            if fault.seconds > 0:
                await trio.sleep(fault.seconds)
            else:
                await trio.sleep_forever()  # until the client goes away
        if fault is not None and fault.kind == "status":
            reply = status_reply(self.dialect, fault, http.request_id)
        else:
            reply = self._count(route, http, decoded, ctx, record)
        record.status = reply.status
        headers = [*reply.headers, (self.dialect.request_id_header, http.request_id)]
        await conn.send_reply(reply.status, headers, reply.body)

    def _count(
        self, route: CountRoute, http: HttpRequest, body: Any, ctx: Context, record: CountRecord
    ) -> Reply:
        d, rid = self.dialect, http.request_id
        auth_route = Route("endpoint", route.model or None, name=COUNTED)
        if (refusal := d.check_auth(auth_route, http, ctx)) is not None:
            return refusal
        try:
            if not isinstance(body, dict):
                raise BadCount("the request body is not a JSON object")
            model, prompt, key = _read(d.name, route.model, body)
        except BadCount as e:
            return d.error(400, str(e), request_id=rid)
        record.model = model
        if d.name == "bedrock" and base_model(model) != model:
            # As Bedrock answers an inference profile id (provider-protocols.md §11.2).
            return d.error(400, "The provided model doesn't support counting tokens.", request_id=rid)
        if not d.model_known(model, ctx.models):
            return d.unknown_model(model, rid)
        tokens = max(1, estimate_tokens(prompt))
        record.tokens = tokens
        answer: dict[str, Any] = {key: tokens}
        if d.name == "gemini":
            answer["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": tokens}]
        return json_reply(200, answer)

    def _control(self, method: str, path: str, body: bytes) -> Reply:
        """`POST /_sim/count-faults` (as `/_sim/faults`), `GET /_sim/counts` (the records)."""
        if method == "POST" and path == "/_sim/count-faults":
            try:
                command = msgspec.json.decode(body, type=_FaultCommand)
            except msgspec.DecodeError as e:
                return json_reply(400, {"error": str(e)})
            if command.clear:
                self.clear_faults()
            for fault in command.push:
                self.push_fault(fault)
            return json_reply(200, {"queued": len(self._faults)})
        if method == "GET" and path == "/_sim/counts":
            return json_reply(200, self.requests)
        return json_reply(404, {"error": f"no control endpoint {method} {path}"})


def _read(dialect: str, path_model: str, body: Mapping[str, Any]) -> tuple[str, Any, str]:
    """(model, the prompt to count, the answer's key) of a count body; BadCount when it is malformed."""
    if dialect == "anthropic":
        extra = sorted(set(body) - ANTHROPIC_FIELDS)
        if extra:
            raise BadCount(f"{extra[0]}: Extra inputs are not permitted")
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not model:
            raise BadCount("model: Field required")
        if not isinstance(messages, list) or not messages:
            raise BadCount("messages: at least one message is required")
        return model, {k: v for k, v in body.items() if k != "model"}, "input_tokens"
    if dialect == "bedrock":
        given = body.get("input")
        if set(body) != {"input"} or not isinstance(given, dict) or len(given) != 1:
            raise BadCount("input: exactly one of converse or invokeModel is required")
        if isinstance(converse := given.get("converse"), dict):
            extra = sorted(set(converse) - CONVERSE_FIELDS)
            if extra:
                raise BadCount(f"Unknown parameter in input.converse: {extra[0]!r}")
            if not isinstance(converse.get("messages"), list) or not converse["messages"]:
                raise BadCount("input.converse.messages: at least one message is required")
            return path_model, converse, "inputTokens"
        invoke = given.get("invokeModel")
        encoded = invoke.get("body") if isinstance(invoke, dict) else None
        try:
            inner = msgspec.json.decode(base64.b64decode(str(encoded), validate=True))
        except (binascii.Error, msgspec.DecodeError):
            raise BadCount("input.invokeModel.body: base64 of a JSON body is required") from None
        return path_model, inner, "inputTokens"
    # gemini
    if set(body) - {"contents", "generateContentRequest"} or len(body) != 1:
        raise BadCount("exactly one of contents or generateContentRequest is required")
    if "contents" in body:
        request: Any = {"contents": body["contents"]}
    else:
        request = body["generateContentRequest"]
        if not isinstance(request, dict) or request.get("model") != f"models/{path_model}":
            raise BadCount("generateContentRequest.model must name the model of the path, as models/{model}")
    if not isinstance(request.get("contents"), list) or not request["contents"]:
        raise BadCount("contents is not specified")
    return path_model, request, "totalTokens"
