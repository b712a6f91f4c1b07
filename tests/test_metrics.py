"""Issue 13: `GET /metrics` on the front door, scraped during a failover and read with the library's own parser."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from combined_models.chat import FailoverEvent
from combined_models.simulator import Fault

from .conftest import ANSWER, MODEL, done_of, open_stack, text_of

FAST = {"first_token_timeout": 0.5, "idle_timeout": 0.4}


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(found: list[Sample], name: str, **labels: str) -> float | None:
    """The one sample named `name` whose labels include `labels`; None when there is none."""
    matching = [s for s in found if s.name == name and labels.items() <= s.labels.items()]
    assert len(matching) <= 1, matching
    return matching[0].value if matching else None


async def scrape(url: str, token: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient(base_url=url, timeout=10, trust_env=False) as http:
        return await http.get("/metrics", headers=headers)


async def test_a_failover_shows_in_the_metrics_with_its_from_to_and_reason(short_dir: Path) -> None:
    async with open_stack(short_dir, failover=FAST) as st:
        gw = st.server.gateway
        assert gw is not None and gw.address
        url = f"http://{gw.address}"
        st.sims["first"].push_fault(Fault(kind="status", status=503))
        with trio.fail_after(10):
            events = await st.ask()
            assert text_of(events) == ANSWER and done_of(events).provider == "second"
            assert any(isinstance(e, FailoverEvent) for e in events)
            reply = await scrape(url, gw.token)
            refused = await scrape(url, None)
            wrong = await scrape(url, "not-the-token")

    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == CONTENT_TYPE_LATEST
    found = samples(reply.text)

    failover = {"from_provider": "first", "to_provider": "second", "reason": "overloaded"}
    assert value(found, "cm_failovers_total", **failover, after_output="false") == 1
    assert value(found, "cm_failovers_total", after_output="true") is None
    assert value(found, "cm_failover_latency_seconds_count") == 1

    assert value(found, "cm_requests_total", model=MODEL, outcome="done") == 1
    assert value(found, "cm_time_to_first_token_seconds_count", model=MODEL) == 1
    assert (
        value(found, "cm_upstream_attempts_total", provider="first", model=MODEL, outcome="overloaded") == 1
    )
    assert value(found, "cm_upstream_attempts_total", provider="second", model=MODEL, outcome="ok") == 1

    output = value(found, "cm_tokens_total", provider="second", direction="output")
    assert output is not None and output > 0
    assert value(found, "cm_tokens_total", provider="first", direction="output") is None

    # Health at scrape time: the first provider cools down after its 503, the second is ready.
    assert value(found, "cm_provider_state", provider="second", state="ready") == 1
    assert value(found, "cm_provider_state", provider="first", state="ready") == 0
    cooldown = value(found, "cm_provider_cooldown_seconds", provider="first")
    assert cooldown is not None and cooldown > 0
    assert value(found, "cm_provider_cooldown_seconds", provider="second") == 0
    assert value(found, "cm_in_flight", provider="first") == 0

    assert refused.status_code == 401 and wrong.status_code == 401
    assert "cm_" not in refused.text and "cm_" not in wrong.text


async def test_models_nobody_offers_are_counted_as_other(short_dir: Path) -> None:
    """A caller naming made-up models does not grow the label set."""
    async with open_stack(short_dir) as st:
        for name in ("made-up-1", "made-up-2"):
            await st.ask(model=name)
        text = st.server.facade.metrics_text().decode()
    found = samples(text)
    assert value(found, "cm_requests_total", model="other", outcome="unknown_model") == 2
    assert "made-up" not in text
