"""The daemon's metrics, in the Prometheus text format (`GET /metrics` on the front door).

One `Metrics` per daemon, with its own collector registry (never the library's global one:
several daemons may run in one process). The router records requests, attempts, failovers
and tokens as they happen; provider health and in-flight counts are read from the
registry's status when scraped. Model labels name only models the registry knows, so a
caller naming made-up models cannot grow the label set without bound.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..chat import Usage
from .health import State
from .registry import Registry

OTHER = "other"  # the label of a model the registry does not know
# Seconds: from a quick local answer to a slow reasoning model's first token.
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FAILOVER_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _ProviderHealth(Collector):
    """Per provider, at scrape time: its state (one sample per state, 1 for the current one), cooldown, in flight."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """The families without reading status: registering asks for them before trio runs."""
        return self._families()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        state, cooldown, in_flight = self._families()
        for p in self._registry.status().providers:
            for s in State:
                state.add_metric([p.id, s.value], 1.0 if p.state == s.value else 0.0)
            cooldown.add_metric([p.id], p.cooldown_remaining_s)
            in_flight.add_metric([p.id], p.in_flight)
        return [state, cooldown, in_flight]

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        state = GaugeMetricFamily(
            "cm_provider_state",
            "The provider's health state (1 for its current one)",
            labels=["provider", "state"],
        )
        cooldown = GaugeMetricFamily(
            "cm_provider_cooldown_seconds",
            "Seconds until the provider may be tried again",
            labels=["provider"],
        )
        in_flight = GaugeMetricFamily(
            "cm_in_flight", "Upstream requests under way on the provider", labels=["provider"]
        )
        return [state, cooldown, in_flight]


class Metrics:
    """Counters and histograms the router feeds, and the text a scrape gets."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self.collectors = CollectorRegistry(auto_describe=True)
        r = self.collectors
        self.requests = Counter(
            "cm_requests", "Requests served, by model asked and outcome", ["model", "outcome"], registry=r
        )
        self.attempts = Counter(
            "cm_upstream_attempts",
            "Attempts on a provider, by outcome (ok or the failure kind)",
            ["provider", "model", "outcome"],
            registry=r,
        )
        self.failovers = Counter(
            "cm_failovers",
            "Failovers from one provider to the next, by reason and whether output had been sent",
            ["from_provider", "to_provider", "reason", "after_output"],
            registry=r,
        )
        self.tokens = Counter(
            "cm_tokens",
            "Tokens by provider and direction (input counts the whole prompt, cached parts included)",
            ["provider", "direction"],
            registry=r,
        )
        self.ttft = Histogram(
            "cm_time_to_first_token_seconds",
            "From a request's arrival to its first content",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.failover_latency = Histogram(
            "cm_failover_latency_seconds",
            "From a member's failure to the next member's first content",
            buckets=FAILOVER_BUCKETS,
            registry=r,
        )
        r.register(_ProviderHealth(registry))

    # ------------------------------------------------------------ labels

    def model_label(self, model: str) -> str:
        """The model a caller asked for, when the registry knows it; else "other"."""
        reg = self._registry
        cid = model.removeprefix("combined/")
        if cid in reg.models:
            return cid
        pid, sep, rest = model.partition("/")
        if sep and pid in reg.actors and rest in reg.actors[pid].offered:
            return model
        if any(model in a.offered for a in reg.actors.values()):
            return model
        return OTHER

    def member_label(self, provider: str, model: str) -> str:
        actor = self._registry.actors.get(provider)
        return model if actor is not None and model in actor.offered else OTHER

    # ------------------------------------------------------------ recording

    def request(
        self, model: str, outcome: str, ttft: float | None, failover_latencies: Iterable[float]
    ) -> None:
        label = self.model_label(model)
        self.requests.labels(label, outcome).inc()
        if ttft is not None:
            self.ttft.labels(label).observe(ttft)
        for seconds in failover_latencies:
            self.failover_latency.observe(seconds)

    def attempt(self, provider: str, model: str, outcome: str, usage: Usage | None = None) -> None:
        self.attempts.labels(provider, self.member_label(provider, model), outcome).inc()
        if usage is not None:
            for direction, n in (
                ("input", usage.input_tokens),
                ("output", usage.output_tokens),
                ("cache_read", usage.cache_read_tokens),
                ("cache_write", usage.cache_write_tokens),
            ):
                self.tokens.labels(provider, direction).inc(max(n, 0))

    def failover(self, from_provider: str, to_provider: str, reason: str, after_output: bool) -> None:
        self.failovers.labels(from_provider, to_provider, reason, "true" if after_output else "false").inc()

    def render(self) -> bytes:
        """Everything, in the Prometheus text format."""
        return generate_latest(self.collectors)
