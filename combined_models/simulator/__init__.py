"""Fake LLM providers on loopback with scripted faults, for testing failover.

Written from the wire docs (provider-protocols.md), never from the daemon's own
dialects, so a misunderstanding shared by both cannot hide. Real HTTP/1.1 over
trio + h11::

    async with open_simulator(models=["m"], text="Hello there.") as sim:
        sim.push_fault(Fault(kind="reset_after", after_chunks=2))
        ...  # point a client at sim.base_url

Dialects ("openai", "openrouter", "anthropic", "bedrock", "gemini", "copilot") each
render the same answers and the same fault scripts in their own bytes; `sim.base_url`
is what that vendor's SDK takes as its base. Each chat request is recorded with a
dialect-neutral view of its conversation (`RecordedRequest.conversation`).

The same server runs as a process with `python -m combined_models.simulator`,
scriptable over HTTP at `/_sim/faults`, `/_sim/stats` and `/_sim/requests`.
"""

from .answer import DEFAULT_TEXT
from .faults import FAULT_KINDS, Fault
from .server import RecordedRequest, SimStats, Simulator, SimulatorOptions, open_simulator

__all__ = [
    "DEFAULT_TEXT",
    "FAULT_KINDS",
    "Fault",
    "RecordedRequest",
    "SimStats",
    "Simulator",
    "SimulatorOptions",
    "open_simulator",
]
