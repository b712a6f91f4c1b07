"""What a config reload changes: a pure comparison of the running config and the re-read one.

`diff_configs` decides; `Registry.apply` carries the decision out. Pure: no I/O library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from ..config import Config, ResolvedProvider, provider_ids, resolve_provider

# Read again on every use, so they apply at once. Every other top-level key (`http`, `limits`,
# `logging`, `metadata`, the transport, keys added later) is bound when the daemon starts: a
# change to one needs a restart, and the running value is kept until then.
LIVE = frozenset(
    {
        "provider_priority",
        "min_providers",
        "failover",
        "providers",
        "combined",
        "exclude",
        "discovery_interval",
        "metadata_url",
    }
)


@dataclass(frozen=True)
class ConfigChange:
    """The difference between two configs, as a reload applies it."""

    applied: Config  # the new config, with the restart-only keys kept as they run
    added: tuple[str, ...] = ()  # providers that get an actor
    removed: tuple[str, ...] = ()  # providers whose actor drains and closes
    changed: tuple[str, ...] = ()  # resolved settings differ: a new actor, the old one drains
    priority: bool = False  # the members' order changed
    failover: tuple[str, ...] = ()  # `[failover]` keys that changed (read per request and attempt)
    models: tuple[str, ...] = ()  # keys that shape the combined models (combined, exclude, ...)
    restart: tuple[str, ...] = ()  # top-level keys that changed but need a restart

    def lines(self) -> list[str]:
        """What changed, a line per kind, for the reply and the log; empty when nothing did."""
        out = []
        for what, ids in (("added", self.added), ("removed", self.removed), ("changed", self.changed)):
            if ids:
                out.append(f"providers {what}: {', '.join(ids)}")
        if self.priority:
            out.append(f"provider_priority: {', '.join(provider_ids(self.applied))}")
        if self.failover:
            out.append(f"failover: {', '.join(f'{k} = {v}' for k, v in self._failover_values())}")
        if self.models:
            out.append(f"combined models rebuilt ({', '.join(self.models)} changed)")
        if self.restart:
            out.append(f"needs a restart to apply (running as before): {', '.join(self.restart)}")
        return out

    def _failover_values(self) -> list[tuple[str, object]]:
        return [(k, getattr(self.applied.failover, k)) for k in self.failover]


def _changed_fields(old: msgspec.Struct, new: msgspec.Struct) -> tuple[str, ...]:
    return tuple(f for f in old.__struct_fields__ if getattr(old, f) != getattr(new, f))


def diff_configs(old: Config, new: Config, env: Mapping[str, str] | None = None) -> ConfigChange:
    """What reloading `new` over the running `old` does (`env`: where keys named by env come from)."""
    restart = tuple(f for f in _changed_fields(old, new) if f not in LIVE)
    applied = msgspec.structs.replace(new, **{f: getattr(old, f) for f in restart})
    before, after = provider_ids(old), provider_ids(applied)

    def resolved(cfg: Config, pid: str) -> ResolvedProvider:
        return resolve_provider(cfg, pid, env)

    kept = [p for p in after if p in before]
    return ConfigChange(
        applied=applied,
        added=tuple(p for p in after if p not in before),
        removed=tuple(p for p in before if p not in after),
        changed=tuple(p for p in kept if resolved(old, p) != resolved(applied, p)),
        priority=[p for p in before if p in after] != kept,
        failover=_changed_fields(old.failover, applied.failover),
        models=tuple(
            f for f in ("combined", "exclude", "min_providers") if getattr(old, f) != getattr(new, f)
        ),
        restart=restart,
    )
