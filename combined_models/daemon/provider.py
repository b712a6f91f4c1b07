"""The provider actor: owns one provider's HTTP client, concurrency limit, health and counters.

Nobody else touches these. The router asks it for a `view` of a member (for the
failover engine), to `admit` a request and to run one `attempt`; the actor records
every outcome in its own `HealthBook`, and hears what only the router sees through
methods that say what happened (`saved_failover`, `prefill_rejected`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime

import httpx
import msgspec
import trio

from ..capabilities import Capabilities, default_capabilities, with_overrides
from ..chat import ChatRequest, DecodedItem, Finished, ToolCallEvent
from ..config import FailoverConfig, ResolvedProvider
from ..limits import MAX_DEPTH, too_deep
from ..metadata import ModelInfo
from ..protocol import ModelHealth, ProviderStatus
from .credentials import Credentials, StaticCredentials, resolve_credentials
from .dialects import Dialect, Endpoint, StreamDecoder, dialect_for
from .dialects.counting import Counter, counter_for
from .engine import MemberView
from .errors import NO_PENALTY, Failure, UpstreamError, classify_status
from .health import Admission, Breaker, HealthBook, SavedBook, State
from .upstream import (
    ConnectFailed,
    ConnectionBroken,
    LimitedBody,
    LocalShortage,
    Pool,
    Response,
    tls_context,
)

MAX_ERROR_BODY = 64 * 1024
# After the finish signal, read on to the end of the body (normally already here) so the
# connection goes back to the pool: closing it mid-body costs the next request a new one.
DRAIN_TIMEOUT = 0.1
MAX_DRAIN = 64 * 1024
DISCOVERY_TIMEOUT = 20.0  # seconds for a whole model listing, all pages
MAX_MODEL_PAGES = 50
MAX_LISTING_BODY = 32 * 1024 * 1024  # one page; the largest real listing (OpenRouter's) is a few MB
MAX_LISTED_MODELS = 20_000  # all pages; real providers list hundreds
MAX_CACHED_MODELS = 4096
SHARED_SLACK = 0.25  # seconds a shared fact must add to a running cooldown to change it (health.lengthen)
COUNT_TIMEOUT = 10.0  # seconds for one token count (a few are tried in turn)
MAX_COUNT_BODY = 64 * 1024  # a count answer is a few bytes
_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{4})[A-Za-z0-9_\-]{6,}")

log = logging.getLogger("combined_models.daemon")
health_log = logging.getLogger("combined_models.health")

OnItems = Callable[[list[DecodedItem]], Awaitable[None]]  # what one read of the body decoded to
# Told when a breaker starts cooling or cools longer: (actor, model or "" for the provider, breaker).
# Called on the request path: it must not block (the shared backend queues, or drops, and returns).
HealthListener = Callable[["ProviderActor", str, Breaker], None]


class ProviderActor:
    def __init__(self, provider: ResolvedProvider, failover: FailoverConfig) -> None:
        self.id = provider.id
        self.provider = provider
        self.failover = failover
        self.dialect: Dialect | None = dialect_for(provider.api)
        self._health = HealthBook()
        self.health_listener: HealthListener | None = None  # the shared backend's, when there is one
        self._offered: list[str] = list(provider.models or ())  # the models it serves, as last listed
        self._metadata: dict[str, ModelInfo] = {}  # models.dev's knowledge of this provider's models
        self._capabilities: dict[str, Capabilities] = {}  # per model, worked out once
        # Where `offered` came from: "static" (config), "live" (listed now), "cached" (an earlier listing), "none".
        self._catalog_source = "static" if provider.models is not None else "none"
        self._catalog_error: str | None = None
        self._catalog_fetched_at: float | None = None  # wall clock
        self._limiter = trio.CapacityLimiter(provider.config.max_concurrency)
        self._client: httpx.AsyncClient | None = None  # listings and token exchanges
        self._pool: Pool | None = None  # chat requests (see upstream.py for why not httpx)
        credentials, self.key_source, no_credentials = resolve_credentials(provider)
        self.region = getattr(credentials, "region", None)
        self.credentials: Credentials = credentials or StaticCredentials(Endpoint(base_url=provider.base_url))
        # Models that answered a prefill with a 400: none is sent to them again while the daemon runs.
        self._no_prefill: set[str] = set()
        # counters, for status
        self._in_flight = 0
        self._requests = 0
        self._failures = 0
        self._failovers_saved = 0
        self._last_error: str | None = None
        self._last_error_kind: str | None = None
        self._recent: collections.deque[bool] = collections.deque(maxlen=50)
        # Reload: a retired actor (removed or replaced) closes its client once `_users` reaches 0.
        self._users = 0  # attempts, listings and counts under way
        self._retired = trio.Event()
        self._idle = trio.Event()
        # prompt tokens of the answers served (cached ones included), and those read from a cache
        self._input_tokens = 0
        self._cache_read_tokens = 0
        if provider.disabled_reason or no_credentials:
            self.disable(provider.disabled_reason or no_credentials)
        elif self.dialect is None:
            self.disable(f"the {provider.api!r} API is not supported yet")

    def _timeout(self, name: str) -> float:
        own = getattr(self.provider.config, name)
        return float(own if own is not None else getattr(self.failover, name))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the HTTP client for as long as the actor lives."""
        timeout = httpx.Timeout(None, connect=self._timeout("connect_timeout"))
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=30)
        tls = tls_context()  # built here, once per process, not on a first request
        async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False, verify=tls) as client:
            self._client, self._pool = client, Pool(self._timeout("connect_timeout"))
            task_status.started()
            try:
                await self._retired.wait()
                while self._users:  # finish what it serves, then close its connections
                    self._idle = trio.Event()
                    await self._idle.wait()
            finally:
                self._pool.close()
                self._client = self._pool = None

    def retire(self) -> None:
        """A reload removed or replaced this provider: close once the requests it serves are done."""
        self._retired.set()

    @contextlib.contextmanager
    def _serving(self) -> Iterator[None]:
        """Holds a retired actor's connections open until the block ends."""
        self._users += 1
        try:
            yield
        finally:
            self._users -= 1
            if not self._users:
                self._idle.set()

    def use_failover(self, failover: FailoverConfig) -> None:
        """The `[failover]` settings of a reload: attempts read them when they start."""
        self.failover = failover
        connect = self._timeout("connect_timeout")
        if self._pool is not None:
            self._pool.connect_timeout = connect
        if self._client is not None:
            self._client.timeout = httpx.Timeout(None, connect=connect)

    def model_info(self, model: str) -> ModelInfo | None:
        """What models.dev knows of `model` here, if anything."""
        return self._metadata.get(model)

    def use_metadata(self, models: dict[str, ModelInfo]) -> None:
        """models.dev's knowledge of this provider's models (capabilities are worked out anew)."""
        self._metadata = models
        self._capabilities.clear()

    def capabilities(self, model: str) -> Capabilities:
        """What `model` here can do: documented defaults, then models.dev metadata, then the config."""
        caps = self._capabilities.get(model)
        if caps is None:
            if len(self._capabilities) >= MAX_CACHED_MODELS:  # callers may name any model: stay bounded
                self._capabilities.clear()
            caps = self._capabilities[model] = self._work_out_capabilities(model)
        return caps

    def _work_out_capabilities(self, model: str) -> Capabilities:
        c = self.provider.config
        caps = default_capabilities(
            self.provider.api, model, flavour=str(self.provider.options.get("flavour", ""))
        )
        info = self._metadata.get(model)
        if info is not None:
            caps = with_overrides(
                caps,
                context_window=info.context_window,
                images=info.images,
                tools=info.tools,
                thinking=info.reasoning,
            )
        return with_overrides(
            caps,
            prefill=c.prefill,
            tools=c.tools,
            images=c.images,
            thinking=c.thinking,
            context_window=c.context_window,
        )

    # ------------------------------------------------------------ discovery

    @property
    def offered(self) -> Sequence[str]:
        """The models this provider serves: from the config, its last listing, or the cached one."""
        return self._offered

    @property
    def catalog_source(self) -> str:
        """Where `offered` came from: "static" (config), "live", "cached" (an earlier run) or "none"."""
        return self._catalog_source

    @property
    def catalog_error(self) -> str | None:
        """Why the last listing failed, if it did."""
        return self._catalog_error

    @property
    def catalog_fetched_at(self) -> float | None:
        """When `offered` was listed (wall clock), if it was."""
        return self._catalog_fetched_at

    @property
    def discovers(self) -> bool:
        """Whether this provider's models come from its list endpoint (no static list, usable)."""
        return self._catalog_source != "static" and not self.disabled

    def use_cached(self, models: list[str], fetched_at: float) -> None:
        """Models from an earlier run's listing: served until a live listing succeeds."""
        if self._catalog_source == "none":
            self._offered, self._catalog_source, self._catalog_fetched_at = list(models), "cached", fetched_at

    async def discover(self) -> bool:
        """List the provider's models. On failure keep what we had and remember why, for status.

        Whatever goes wrong in a listing (an error, a hostile body, a bug of ours) ends here:
        only cancellation passes.
        """
        assert self.dialect is not None and self._client is not None, "actor not running"
        try:
            with self._serving(), trio.fail_after(DISCOVERY_TIMEOUT):
                ids = await self._list_models(self.dialect, self._client)
        except trio.TooSlowError:
            return self._listing_failed(f"timed out after {DISCOVERY_TIMEOUT:.0f}s")
        except UpstreamError as e:
            return self._listing_failed(e.message)
        except (httpx.HTTPError, ConnectionBroken, ValueError, KeyError, TypeError) as e:
            return self._listing_failed(repr(e))
        except Exception as e:
            log.error("%s: model listing failed inside the daemon", self.id, exc_info=True)
            return self._listing_failed(f"internal error ({type(e).__name__})")
        self._offered = ids
        self._catalog_source, self._catalog_error, self._catalog_fetched_at = "live", None, time.time()
        return True

    def _listing_failed(self, why: str) -> bool:
        self._catalog_error = self.redact(f"model listing failed: {why}")
        return False

    async def _list_models(self, dialect: Dialect, client: httpx.AsyncClient) -> list[str]:
        """Every page of the listing, each body and the whole list bounded."""
        ids: dict[str, None] = {}  # in order, without repeats
        cursor: str | None = None
        for _ in range(MAX_MODEL_PAGES):
            endpoint = await self.credentials.endpoint(client)
            req = dialect.build_list_models(endpoint, datetime.now(UTC), cursor)
            # Raw bytes, decoded here within a limit: httpx would inflate a bomb whole.
            headers = {**req.headers, "accept-encoding": "gzip, deflate"}
            async with client.stream(req.method, req.url, headers=headers, content=req.body or None) as resp:
                ok = resp.status_code == 200
                body = LimitedBody(
                    resp.headers.get("content-encoding", ""), MAX_LISTING_BODY if ok else MAX_ERROR_BODY
                )
                async for raw in resp.aiter_raw():
                    body.feed(raw)
                content = body.body()
            if not ok:
                raise _classify(dialect, resp.status_code, dict(resp.headers), content)
            page, cursor = dialect.parse_models(content, cursor)
            ids.update(dict.fromkeys(page))
            if len(ids) > MAX_LISTED_MODELS:
                raise ValueError(f"the listing names more than {MAX_LISTED_MODELS} models")
            if cursor is None:
                break
        return list(ids)

    # ------------------------------------------------------------ token counts

    @property
    def counts_tokens(self) -> bool:
        """Whether this provider's API has a count endpoint (Anthropic, Bedrock, Gemini)."""
        return counter_for(self.provider.api) is not None

    async def count_tokens(self, request: ChatRequest, model: str) -> int:
        """The provider's own count of the input tokens `request` makes for `model`; never an estimate.

        Raises UpstreamError when it cannot say (no count endpoint, an error, no answer in
        time). A count is free and says nothing about serving chats: no slot is taken, and
        neither health nor the counters hear of it.
        """
        counter = counter_for(self.provider.api)
        if counter is None:
            raise UpstreamError(Failure.UNSUPPORTED, f"the {self.provider.api} API has no token count")
        if self.disabled:
            raise UpstreamError(Failure.UNSUPPORTED, f"disabled: {self._health.provider.reason}")
        assert self._client is not None, "actor not running"
        client = self._client
        try:
            with self._serving(), trio.fail_after(COUNT_TIMEOUT):
                try:
                    return await self._count(counter, request, model, client)
                except UpstreamError as e:
                    # A short-lived token may have expired early: refresh it once, as a chat does.
                    if not (e.kind is Failure.AUTH and e.status == 401 and self.credentials.invalidate()):
                        raise
                    return await self._count(counter, request, model, client)
        except trio.TooSlowError:
            raise UpstreamError(Failure.SILENT, f"no token count within {COUNT_TIMEOUT:g}s") from None
        except UpstreamError as e:
            e.message = self.redact(e.message)
            raise
        except httpx.ConnectError as e:
            raise UpstreamError(Failure.UNREACHABLE, self.redact(_what(e))) from e
        except (httpx.HTTPError, ConnectionBroken) as e:
            raise UpstreamError(Failure.TRANSIENT, self.redact(_what(e))) from e
        except ValueError as e:  # a model id no URL can carry
            raise UpstreamError(Failure.UNSUPPORTED, self.redact(_what(e))) from e

    async def _count(
        self, counter: Counter, request: ChatRequest, model: str, client: httpx.AsyncClient
    ) -> int:
        endpoint = await self.credentials.endpoint(client)
        req = counter.build_count(request, model, endpoint, datetime.now(UTC))
        # Raw bytes, decoded here within a limit, as for listings.
        headers = {**req.headers, "accept-encoding": "gzip, deflate"}
        async with client.stream(req.method, req.url, headers=headers, content=req.body or None) as resp:
            ok = resp.status_code == 200
            body = LimitedBody(
                resp.headers.get("content-encoding", ""), MAX_COUNT_BODY if ok else MAX_ERROR_BODY
            )
            async for raw in resp.aiter_raw():
                body.feed(raw)
            content = body.body()
        if not ok:
            raise _classify(counter.dialect, resp.status_code, dict(resp.headers), content)
        try:
            return counter.parse_count(content)
        except ValueError as e:
            raise UpstreamError(Failure.TRANSIENT, f"malformed token count: {_what(e)}") from e

    # ------------------------------------------------------------ health

    def view(self, model: str, now: float) -> MemberView:
        """What the failover engine needs to know of `model` here at `now` (no probe is taken)."""
        return MemberView(
            admission=self._health.peek(model, now),
            capabilities=self.capabilities(model),
            prefill=model not in self._no_prefill,
            disabled=self._health.provider.reason if self.disabled else None,
        )

    def admit(self, model: str, now: float) -> Admission:
        """Take the admission `view` showed: when it says "probe", this request is the probe."""
        return self._health.admit(model, now)

    @property
    def disabled(self) -> bool:
        return self._health.provider.state is State.DISABLED

    def disable(self, reason: str) -> None:
        """Off for the daemon's life (no credentials, an API not supported): `reason` shows in status."""
        self._health.disable(reason)

    def track(self, models: set[str], now: float) -> None:
        """The models that may keep per-model health (what some member offers)."""
        self._health.track(models, now)

    def saved_failover(self) -> None:
        """This provider finished an answer another member could not."""
        self._failovers_saved += 1

    def prefill_rejected(self, model: str) -> None:
        """`model` here answered a prefill with a 400: it gets none again while the daemon runs."""
        if len(self._no_prefill) < MAX_CACHED_MODELS:
            self._no_prefill.add(model)

    def apply_shared(self, model: str, state: State, remaining: float, reason: str) -> bool:
        """Another daemon's fact about `model` ("": this provider): lengthens a cooldown, never shortens one."""
        now = trio.current_time()
        return self._health.apply_shared(model, state, now + remaining, reason, now, SHARED_SLACK)

    def cooling(self, now: float) -> list[tuple[str, Breaker]]:
        """Every breaker cooling now ("": the provider's own)."""
        return self._health.cooling(now)

    def account_credential(self) -> str:
        """What identifies the account for the shared account hash ("": none, so nothing is shared).

        Never leaves the process: only a keyed hash of it does (see `shared_facts.account_id`).
        """
        secrets = self.credentials.secrets() if not self.disabled else []
        return secrets[0] if secrets else ""

    def health_fingerprint(self) -> bytes:
        """Changes only when states, strikes or cooldown ends change, not with the passing time."""
        return msgspec.json.encode(self._health.snapshot(0.0, 0.0))

    # ------------------------------------------------------------ one attempt

    async def attempt(
        self, request: ChatRequest, model: str, on_items: OnItems, *, probe: bool = False
    ) -> Finished:
        """`_attempt_held`, holding the actor's connections open should a reload retire it meanwhile."""
        if self._retired.is_set() and self._client is None:  # closed while the router announced it
            raise UpstreamError(Failure.BUSY, "removed by a config reload")
        with self._serving():
            return await self._attempt_held(request, model, on_items, probe=probe)

    async def _attempt_held(
        self, request: ChatRequest, model: str, on_items: OnItems, *, probe: bool = False
    ) -> Finished:
        """Send `request` for `model` and feed the decoded items to `on_items`, a batch per read.

        Returns the finish once the dialect's own finish signal arrived; raises
        UpstreamError otherwise. Health and counters are updated here, whatever happens.
        `probe`: this request holds the probe `admit` gave; if it ends without a verdict
        (no slot, cancelled), the next request may probe.
        """
        assert self.dialect is not None and self._client is not None, "actor not running"
        assert self._pool is not None
        await self._take_slot(model, probe)
        try:
            self._in_flight += 1
            self._requests += 1
            try:
                try:
                    finished = await self._attempt(self.dialect, request, model, on_items)
                except UpstreamError as e:
                    # A short-lived token may have expired early: refresh it once before calling it a failure.
                    if not (e.kind is Failure.AUTH and e.status == 401 and self.credentials.invalidate()):
                        raise
                    finished = await self._attempt(self.dialect, request, model, on_items)
            except UpstreamError as e:
                e.message = self.redact(e.message)
                if e.kind is Failure.BUSY:  # our own shortage: no verdict on the provider, nor a request
                    self._release(model, probe)
                    self._requests -= 1
                else:
                    self._record_failure(model, e)
                raise
            except BaseException:
                # Cancelled (the caller went away) or our own bug: not the provider's fault.
                self._release(model, probe)
                self._requests -= 1
                raise
            finally:
                self._in_flight -= 1
            with self._health_change(model, "recovered"):
                self._health.succeed(model)
            self._recent.append(True)
            self._input_tokens += finished.usage.input_tokens
            self._cache_read_tokens += finished.usage.cache_read_tokens
            return finished
        finally:
            self._limiter.release()

    def _release(self, model: str, probe: bool) -> None:
        """An attempt ended without a verdict: its probe, if it held one, goes to the next request."""
        if probe:
            self._health.release(model, trio.current_time())

    async def _take_slot(self, model: str, probe: bool) -> None:
        """One of the `max_concurrency` slots, waiting at most `slot_wait`; else a BUSY failure.

        Callers that stop reading hold their slots for as long as they like: an unbounded wait
        here would keep every later request from failing over to an idle provider.
        """
        # Not `async with`: its checkpoint is a trip round the event loop on every first-token
        # path. Below the limit the token is taken at once; only at the limit does this wait.
        try:
            self._limiter.acquire_nowait()
            return
        except trio.WouldBlock:
            pass
        try:
            with trio.move_on_after(self.failover.slot_wait):
                await self._limiter.acquire()
                return
        except BaseException:
            self._release(model, probe)  # cancelled while waiting: no verdict
            raise
        # Not the provider's fault, and no answer came: a probe `admit` gave goes to the next request.
        self._release(model, probe)
        limit = self._limiter.total_tokens
        raise UpstreamError(
            Failure.BUSY, f"all {limit} concurrency slots stayed busy for {self.failover.slot_wait:g}s"
        )

    def _record_failure(self, model: str, e: UpstreamError) -> None:
        with self._health_change(model, e.kind.value):
            self._health.fail(model, trio.current_time(), e.kind, e.retry_after)
        if e.kind in NO_PENALTY:
            return
        self._failures += 1
        self._recent.append(False)
        self._last_error = e.message
        self._last_error_kind = e.kind.value

    @contextlib.contextmanager
    def _health_change(self, model: str, reason: str) -> Iterator[None]:
        """Around a verdict on `model`: afterwards, one `health` line when the provider's state (as
        status shows it) changed, and the shared listener told of each breaker that started or
        lengthened a cooldown, or that a probe closed."""
        now = trio.current_time()
        before, _ = self._health.summary(now, self._offered)
        trips = (self._health.provider, self._health.breaker(model))
        yield
        state, cooldown = self._health.summary(now, self._offered)
        if state is not before:
            event: dict[str, object] = {"event": "health", "provider": self.id, "model": model}
            event |= {"state": state.value, "reason": reason, "cooldown_s": round(cooldown, 3)}
            health_log.info("health %s %s", self.id, state.value, extra={"event": event})
        if self.health_listener is None:
            return
        for level, was in zip(("", model), trips, strict=True):
            b = self._health.breaker(level)
            cooler = b.state in (State.COOLDOWN, State.DOWN) and (
                b.state is not was.state or b.until > was.until
            )
            if cooler or (was.state is State.PROBING and b.state is State.READY):
                self.health_listener(self, level, b)

    def first_token_timeout(self, request: ChatRequest) -> float:
        """The first-token limit, scaled up for long prompts (they take longer to read)."""
        chars = len(request.system_text()) + sum(len(m.text()) for m in request.messages)
        base = self._timeout("first_token_timeout")
        return base * (1.0 + chars / max(1, self.failover.long_prompt_chars))

    async def _attempt(
        self, dialect: Dialect, request: ChatRequest, model: str, on_items: OnItems
    ) -> Finished:
        assert self._client is not None and self._pool is not None
        endpoint = await self.credentials.endpoint(self._client)
        built = dialect.build_chat(request, model, endpoint, datetime.now(UTC))
        limit = self.first_token_timeout(request)
        first_deadline = trio.current_time() + limit
        # The first-token clock starts at send: a provider that never sends headers is caught too.
        with trio.move_on_at(first_deadline) as cs:
            try:
                response = await self._pool.stream(built.method, built.url, built.headers, built.body)
            except LocalShortage as e:  # on our side: the next member may find a descriptor free
                raise UpstreamError(Failure.BUSY, str(e)) from e
            except ConnectFailed as e:
                raise UpstreamError(Failure.UNREACHABLE, str(e)) from e
            except ConnectionBroken as e:
                raise UpstreamError(Failure.TRANSIENT, str(e)) from e
        if cs.cancelled_caught:
            raise UpstreamError(Failure.SILENT, f"no response within {limit:.1f}s")
        try:
            if response.status != 200:
                body = await _read_rest(
                    response, MAX_ERROR_BODY, max(first_deadline, trio.current_time() + 2)
                )
                raise _classify(dialect, response.status, response.headers, body) from None
            finished = await self._relay(response, dialect.stream_decoder(), first_deadline, limit, on_items)
            # To the body's end, so the connection goes back to the pool (see DRAIN_TIMEOUT).
            await _read_rest(response, MAX_DRAIN, trio.current_time() + DRAIN_TIMEOUT)
            return finished
        finally:
            await response.aclose()

    async def _relay(
        self,
        response: Response,
        decoder: StreamDecoder,
        first_deadline: float,
        limit: float,
        on_items: OnItems,
    ) -> Finished:
        """Decode the body into items until the finish signal, timing each read."""
        idle = self._timeout("idle_timeout")
        got_content = False
        # One scope whose deadline moves on with each read: the first-token deadline until
        # content arrives, then the idle limit. (A scope per read costs a visible share of a token.)
        # Writing to the caller is not timed: a slow reader is not the provider's silence.
        with trio.move_on_at(first_deadline) as cs:
            while True:
                try:
                    chunk = await response.next_chunk()
                except ConnectionBroken as e:
                    where = "mid-stream" if got_content else "before output"
                    raise UpstreamError(Failure.TRANSIENT, f"{e} ({where})") from e
                items = _decode(decoder, chunk)
                finished = next((i for i, item in enumerate(items) if isinstance(item, Finished)), None)
                if finished is not None:
                    items, last = items[:finished], items[finished]
                if items:
                    got_content = True
                    cs.deadline = math.inf
                    await on_items(items)
                if finished is not None:
                    assert isinstance(last, Finished)
                    return last
                if chunk is None:  # close() returned without a finish: the decoder raised already
                    raise UpstreamError(Failure.TRANSIENT, "stream ended without a finish signal")
                if got_content:
                    cs.deadline = trio.current_time() + idle
        phase = f"silent for {idle:.1f}s mid-stream" if got_content else f"no first token within {limit:.1f}s"
        raise UpstreamError(Failure.SILENT, phase)

    def redact(self, text: str) -> str:
        """Keys never appear in errors, logs or status, even when a provider echoes one back."""
        # Configured header values (a proxy's token, an org id) are as secret as keys.
        secrets = (*self.credentials.secrets(), *self.provider.config.headers.values())
        for secret in sorted(secrets, key=len, reverse=True):  # a longer one may contain a shorter
            if len(secret) >= 4:
                text = text.replace(secret, "[redacted]")
        return _KEYLIKE.sub(r"\1…", text)

    # ------------------------------------------------------------ status

    def status(self, now: float) -> ProviderStatus:
        state, remaining = self._health.summary(now, self._offered)
        models = [
            ModelHealth(
                model=m, state=b.state.value, cooldown_remaining_s=round(b.remaining(now), 3), reason=b.reason
            )
            for m, b in sorted(self._health.models.items())
            if b.state is not State.READY
        ]
        rate = (sum(self._recent) / len(self._recent)) if self._recent else None
        last_error = self._last_error
        if state is State.DISABLED:
            last_error = self._health.provider.reason
        return ProviderStatus(
            id=self.id,
            state=state.value,
            cooldown_remaining_s=round(remaining, 3),
            in_flight=self._in_flight,
            requests=self._requests,
            failures=self._failures,
            last_error=last_error,
            api=self.provider.api,
            last_error_kind=self._last_error_kind,
            success_rate=None if rate is None else round(rate, 3),
            failovers_saved=self._failovers_saved,
            key_source=self.key_source,
            models=models,
            catalog=self._catalog_source,
            catalog_error=self._catalog_error,
            models_offered=len(self._offered),
            cache_read_ratio=self._cache_read_ratio(),
        )

    def _cache_read_ratio(self) -> float | None:
        """The share of the served prompt tokens read from a cache; None before any was counted."""
        if self._input_tokens <= 0:
            return None
        return round(min(1.0, self._cache_read_tokens / self._input_tokens), 3)

    def snapshot(self, now: float) -> SavedBook:
        return self._health.snapshot(now, time.time())

    def restore(self, saved: SavedBook, now: float) -> None:
        self._health.restore(saved, now, time.time())


def _decode(decoder: StreamDecoder, chunk: bytes | None) -> list[DecodedItem]:
    """The items `chunk` completes (None: the body ended).

    Whatever a decoder raises on what the provider sent (a value of the wrong type, a number
    out of range, nesting too deep) is the provider's malformed stream, not our bug: it fails
    over like any broken stream. The cause is kept for the log.
    """
    try:
        items = decoder.close() if chunk is None else decoder.feed(chunk)
    except UpstreamError:
        raise
    except Exception as e:
        raise UpstreamError(Failure.TRANSIENT, f"malformed stream: {_what(e)}") from e
    for item in items:
        # Arguments travel on to the caller and back in its next request: no deeper than a request may be.
        if isinstance(item, ToolCallEvent) and too_deep(item.arguments):
            raise UpstreamError(
                Failure.TRANSIENT,
                f"malformed stream: tool call {item.name!r} nests more than {MAX_DEPTH} levels deep",
            )
    return items


def _classify(dialect: Dialect, status: int, headers: dict[str, str], body: bytes) -> UpstreamError:
    """The error an HTTP error response means; a body the dialect cannot read still fails over by its status."""
    try:
        error = dialect.classify_error(status, headers, body, datetime.now(UTC))
    except Exception as e:
        return UpstreamError(classify_status(status), f"HTTP {status}: unreadable error body ({_what(e)})")
    if isinstance(error, UpstreamError):
        return error
    return UpstreamError(classify_status(status), f"HTTP {status}: {error}")


def _what(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:200]


async def _read_rest(response: Response, limit: int, deadline: float) -> bytes:
    """The rest of a body, up to about `limit` bytes and until `deadline`; a broken connection ends it."""
    body = b""
    with trio.move_on_at(deadline):
        try:
            while len(body) < limit and (part := await response.next_chunk()) is not None:
                body += part
        except ConnectionBroken:
            pass
    return body[:limit]
