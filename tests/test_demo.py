"""`cmctl demo` as a new user runs it: no keys, no network, complete answers, nothing left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_demo_shows_failover_and_leaves_nothing_behind(tmp_path: Path) -> None:
    before = set(Path("/tmp").glob("cm-demo-*"))
    out = subprocess.run(
        [sys.executable, "-m", "combined_models.client.cli", "demo", "--fast"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    text = out.stdout
    assert "failover anthropic → amazon-bedrock: rate_limited, before any output" in text
    assert "failover amazon-bedrock → openrouter" in text and "mid-answer" in text
    assert "cooldown" in text  # the status table shows the rate-limited provider cooling
    assert "every answer was complete" in text
    assert set(Path("/tmp").glob("cm-demo-*")) == before  # its runtime dir is gone
    assert not any((tmp_path / d).exists() for d in ("xdg_state_home/combined-models",))
