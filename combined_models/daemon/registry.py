"""The registry: provider actors, model catalogs and metadata, combined models, health on disk."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import httpx
import msgspec
import trio

from .. import __version__, metadata
from ..catalog import build_models
from ..catalog import explain as explain_grouping
from ..config import Config, provider_ids, resolve_provider
from ..limits import MAX_MODEL_ID, decode_bounded
from ..paths import write_private
from ..protocol import CombinedModel, DaemonInfo, Member, ModelsInfo, SharedStatus, StatusInfo
from ..statefile import load_or_quarantine
from .containment import contained, run_forever
from .engine import Look, MemberView
from .health import HealthFile, decode_health_file
from .provider import ProviderActor
from .reload import ConfigChange
from .shared import SharedHealth
from .upstream import ConnectionBroken, LimitedBody

log = logging.getLogger("combined_models.daemon")

HEALTH_SAVE_INTERVAL = 2.0
METADATA_INTERVAL = 86400.0
STARTUP_DISCOVERY_WAIT = 10.0  # seconds startup waits for model listings before serving anyway
METADATA_FETCH_TIMEOUT = 120.0
MAX_CATALOG_MODELS = 10_000  # one provider's cached listing (a few hundred is typical)


class CachedCatalog(msgspec.Struct):
    """One provider's last good listing, as the catalog cache keeps it."""

    models: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=MAX_MODEL_ID)]],
        msgspec.Meta(max_length=MAX_CATALOG_MODELS),
    ] = []
    fetched_at: Annotated[float, msgspec.Meta(ge=0.0, le=1e11)] | None = None  # wall clock


class CatalogFile(msgspec.Struct):
    providers: Annotated[dict[str, CachedCatalog], msgspec.Meta(max_length=1024)] = {}


_catalog_decoder = msgspec.json.Decoder(CatalogFile)


class UnknownModel(Exception):
    pass


class Registry:
    """The providers and their models: actors, catalogs, metadata, and their health on disk.

    The router asks it which members serve a model name (`resolve`) and how each is
    (`looking_at`); `cmctl` asks it for status and models. It owns every provider actor.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        socket: Path | None = None,
        config_path: Path | None = None,
        health_file: Path | None = None,
        catalog_file: Path | None = None,
        metadata_file: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.socket = socket
        self.config_path = config_path
        self.health_file = health_file
        self.catalog_file = catalog_file
        self.metadata_file = metadata_file
        self.actors: dict[str, ProviderActor] = {}
        # The team's shared health store, when the config names one; it finds actors by account.
        self.shared = SharedHealth(cfg.shared, self.actors.values) if cfg.shared.url else None
        for pid in provider_ids(cfg):
            self.actors[pid] = ProviderActor(resolve_provider(cfg, pid), cfg.failover)
        self._load_catalogs()
        self.models: dict[str, CombinedModel] = {}
        self.rebuild_models()
        self.started_at = time.monotonic()
        self._save_error: str | None = None  # why the last health save failed, logged once
        self._nursery: trio.Nursery | None = None  # where actors run: a reload starts new ones there

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for actor in self.actors.values():
                await nursery.start(actor.run)
            if self.shared is not None:
                await nursery.start(self.shared.run)
            self._restore_health()
            if self.health_file is not None:
                nursery.start_soon(self._save_health_periodically)
            if self.cfg.metadata != "off":
                self._load_metadata()
                nursery.start_soon(self._fetch_metadata_periodically)
            # Start serving once the first listings are in (or after a short wait: the cache covers).
            first_listing = trio.Event()
            nursery.start_soon(self._discover_periodically, first_listing)
            with trio.move_on_after(STARTUP_DISCOVERY_WAIT):
                await first_listing.wait()
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                with contained(log, "saving health at shutdown"):
                    self.save_health()  # synchronous: runs even while being cancelled

    # ------------------------------------------------------------ config reload

    async def apply(self, change: ConfigChange) -> list[ProviderActor]:
        """Serve `change.applied` from now on; requests under way finish where they are.

        New and changed providers get actors (started before anything is swapped); removed and
        replaced ones retire: each closes its connections once its last attempt ends. Kept
        actors keep their health and counters. Returns the new actors (to list their models).
        """
        assert self._nursery is not None, "registry not running"
        cfg = change.applied
        fresh = {
            pid: ProviderActor(resolve_provider(cfg, pid), cfg.failover)
            for pid in (*change.added, *change.changed)
        }
        for pid, actor in fresh.items():
            old = self.actors.get(pid)
            if old is not None and old.catalog_source in ("live", "cached") and actor.discovers:
                actor.use_cached(list(old.offered), old.catalog_fetched_at or 0.0)  # until it lists anew
            await self._nursery.start(actor.run)
        # From here to the end no checkpoint: a request sees the old registry or the new one.
        retired = [self.actors[pid] for pid in (*change.removed, *change.changed)]
        order = {pid: fresh.get(pid) or self.actors[pid] for pid in provider_ids(cfg)}
        self.actors.clear()  # in place: others hold the dict (the shared health store)
        self.actors.update(order)
        self.cfg = cfg
        for actor in self.actors.values():
            actor.use_failover(cfg.failover)
        for actor in retired:
            actor.retire()
        self._load_catalogs()  # an added provider starts from its cached listing, if any
        self.rebuild_models()
        return list(fresh.values())

    # ------------------------------------------------------------ model catalogs

    def rebuild_models(self) -> None:
        usable = {pid: a for pid, a in self.actors.items() if not a.disabled}
        self.models = build_models(
            self.cfg,
            {pid: a.offered for pid, a in usable.items()},
            {pid: a.region for pid, a in usable.items()},
        )
        for combined in self.models.values():  # what the optional metadata knows of each member
            for m in combined.members:
                info = self.actors[m.provider].model_info(m.model) if m.provider in self.actors else None
                if info is not None:
                    m.context_window, m.input_cost, m.output_cost = (
                        info.context_window,
                        info.input_cost,
                        info.output_cost,
                    )
        self._track_models()

    def _track_models(self) -> None:
        """Per-model health only for models some member offers: callers may name any model."""
        named = {pid: {*a.offered, *(a.provider.models or ())} for pid, a in self.actors.items()}
        for combined in self.cfg.combined.values():
            for member in combined.members:
                pid, _, model = member.partition("/")
                if pid in named:
                    named[pid].add(model)
        # (before trio runs, nothing has been restored into the books yet: any `now` will do)
        now = trio.current_time() if trio.lowlevel.in_trio_run() else 0.0
        for pid, actor in self.actors.items():
            actor.track(named[pid], now)
            # Every actor, made now or after a reload, tells the shared store of its cooldowns.
            actor.health_listener = self.shared.listener if self.shared is not None else None

    def _load_catalogs(self) -> None:
        """The last good listing of each discovering provider, so a restart without network still serves."""
        if self.catalog_file is None:
            return
        saved = load_or_quarantine(self.catalog_file, _catalog_decoder.decode, what="model catalog cache")
        for pid, entry in saved.providers.items() if saved is not None else ():
            actor = self.actors.get(pid)
            if actor is not None and actor.discovers:
                actor.use_cached(list(entry.models), entry.fetched_at or 0.0)

    def _save_catalogs(self) -> None:
        if self.catalog_file is None:
            return
        keep = {
            pid: CachedCatalog(
                models=[m for m in a.offered if len(m) <= MAX_MODEL_ID][:MAX_CATALOG_MODELS],
                fetched_at=a.catalog_fetched_at,
            )
            for pid, a in self.actors.items()
            if a.catalog_source in ("live", "cached")
        }
        try:
            write_private(self.catalog_file, msgspec.json.encode(CatalogFile(providers=keep)))
        except OSError as e:
            log.warning("cannot save model catalogs to %s: %s", self.catalog_file, e)

    async def refresh_catalogs(self, actors: Iterable[ProviderActor] | None = None) -> None:
        """List every discovering provider's models at once (or `actors`'), then rebuild the combined models."""
        results: dict[str, bool] = {}

        async def one(actor: ProviderActor) -> None:
            if self.actors.get(actor.id) is not actor:  # a reload retired it meanwhile
                return
            results[actor.id] = await actor.discover()
            if not results[actor.id]:
                log.warning(
                    "%s: %s (serving its %s list)", actor.id, actor.catalog_error, actor.catalog_source
                )

        async with trio.open_nursery() as nursery:
            for actor in list(self.actors.values() if actors is None else actors):
                if actor.discovers:
                    nursery.start_soon(one, actor)
        if results:
            self.rebuild_models()
            if any(results.values()):
                self._save_catalogs()

    async def _discover_periodically(self, first: trio.Event) -> None:
        async def one_pass() -> None:
            try:
                await self.refresh_catalogs()
            finally:
                first.set()  # a failed first listing must not hold up startup
            await trio.sleep(self.cfg.discovery_interval)

        await run_forever(log, "model discovery", one_pass)

    # ------------------------------------------------------------ optional metadata (models.dev)

    def _apply_metadata(self, catalog: metadata.Catalog) -> None:
        for pid, actor in self.actors.items():
            actor.use_metadata(catalog.get(pid, {}))
        self.rebuild_models()

    def _load_metadata(self) -> None:
        if self.metadata_file is None:
            return
        catalog = load_or_quarantine(
            self.metadata_file,
            metadata.parse_models_dev,
            what="model metadata cache",
            max_bytes=metadata.MAX_CATALOG_BYTES,
        )
        if catalog is not None:
            self._apply_metadata(catalog)

    async def _download_metadata(self) -> bytes:
        with trio.fail_after(METADATA_FETCH_TIMEOUT):
            async with (
                httpx.AsyncClient(timeout=30, trust_env=True) as client,
                # Raw bytes, inflated here within the limit: httpx would inflate a bomb whole.
                client.stream("GET", self.cfg.metadata_url, headers={"accept-encoding": "gzip"}) as resp,
            ):
                resp.raise_for_status()
                body = LimitedBody(resp.headers.get("content-encoding", ""), metadata.MAX_CATALOG_BYTES)
                async for raw in resp.aiter_raw():
                    body.feed(raw)
                return body.body()

    async def _fetch_metadata_periodically(self) -> None:
        """Fetch the catalog now and daily; any failure leaves what we had (nothing depends on it)."""

        async def one_pass() -> None:
            try:
                body = await self._download_metadata()
                catalog = decode_bounded(metadata.parse_models_dev, body)
            except (httpx.HTTPError, trio.TooSlowError, ConnectionBroken, ValueError, OverflowError) as e:
                log.info("model metadata unavailable (%s); going on without it", e)
            else:
                self._apply_metadata(catalog)
                if self.metadata_file is not None:
                    try:
                        write_private(self.metadata_file, body)
                    except OSError as e:
                        log.warning("cannot cache model metadata: %s", e)
            await trio.sleep(METADATA_INTERVAL)

        await run_forever(log, "fetching model metadata", one_pass)

    # ------------------------------------------------------------ health persistence

    def _restore_health(self) -> None:
        if self.health_file is None:
            return
        saved = load_or_quarantine(self.health_file, decode_health_file, what="health file")
        now = trio.current_time()
        for pid, book in saved.providers.items() if saved is not None else ():
            if pid in self.actors:
                self.actors[pid].restore(book, now)

    def save_health(self) -> bool:
        """Write every provider's health; False when it cannot be written (logged once until it can)."""
        if self.health_file is None:
            return True
        now = trio.current_time()
        data = HealthFile(
            saved_at=time.time(), providers={pid: a.snapshot(now) for pid, a in self.actors.items()}
        )
        try:
            write_private(self.health_file, msgspec.json.encode(data))
        except OSError as e:
            why = e.strerror or str(e)
            if why != self._save_error:  # a read-only or full disk is not news every two seconds
                log.warning("cannot save health to %s: %s (retrying)", self.health_file, why)
            self._save_error = why
            return False
        if self._save_error is not None:
            log.info("health saved to %s again", self.health_file)
            self._save_error = None
        return True

    async def _save_health_periodically(self) -> None:
        last: list[bytes] = []

        async def one_pass() -> None:
            nonlocal last
            await trio.sleep(HEALTH_SAVE_INTERVAL)
            # Only write when something other than the passing time changed.
            key = [a.health_fingerprint() for a in self.actors.values()]
            if key != last and self.save_health():
                last = key

        await run_forever(log, "saving health", one_pass)

    # ------------------------------------------------------------ queries

    def status(self) -> StatusInfo:
        now = trio.current_time()
        return StatusInfo(
            daemon=DaemonInfo(
                pid=os.getpid(),
                version=__version__,
                uptime_s=round(time.monotonic() - self.started_at, 3),
                socket=str(self.socket or ""),
                config=str(self.config_path or ""),
            ),
            providers=[a.status(now) for a in self.actors.values()],
            shared=self.shared.status() if self.shared is not None else SharedStatus(),
        )

    def models_info(self) -> ModelsInfo:
        return ModelsInfo(models=list(self.models.values()))

    def explain(self, model: str) -> list[str]:
        """Why the members of combined model `model` are together (KeyError: no such model)."""
        cid = model.removeprefix("combined/")
        combined = self.models[cid]
        if combined.explicit:
            members = ", ".join(f"{m.provider}/{m.model}" for m in combined.members)
            return [f"explicit [combined.{cid}] entry in the config: {members}, in that order"]
        usable = {pid: a for pid, a in self.actors.items() if not a.disabled}
        offerings = [(pid, m) for pid, a in usable.items() for m in a.offered]
        lines = explain_grouping(offerings, cid)
        order = ", ".join(m.provider for m in combined.members)
        lines.append(f"members ordered by provider_priority: {order} (one offering per provider)")
        return lines

    def resolve(self, name: str) -> list[Member]:
        """A combined id, `combined/<id>`, `provider/model`, or a model id some providers offer."""
        cid = name.removeprefix("combined/")
        if cid in self.models:
            return list(self.models[cid].members)
        pid, sep, model = name.partition("/")
        if sep and pid in self.actors and model:
            return [Member(provider=pid, model=model)]
        direct = [Member(provider=p, model=name) for p, a in self.actors.items() if name in a.offered]
        if direct:
            return direct
        known = ", ".join(list(self.models)[:12]) or "none configured"
        raise UnknownModel(f"unknown model {name!r} (combined models: {known}; or use provider/model)")

    def looking_at(self, now: float) -> Look:
        """How each member is at `now`, for the failover engine (None: no such provider)."""

        def look(member: Member) -> MemberView | None:
            actor = self.actors.get(member.provider)
            return None if actor is None else actor.view(member.model, now)

        return look
