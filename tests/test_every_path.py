"""Issue 12: every path the HTTP front door serves answers every method as the README says.

"`HEAD` gets the head a `GET` would, `OPTIONS` a 204 with `allow`, other methods 405 or
404. [...] a missing token is answered 403 or 401 before any of the body is read, and the
connection closes." (README, "When clients or providers misbehave", the HTTP bullet.)

`ROUTES` is the table: one row per request target (query included), with what its endpoint
allows and what its own method answers. A new path is one more row;
`test_the_table_covers_every_endpoint_and_chat_path` fails until it has one. Each case
starts its own daemon (simulated providers and the front door on a free loopback port) and
asks it over a real socket with httpx; the "no body after a HEAD" check reads the raw bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from combined_models import __version__
from combined_models.daemon.gateway.server import (
    ALLOWED_METHODS,
    COUNT_TOKENS_PATH,
    EVERY_METHOD,
    FRONT_ENDS,
    endpoint_of,
)
from combined_models.simulator import Simulator

from .conftest import ANSWER, MODEL, open_stack

ORIGIN = "http://localhost:3000"  # the one page allowed in the config
FOREIGN = "http://evil.example"  # a page not listed
SERVER = f"combined-models/{__version__}"
EXPOSED = "x-combined-models-provider, x-request-id, retry-after"
DEFAULT_REQUEST_HEADERS = "authorization, content-type, x-api-key, anthropic-version, anthropic-beta"
ASKED_HEADERS = "authorization, content-type, x-claude-code-session-id"
COUNTER = "counter"  # an Anthropic-dialect provider: the member that can count tokens
COUNTER_KEY = "key-counter-0123456789"

READ = "GET, HEAD, OPTIONS"
WRITE = "POST, OPTIONS"

HI = [{"role": "user", "content": "hi"}]
CHAT = {"model": MODEL, "messages": HI}
MESSAGES = {"model": MODEL, "max_tokens": 100, "messages": HI}
RESPONSES = {"model": MODEL, "input": "hi"}
COUNT = {"model": f"{COUNTER}/{MODEL}", "messages": HI}


@dataclass(frozen=True)
class Route:
    """One request target and how the front door must answer it."""

    id: str
    target: str  # path and query, as sent
    allow: str | None  # the `allow` header of its endpoint; None: no endpoint here (404)
    method: str  # the method that serves it (for no endpoint: one that gets the 404)
    status: int  # what `method` answers with the token
    body: dict[str, Any] | None = None  # what `method` sends
    api: str = "openai"  # the API the caller speaks: its token header and its errors' shape
    provider: str = ""  # the `x-combined-models-provider` of a served answer
    open: bool = False  # answers without the token (the liveness probe)
    varying_length: bool = False  # its body changes between two asks (uptime): content-length too
    content_type: str = "application/json"  # of its answer when served (errors are always JSON)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


ROUTES = [
    Route("health", "/health", READ, "GET", 200, open=True, varying_length=True),
    Route("health-query", "/health?full=1", READ, "GET", 200, open=True, varying_length=True),
    Route("models", "/v1/models", READ, "GET", 200),
    Route("models-slash", "/v1/models/", READ, "GET", 200),
    Route("models-bare", "/models", READ, "GET", 200),
    Route("models-anthropic", "/v1/models", READ, "GET", 200, api="anthropic"),
    Route("model", f"/v1/models/{MODEL}", READ, "GET", 200),
    Route("model-bare", f"/models/{MODEL}", READ, "GET", 200),
    Route("model-anthropic", f"/v1/models/{MODEL}", READ, "GET", 200, api="anthropic"),
    Route("model-unknown", "/v1/models/nonesuch", READ, "GET", 404),
    Route("model-unknown-anthropic", "/v1/models/nonesuch", READ, "GET", 404, api="anthropic"),
    Route("chat", "/v1/chat/completions", WRITE, "POST", 200, CHAT, provider="first"),
    Route("chat-bare", "/chat/completions", WRITE, "POST", 200, CHAT, provider="first"),
    Route("messages", "/v1/messages", WRITE, "POST", 200, MESSAGES, "anthropic", "first"),
    Route("messages-beta", "/v1/messages?beta=true", WRITE, "POST", 200, MESSAGES, "anthropic", "first"),
    Route("responses", "/v1/responses", WRITE, "POST", 200, RESPONSES, provider="first"),
    Route("responses-bare", "/responses", WRITE, "POST", 200, RESPONSES, provider="first"),
    Route("metrics", "/metrics", READ, "GET", 200, content_type=CONTENT_TYPE_LATEST),
    Route("count", COUNT_TOKENS_PATH, WRITE, "POST", 200, COUNT, "anthropic", COUNTER),
    Route("count-beta", f"{COUNT_TOKENS_PATH}?beta=true", WRITE, "POST", 200, COUNT, "anthropic", COUNTER),
    Route("unknown", "/nope", None, "GET", 404),
    Route("root", "/", None, "GET", 404),
    Route("chat-slash", "/v1/chat/completions/", None, "POST", 404, CHAT),
    Route("health-slash", "/health/", None, "GET", 404),
    Route("messages-batches", "/v1/messages/batches", None, "POST", 404, MESSAGES, "anthropic"),
]

# "<test>[<case id>]" -> what that case answers wrongly today: it runs as a strict xfail.
# Filled below, next to the expectations it is worded from.
KNOWN_WRONG: dict[str, str] = {}


def cases(test: str, *axes: tuple[str, list[Any]], routes: list[Route] | None = None) -> pytest.MarkDecorator:
    """`pytest.mark.parametrize` over ROUTES (or `routes`) and the other axes; a case in KNOWN_WRONG is a strict xfail."""
    names = ["route", *(name for name, _ in axes)]
    rows: list[list[Any]] = [[r] for r in (ROUTES if routes is None else routes)]
    for _, values in axes:
        rows = [[*row, v] for row in rows for v in values]
    params = []
    for row in rows:
        case = "-".join([row[0].id, *(_id(v) for v in row[1:])])
        reason = KNOWN_WRONG.get(f"{test}[{case}]")
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(*row, id=case, marks=marks))
    return pytest.mark.parametrize(names, params)


def _id(value: Any) -> str:
    if isinstance(value, bool):
        return "token" if value else "no-token"
    if value == ORIGIN:
        return "origin"
    return "no-origin" if value is None else str(value)


# ================================================================ the daemon


@dataclass
class Front:
    url: str  # http://127.0.0.1:PORT
    host: str
    port: int
    token: str

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10, trust_env=False)

    def headers(self, route: Route, *, token: bool, origin: str | None = None) -> dict[str, str]:
        """What a client of the route's API sends: its token (when `token`), its version header, a page's Origin."""
        out: dict[str, str] = {}
        if route.api == "anthropic":
            out["anthropic-version"] = "2023-06-01"
            if token:
                out["x-api-key"] = self.token
        elif token:
            out["authorization"] = f"Bearer {self.token}"
        if origin is not None:
            out["origin"] = origin
        return out


@asynccontextmanager
async def open_front(short_dir: Path) -> AsyncIterator[Front]:
    """Two providers offering MODEL: `first` (OpenAI dialect, serves chats), `counter` (Anthropic, counts)."""
    async with trio.open_nursery() as nursery:
        counter = Simulator(
            dialect="anthropic", models=[MODEL], text=ANSWER, name=COUNTER, api_key=COUNTER_KEY
        )
        await nursery.start(counter.run)
        extra = (
            f"[providers.{COUNTER}]\n"
            'api = "anthropic"\n'
            f'base_url = "{counter.base_url}"\n'
            f'api_key = "{COUNTER_KEY}"\n'
            f'models = ["{MODEL}"]\n'
            "[http]\n"
            'listen = "127.0.0.1:0"\n'
            f'allowed_origins = ["{ORIGIN}"]\n'
        )
        async with open_stack(short_dir, ("first",), extra=extra) as stack:
            gw = stack.server.gateway
            assert gw is not None and gw.address
            host, port = gw.address.rsplit(":", 1)
            yield Front(f"http://{gw.address}", host, int(port), gw.token)
        nursery.cancel_scope.cancel()


async def raw_head(front: Front, route: Route, headers: dict[str, str]) -> tuple[bytes, bytes]:
    """A HEAD over a plain socket (asking to close after it): the head, and every byte that followed it."""
    lines = [f"HEAD {route.target} HTTP/1.1", "host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    request = "\r\n".join([*lines, "connection: close", "", ""]).encode()
    got = b""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(front.host, front.port)
        async with stream:
            await stream.send_all(request)
            while data := await stream.receive_some(65536):
                got += data
    head, sep, rest = got.partition(b"\r\n\r\n")
    assert sep, f"no whole head: {got!r}"
    return head, rest


# ================================================================ expectations


def expected_status(route: Route, method: str, *, token: bool) -> int:
    """What a request answers (HEAD as GET), by the README's rules."""
    if not token and not route.open:
        return 401  # judged on its head: no token, no further look
    if route.allow is None:
        return 404
    if method == "HEAD":
        method = "GET"
    if method not in route.allow.split(", "):
        return 405
    return route.status if method == route.method else 200


def error_type(route: Route, reply: httpx.Response) -> str:
    """The error's type, read from the API's own envelope."""
    body = reply.json()
    if route.api == "anthropic" or route.path.startswith("/v1/messages"):
        assert body["type"] == "error", body
    return str(body["error"]["type"])


def expected_error_type(route: Route, status: int) -> str:
    """OpenAI's errors here are all `invalid_request_error`; Anthropic's name the status."""
    anthropic = route.api == "anthropic" or route.path.startswith("/v1/messages")
    if not anthropic:
        return "invalid_request_error"
    return {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}.get(
        status, "invalid_request_error"
    )


def cors(origin: str | None) -> dict[str, str]:
    """The CORS headers on every answer to a listed page."""
    if origin is None:
        return {}
    return {"access-control-allow-origin": origin, "access-control-expose-headers": EXPOSED, "vary": "origin"}


ENDPOINT_ROUTES = [r for r in ROUTES if r.allow is not None]


# ================================================================ the table itself


def test_the_table_covers_every_endpoint_and_chat_path() -> None:
    """Each endpoint, each front end's chat paths and the count path have rows; each row's `allow` is its endpoint's."""
    paths = {r.path for r in ROUTES}
    for front in FRONT_ENDS:
        for path in front.chat_paths:
            assert path in paths, f"{front.name} serves {path}: add a row to ROUTES"
    assert COUNT_TOKENS_PATH in paths
    assert {endpoint_of(r.path) for r in ROUTES} == {*ALLOWED_METHODS, None}
    for r in ROUTES:
        endpoint = endpoint_of(r.path)
        assert r.allow == (None if endpoint is None else ALLOWED_METHODS[endpoint]), r.id
    assert len({r.id for r in ROUTES}) == len(ROUTES)
    assert EVERY_METHOD == "GET, HEAD, POST, OPTIONS"


# ================================================================ HEAD


@cases("head", ("token", [True, False]), ("origin", [None, ORIGIN]))
async def test_head_is_the_head_a_get_gets_without_a_body(
    short_dir: Path, route: Route, token: bool, origin: str | None
) -> None:
    async with open_front(short_dir) as front, front.http() as http:
        headers = front.headers(route, token=token, origin=origin)
        get = await http.get(route.target, headers=headers)
        head = await http.head(route.target, headers=headers)
        raw, after = await raw_head(front, route, headers)

    status = expected_status(route, "HEAD", token=token)
    assert (head.status_code, get.status_code) == (status, status)
    assert head.content == b"" and after == b""  # not one byte after the head, on the wire
    assert raw.split(b"\r\n", 1)[0] == f"HTTP/1.1 {status} {head.reason_phrase}".encode()
    if status >= 400:
        assert error_type(route, get) == expected_error_type(route, status)

    skip = {"content-length"} if route.varying_length and token else set()
    head_items = [(k, v) for k, v in head.headers.multi_items() if k not in skip]
    get_items = [(k, v) for k, v in get.headers.multi_items() if k not in skip]
    assert head_items == get_items  # the same headers, in the same order
    if not skip:
        assert head.headers["content-length"] == str(len(get.content))

    assert head.headers.get("allow") == (route.allow if status == 405 else None)
    assert {k: v for k, v in head.headers.items() if k.startswith("access-control-") or k == "vary"} == cors(
        origin
    )
    assert head.headers["server"] == SERVER
    assert head.headers["content-type"] == (route.content_type if status < 400 else "application/json")
    # Without the token the connection closes (the liveness probe's too); with it, it stays.
    assert head.headers.get("connection") == (None if token else "close")


# ================================================================ OPTIONS


@cases("options", ("token", [True, False]), ("origin", [None, ORIGIN, "asking"]))
async def test_options_names_exactly_the_allowed_methods(
    short_dir: Path, route: Route, token: bool, origin: str | None
) -> None:
    """A preflight carries no token: with or without one it says what the path allows."""
    page = None if origin is None else ORIGIN
    async with open_front(short_dir) as front, front.http() as http:
        headers = front.headers(route, token=token, origin=page)
        if page is not None:
            headers["access-control-request-method"] = route.method
        if origin == "asking":
            headers["access-control-request-headers"] = ASKED_HEADERS
        reply = await http.options(route.target, headers=headers)

    if route.allow is None:
        assert reply.status_code == 404
        assert error_type(route, reply) == expected_error_type(route, 404)
        assert "allow" not in reply.headers
        extra = {"content-type": "application/json", "content-length": str(len(reply.content))}
        assert dict(reply.headers) == {**extra, **cors(page), "server": SERVER, "connection": "close"}
        return
    assert reply.status_code == 204 and reply.content == b""
    preflight: dict[str, str] = {}
    if page is not None:
        preflight = {
            "access-control-allow-methods": route.allow,
            "access-control-allow-headers": ASKED_HEADERS if origin == "asking" else DEFAULT_REQUEST_HEADERS,
            "access-control-max-age": "600",
        }
    assert dict(reply.headers) == {
        "allow": route.allow,
        **preflight,
        **cors(page),
        "server": SERVER,
        "connection": "close",
    }
    assert list(reply.headers.keys()).count("allow") == 1
    assert "OPTIONS" in route.allow.split(", ")


@pytest.mark.parametrize("origin", [None, ORIGIN, FOREIGN], ids=["no-origin", "origin", "foreign"])
@pytest.mark.parametrize("token", [True, False], ids=["token", "no-token"])
async def test_options_star_names_every_method(short_dir: Path, token: bool, origin: str | None) -> None:
    async with open_front(short_dir) as front, front.http() as http:
        headers = {"authorization": f"Bearer {front.token}"} if token else {}
        if origin is not None:
            headers |= {"origin": origin, "access-control-request-method": "POST"}
        # `OPTIONS *` (the asterisk-form): httpcore sends the target as given.
        reply = await http.options(front.url, headers=headers, extensions={"target": b"*"})
    if origin == FOREIGN:
        assert reply.status_code == 403 and reply.headers["connection"] == "close"
        assert "allow" not in reply.headers and reply.json()["error"]["type"] == "invalid_request_error"
        return
    assert reply.status_code == 204 and reply.content == b""
    preflight: dict[str, str] = {}
    if origin is not None:
        preflight = {
            "access-control-allow-methods": EVERY_METHOD,
            "access-control-allow-headers": DEFAULT_REQUEST_HEADERS,
            "access-control-max-age": "600",
        }
    assert dict(reply.headers) == {
        "allow": "GET, HEAD, POST, OPTIONS",
        **preflight,
        **cors(origin),
        "server": SERVER,
        "connection": "close",
    }


# ================================================================ the allowed method, and the others


@cases("serves", ("token", [True, False]))
async def test_the_allowed_method_serves(short_dir: Path, route: Route, token: bool) -> None:
    async with open_front(short_dir) as front, front.http() as http:
        reply = await http.request(
            route.method, route.target, headers=front.headers(route, token=token), json=route.body
        )
    status = expected_status(route, route.method, token=token)
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == (route.content_type if status < 400 else "application/json")
    assert "allow" not in reply.headers
    if status >= 400:
        assert error_type(route, reply) == expected_error_type(route, status)
        if status == 401 and route.api == "openai":
            assert reply.headers["www-authenticate"] == "Bearer"
        return
    assert reply.headers.get("x-combined-models-provider") == (route.provider or None)
    if route.path == "/metrics":
        names = {f.name for f in text_string_to_metric_families(reply.text)}
        assert {"cm_requests", "cm_provider_state"} <= names
        return
    body = reply.json()
    if route.path in ("/health",):
        assert body["status"] == "ok" and ("status_info" in body) == token
    elif route.path in ("/v1/models", "/v1/models/", "/models"):
        assert [m["id"] for m in body["data"]] == [MODEL]
        assert ("has_more" in body) == (route.api == "anthropic")
    elif route.path.startswith(("/v1/models/", "/models/")):
        assert body["id"] == MODEL and body.get("type") == ("model" if route.api == "anthropic" else None)
    elif route.path.endswith("chat/completions"):
        assert body["choices"][0]["message"]["content"] == ANSWER
    elif route.path == "/v1/messages":
        assert body["content"][0]["text"] == ANSWER
    elif route.path.endswith("responses"):
        assert body["output"][-1]["content"][0]["text"] == ANSWER
    elif route.path == COUNT_TOKENS_PATH:
        assert body == {"input_tokens": 1}  # "hi": one word, counted by the Anthropic member
    else:
        raise AssertionError(f"no check of {route.id}'s answer: add one")


OTHER_METHODS = ["PUT", "DELETE", "PATCH", "other"]  # "other": GET where POST serves, POST where GET does


@cases("refused", ("method", OTHER_METHODS), ("token", [True, False]))
async def test_other_methods_are_refused_with_allow(
    short_dir: Path, route: Route, method: str, token: bool
) -> None:
    if method == "other":
        method = "POST" if route.method == "GET" else "GET"
    async with open_front(short_dir) as front, front.http() as http:
        body = b"{}" if method != "GET" else None
        reply = await http.request(
            method, route.target, headers=front.headers(route, token=token), content=body
        )
    status = expected_status(route, method, token=token)
    assert reply.status_code == status, reply.text
    assert error_type(route, reply) == expected_error_type(route, status)
    assert reply.headers.get("allow") == (route.allow if status == 405 else None)
    if status == 405:
        assert f"method {method} not allowed; use {route.allow}" in reply.text
    assert reply.headers.get("connection") == (None if token else "close")
    assert reply.headers.get("x-combined-models-provider") is None


# ================================================================ pages not listed


@cases("foreign-page", ("method", ["HEAD", "OPTIONS", "GET", "POST"]), ("token", [True, False]))
async def test_a_page_not_listed_is_refused_on_every_path(
    short_dir: Path, route: Route, method: str, token: bool
) -> None:
    """An Origin outside `allowed_origins` is a 403 whatever the path or method, token or not, preflight too."""
    async with open_front(short_dir) as front, front.http() as http:
        headers = front.headers(route, token=token, origin=FOREIGN)
        reply = await http.request(method, route.target, headers=headers)
        get = await http.get(route.target, headers=headers)
    assert (reply.status_code, get.status_code) == (403, 403)
    assert reply.headers.get("connection") == "close"
    assert not any(k.startswith("access-control-") for k in reply.headers)
    assert "allow" not in reply.headers
    assert reply.headers["content-type"] == "application/json"
    if method == "HEAD":
        assert reply.content == b"" and reply.headers["content-length"] == str(len(get.content))
    else:
        assert error_type(route, reply) == expected_error_type(route, 403)
        assert FOREIGN in reply.json()["error"]["message"]


# ================================================================ the absolute-form


@cases("absolute-form", ("method", ["HEAD", "OPTIONS"]), routes=ENDPOINT_ROUTES)
async def test_an_absolute_form_target_names_the_same_path(
    short_dir: Path, route: Route, method: str
) -> None:
    """`HEAD http://127.0.0.1:PORT/v1/models HTTP/1.1` asks for `/v1/models` (RFC 9112 3.2.2)."""
    async with open_front(short_dir) as front, front.http() as http:
        headers = front.headers(route, token=True)
        origin_form = await http.request(method, route.target, headers=headers)
        target = f"{front.url}{route.target}".encode()
        absolute = await http.request(method, front.url, headers=headers, extensions={"target": target})
    status = 204 if method == "OPTIONS" else expected_status(route, method, token=True)
    assert origin_form.status_code == status
    assert absolute.status_code == status
    assert absolute.headers.get("allow") == origin_form.headers.get("allow")
    if not route.varying_length:
        assert absolute.headers.get("content-length") == origin_form.headers.get("content-length")


async def test_an_absolute_form_target_naming_another_host_is_refused_like_its_host_header(
    short_dir: Path,
) -> None:
    """Its authority is the request's host (RFC 9112 3.2.2): a rebinding page cannot hide behind a loopback Host."""
    route = ENDPOINT_ROUTES[0]
    async with open_front(short_dir) as front, front.http() as http:
        headers = front.headers(route, token=True)
        target = f"http://attacker.example{route.target}".encode()
        reply = await http.request("GET", front.url, headers=headers, extensions={"target": target})
    assert reply.status_code == 403
