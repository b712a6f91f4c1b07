"""The shared health backend: tells a team's other daemons what this one learned, through Valkey or Redis.

One actor per daemon, owned by the registry. Provider actors tell it of a breaker
that starts cooling (`listener`, synchronous: it queues, or drops and counts when the
queue is full) and it writes the fact to the store: a key whose expiry is the
cooldown's remaining time, then a publish on the channel. Facts from the others come
in on the channel (and from the keys after each (re)connect) and lengthen the matching
actors' cooldowns; they never shorten or end one (see `health.lengthen`).

Nothing on the request path waits for the store: when it is down, slow or wrong, this
actor reconnects with backoff and the daemon serves on its own knowledge. What travels
is in `shared_facts` (no prompt, answer or key). `coredis` (an anyio client, so it runs
on trio) is imported only when the config names a store.
"""

from __future__ import annotations

import logging
import math
import os
import random
import secrets
import ssl
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import trio

from .. import shared_facts as sf
from ..config import SharedConfig, redact_url
from ..limits import MAX_MODEL_ID
from ..protocol import SharedStatus
from .health import Breaker, State

if TYPE_CHECKING:
    from .provider import ProviderActor

log = logging.getLogger("combined_models.daemon")
health_log = logging.getLogger("combined_models.health")

MAX_PENDING = 256  # facts waiting for the store; past this they are dropped (and counted)
MAX_CATCH_UP = 10_000  # keys read back after a (re)connect
FIRST_BACKOFF = 0.1

# Write the fact unless the key already holds one that ends later: a store never shortens either.
_SET_LONGER = """
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


class SharedHealth:
    def __init__(
        self,
        cfg: SharedConfig,
        actors: Callable[[], Iterable[ProviderActor]],
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.cfg = cfg
        self._actors = actors  # looked up when a fact arrives: actors made later are found too
        self.instance = secrets.token_hex(8)  # its own facts come back on the channel: ignored
        self.url = redact_url(cfg.url or "")
        self.prefix = cfg.prefix
        self.channel = sf.channel(cfg.prefix)
        self._problem = ""  # a setup error: nothing is connected
        secret = cfg.secret if cfg.secret is not None else env.get(cfg.secret_env or "", "")
        if not secret:
            self._problem = f"the shared secret's variable {cfg.secret_env} is unset"
        self._secret = (secret or "").encode()
        self._password = cfg.password
        if cfg.password_env is not None:
            self._password = env.get(cfg.password_env) or None
            if self._password is None:
                self._problem = f"the store password's variable {cfg.password_env} is unset"
        self._accounts: weakref.WeakKeyDictionary[ProviderActor, tuple[str, str]] = (
            weakref.WeakKeyDictionary()
        )
        self._send, self._receive = trio.open_memory_channel[tuple["ProviderActor", str, Breaker]](
            MAX_PENDING
        )
        self.state = "connecting"
        self.last_error: str | None = None
        self.sent = self.received = self.applied = self.dropped = self.reconnects = 0
        self.clock_skew_ms: int | None = None
        self.connected = trio.Event()  # set on each connect (tests and the benchmark wait on it)

    # ------------------------------------------------------------ the request path's side

    def listener(self, actor: ProviderActor, model: str, b: Breaker) -> None:
        """A provider actor's breaker changed: queue the fact (never blocks; a full queue drops it)."""
        if b.state is not State.READY and b.reason not in sf.SHARED_REASONS:
            return
        try:
            self._send.send_nowait((actor, model, b))
        except trio.WouldBlock:
            self.dropped += 1

    def status(self) -> SharedStatus:
        return SharedStatus(
            state=self.state,
            url=self.url,
            last_error=self.last_error,
            facts_sent=self.sent,
            facts_received=self.received,
            facts_applied=self.applied,
            facts_dropped=self.dropped,
            reconnects=self.reconnects,
            clock_skew_ms=self.clock_skew_ms,
        )

    # ------------------------------------------------------------ facts

    def account(self, actor: ProviderActor) -> str:
        """The actor's account hash ("": it has no credential, so it shares nothing)."""
        credential = actor.account_credential()
        if not credential:
            return ""
        cached = self._accounts.get(actor)
        if cached is None or cached[0] != credential:
            p = actor.provider
            cached = (credential, sf.account_id(self._secret, p.api, p.base_url, actor.region, credential))
            self._accounts[actor] = cached
        return cached[1]

    def fact(self, actor: ProviderActor, model: str, b: Breaker, now: float) -> sf.Fact | None:
        """What to tell the others of `b` at trio time `now`; None when there is nothing to tell."""
        account = self.account(actor)
        if not account or len(model) > MAX_MODEL_ID or len(actor.provider.api) > 32:
            return None
        if b.state is State.READY:
            state: sf.StateName = "closed"
            remaining = 0
        elif b.state in (State.COOLDOWN, State.DOWN):
            state = "down" if b.state is State.DOWN else "cooldown"
            remaining = min(math.ceil((b.until - now) * 1000), sf.MAX_REMAINING_MS)
            if remaining <= 0:
                return None  # over while it waited in the queue
        else:
            return None
        return sf.Fact(
            origin=self.instance,
            account=account,
            api=actor.provider.api,
            model=model,
            state=state,
            reason=b.reason[:32],
            remaining_ms=remaining,
            sent_at_ms=int(time.time() * 1000),
        )

    def apply(self, fact: sf.Fact, remaining: float) -> int:
        """Lengthen the matching actors' cooldowns; how many changed."""
        if fact.state == "closed" or remaining <= 0 or fact.reason not in sf.SHARED_REASONS:
            return 0  # a closed breaker elsewhere ends nothing here: this daemon's own probe decides
        state = State.DOWN if fact.state == "down" else State.COOLDOWN
        changed = 0
        for actor in list(self._actors()):
            if actor.provider.api != fact.api or self.account(actor) != fact.account:
                continue
            if actor.apply_shared(fact.model, state, remaining, fact.reason):
                changed += 1
                event = {"event": "health", "provider": actor.id, "model": fact.model, "shared": True}
                event |= {"state": state.value, "reason": fact.reason, "cooldown_s": round(remaining, 3)}
                health_log.info(
                    "health %s %s %s (shared)",
                    actor.id,
                    fact.model or "*",
                    state.value,
                    extra={"event": event},
                )
        self.applied += changed
        return changed

    def on_message(self, data: bytes | str) -> None:
        fact = sf.decode(data)
        if fact is None or fact.origin == self.instance:
            return
        self.received += 1
        self.clock_skew_ms = sf.clock_skew_ms(fact, int(time.time() * 1000))
        self.apply(fact, sf.received_remaining(fact))

    # ------------------------------------------------------------ the store

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, share, and reconnect with backoff for as long as the daemon runs."""
        task_status.started()
        if self._problem:
            self.state, self.last_error = "down", self._problem
            log.warning("shared health off: %s", self._problem)
            await trio.sleep_forever()
        backoff = FIRST_BACKOFF
        while True:
            self.state = "connecting"
            try:
                try:
                    await self._session()
                except BaseExceptionGroup as group:
                    # Cancelled (the daemon stops): what the client's cleanup raised meanwhile is moot.
                    cancelled, _ = group.split(trio.Cancelled)
                    if cancelled is not None:
                        raise cancelled from None
                    raise
                raise ConnectionError("the subscription ended")
            except Exception as e:
                why = self._describe(e)
                if self.state == "connected" or self.last_error != why:
                    log.warning(
                        "shared health store %s: %s (serving on local health, reconnecting)", self.url, why
                    )
                if self.state == "connected":
                    backoff = FIRST_BACKOFF
                self.state, self.last_error = "down", why
            await trio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self.cfg.max_backoff)
            self.reconnects += 1

    def _client(self) -> Any:
        import coredis
        from coredis.retry import NoRetryPolicy

        parts = urlsplit(self.cfg.url or "")
        return coredis.Redis(
            parts.hostname,
            parts.port or 6379,
            int(parts.path[1:] or 0),
            username=self.cfg.username,
            password=self._password,
            stream_timeout=self.cfg.command_timeout,
            connect_timeout=self.cfg.connect_timeout,
            ssl_context=ssl.create_default_context() if parts.scheme == "rediss" else None,
            retry_policy=NoRetryPolicy(),  # this actor retries, with backoff
            client_name=f"combined-models-{self.instance}",
        )

    async def _session(self) -> None:
        """One connection's life: subscribe, catch up from the keys, then send and receive until it breaks."""
        async with self._client() as client:
            with trio.fail_after(self.cfg.connect_timeout + self.cfg.command_timeout):
                await client.ping()
            async with client.pubsub(
                channels=[self.channel],
                retry_policy=None,
                ignore_subscribe_messages=True,
                max_idle_seconds=max(1.0, self.cfg.command_timeout),
            ) as pubsub:
                # Subscribed first, then the keys: nothing falls between the two.
                with trio.fail_after(self.cfg.command_timeout * 4):
                    await self._catch_up(client)
                self.state, self.last_error = "connected", None  # caught up, too
                log.info("shared health store %s connected", self.url)
                self._share_again()
                self.connected.set()
                self.connected = trio.Event()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._publish, client)
                    async for message in pubsub:
                        if message.get("type") == "message":
                            self.on_message(message["data"])
                    nursery.cancel_scope.cancel()  # the subscription ended: so does this session

    async def _catch_up(self, client: Any) -> None:
        """What the others told while this daemon was away: each key, with the store's own countdown."""
        cursor, seen = 0, 0
        while True:
            cursor, keys = await client.scan(cursor, match=sf.key_pattern(self.prefix), count=500)
            for key in keys:
                value, left = await client.get(key), await client.pttl(key)
                fact = None if value is None else sf.decode(value)
                if fact is not None and fact.origin != self.instance:
                    self.apply(fact, sf.stored_remaining(fact, int(left)))
            seen += len(keys)
            if not cursor or seen >= MAX_CATCH_UP:
                return

    def _share_again(self) -> None:
        """Every cooling breaker, queued again: a restarted store (or one that lost a write) learns them."""
        now = trio.current_time()
        for actor in list(self._actors()):
            for model, b in actor.cooling(now):
                self.listener(actor, model, b)

    async def _publish(self, client: Any) -> None:
        async for actor, model, b in self._receive:
            fact = self.fact(actor, model, b, trio.current_time())
            if fact is None:
                continue
            data = sf.encode(fact)
            with trio.fail_after(self.cfg.command_timeout):
                await client.publish(self.channel, data)  # first: the others apply it at once
                if fact.state != "closed":
                    key = sf.key_for(self.prefix, fact)
                    await client.eval(_SET_LONGER, keys=[key], args=[data, fact.remaining_ms])
            self.sent += 1

    def _describe(self, e: BaseException) -> str:
        while isinstance(e, BaseExceptionGroup) and e.exceptions:
            e = e.exceptions[0]
        slow = isinstance(e, trio.TooSlowError)
        text = "no answer in time" if slow else f"{type(e).__name__}: {e}"[:200]
        for secret in (self._password, self.cfg.secret):
            if secret:
                text = text.replace(secret, "[redacted]")
        return text
