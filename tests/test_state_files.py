"""State files that cannot hurt, bounded per-model health, background loops that survive, private paths."""

from __future__ import annotations

import logging
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from combined_models.client.aio import open_client
from combined_models.config import Config, parse_config
from combined_models.daemon import open_daemon
from combined_models.daemon.credentials import copilot_token_path
from combined_models.daemon.errors import Failure
from combined_models.daemon.health import decode_health_file
from combined_models.daemon.registry import HEALTH_SAVE_INTERVAL, Registry
from combined_models.paths import PathError, ensure_private_dir, open_private_log, state_file, write_private
from combined_models.simulator import Simulator
from combined_models.statefile import load_or_quarantine, quarantine_name

from .conftest import ANSWER, MODEL, open_stack, text_of

# ---------------------------------------------------------------- bounded per-model health over a real daemon


async def test_thousands_of_unknown_models_leave_the_status_small(short_dir: Path) -> None:
    with trio.fail_after(120):
        async with open_stack(short_dir) as st, st.client() as c:
            names = iter(range(2000))

            async def worker() -> None:
                for n in names:
                    events = [e async for e in c.chat(f"first/unknown-{n}", "hi")]
                    assert events, "no answer"

            async with trio.open_nursery() as nursery:
                for _ in range(16):
                    nursery.start_soon(worker)
            status = await c.status()
            assert all(p.models == [] for p in status.providers)
            assert len(msgspec.msgpack.encode(status)) < 4096
            books = st.server.registry.actors
            assert {len(a._health.models) for a in books.values()} == {0}
            assert text_of(await st.ask()) == ANSWER


# ---------------------------------------------------------------- state files that cannot hurt

DEEP = b'{"a":' * 100_000
BAD_ANY = [b"", b"\xff\xfe\x00garbage", b"[]", b"null", b"[" * 100_000, DEEP, b'"just a string"']
BAD = {
    "health": [
        *BAD_ANY,
        b'{"providers": {"first": {"models": {"m": {"strikes": ' + b"1" * 400 + b"}}}}}",
        b'{"providers": {"first": {"models": {"m": {"until_wall": 1e400}}}}}',
        b'{"providers": {"first": {"models": {"m": {"until_wall": Infinity}}}}}',
        b'{"providers": {"first": {"provider": {"state": "on fire"}}}}',
    ],
    "catalogs": [
        *BAD_ANY,
        b'{"providers": {"first": {"models": [1, 2, 3]}}}',
        b'{"providers": {"first": {"models": ["m"], "fetched_at": NaN}}}',
        b'{"providers": {"first": {"models": ["m"], "fetched_at": 1e308}}}',
        b'{"providers": {"first": {"models": ["' + b"x" * 600 + b'"]}}}',
    ],
    "models-dev": [*BAD_ANY[:5], b"[" * 100_000],
    "copilot-token": [
        *BAD_ANY,
        b'{"oauth_token": 5}',
        b'{"oauth_token": ""}',
        b"{}",
        b'{"oauth_token": NaN}',
    ],
}
CASES = [(kind, data) for kind, contents in BAD.items() for data in contents] + [
    (kind, None)
    for kind in BAD  # None: a directory where the file should be
]


def file_of(kind: str, sock: Path) -> Path:
    return copilot_token_path() if kind == "copilot-token" else state_file(sock, kind)


def every_state_file_config(sim: Simulator) -> Config:
    """One simulated provider, plus what reads each state file: metadata on (from nowhere), a Copilot provider."""
    return parse_config(
        f"""
provider_priority = ["first"]
metadata = "models.dev"
metadata_url = "http://127.0.0.1:9/api.json"
[http]
listen = "127.0.0.1:0"
[providers.first]
api = "openai"
base_url = "{sim.base_url}"
api_key = "sk-test-first-0123456789"
models = ["{MODEL}"]
[providers.github-copilot]
auth_url = "http://127.0.0.1:9"
""",
        "test config",
    )


@pytest.mark.parametrize(
    ("kind", "data"), CASES, ids=[f"{k}-{'dir' if d is None else repr(d[:24])}" for k, d in CASES]
)
async def test_a_bad_state_file_is_moved_aside_and_the_daemon_serves(
    short_dir: Path, kind: str, data: bytes | None, caplog: pytest.LogCaptureFixture
) -> None:
    sock = short_dir / "d.sock"
    path = file_of(kind, sock)
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        (path / "inner").mkdir(parents=True)
    else:
        path.write_bytes(data)
    caplog.set_level(logging.INFO)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            sim = Simulator(models=[MODEL], text=ANSWER, name="first")
            await nursery.start(sim.run)
            await open_daemon(every_state_file_config(sim), sock, nursery, persist=True)
            async with open_client(sock) as c:
                assert text_of([e async for e in c.chat(MODEL, "hi")]) == ANSWER
            nursery.cancel_scope.cancel()
    aside = [p for p in path.parent.iterdir() if p.name.startswith(f"{path.name}.bad-")]
    assert len(aside) == 1
    assert aside[0].is_dir() if data is None else aside[0].read_bytes() == data
    if path.exists():  # only ever a fresh, valid file of ours (the health saved at shutdown)
        assert kind == "health"
        decode_health_file(path.read_bytes())
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and path.name in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in warned]
    assert aside[0].name in warned[0].getMessage()


# ---------------------------------------------------------------- the helper itself


def test_quarantine_name_is_beside_the_file_and_names_the_time() -> None:
    when = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert quarantine_name(Path("/s/health-1.json"), when) == Path("/s/health-1.json.bad-20250304T050607Z")


def test_a_missing_file_is_not_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert load_or_quarantine(tmp_path / "none.json", bytes, what="test file") is None
    assert caplog.records == []


def test_a_fifo_does_not_hang_and_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fifo = tmp_path / "state.json"
    os.mkfifo(fifo)
    assert load_or_quarantine(fifo, bytes, what="test file") is None
    assert not fifo.exists()
    assert len(caplog.records) == 1 and "not a regular file" in caplog.records[0].getMessage()


def test_a_file_over_the_bound_is_moved_aside_twice_without_clobbering(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    for _ in range(2):
        path.write_bytes(b"x" * 101)
        assert load_or_quarantine(path, bytes, what="test file", max_bytes=100) is None
    assert len(list(tmp_path.glob("state.json.bad-*"))) == 2


def test_a_good_file_is_decoded_and_left_in_place(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b'{"a": 1}')
    assert load_or_quarantine(path, msgspec.json.decode, what="test file") == {"a": 1}
    assert path.exists()


# ---------------------------------------------------------------- background loops


def registry_alone(short_dir: Path, health_file: Path) -> Registry:
    """A registry without sockets: its provider is never called, so trio's MockClock may jump."""
    cfg = parse_config(
        f"""
[providers.first]
api = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-test-first-0123456789"
models = ["{MODEL}"]
""",
        "test config",
    )
    return Registry(cfg, socket=short_dir / "d.sock", health_file=health_file)


async def test_a_failing_health_save_is_logged_once_and_retried(
    short_dir: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = short_dir / "state"
    blocker.write_text("a file where the state dir should be")
    sup = registry_alone(short_dir, blocker / "health.json")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        sup.actors["first"]._health.fail(MODEL, trio.current_time(), Failure.RATE_LIMITED, hint=3600.0)
        await trio.sleep(HEALTH_SAVE_INTERVAL * 10)
        failed = [r for r in caplog.records if "cannot save health" in r.getMessage()]
        assert len(failed) == 1
        blocker.unlink()  # the disk is writable again: the next pass saves
        await trio.sleep(HEALTH_SAVE_INTERVAL * 2)
        saved = decode_health_file((blocker / "health.json").read_bytes())
        assert saved.providers["first"].models[MODEL].reason == "rate_limited"
        nursery.cancel_scope.cancel()


async def test_discovery_survives_its_own_failures(
    short_dir: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    sup = registry_alone(short_dir, short_dir / "health.json")
    calls = 0

    async def broken_refresh() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError(f"listing bug {calls}")

    sup.refresh_catalogs = broken_refresh  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(sup.run)
        assert trio.current_time() - start < 1.0  # a failed first listing does not hold up startup
        await trio.sleep(60)
        assert calls >= 4  # retried with backoff, not given up
        assert sum("model discovery" in r.getMessage() for r in caplog.records) == calls
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- private paths


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_symlinked_runtime_dir_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    link = tmp_path / "combined-models-1000"
    link.symlink_to(target)
    with pytest.raises(PathError, match="symbolic link"):
        ensure_private_dir(link)
    assert mode(target) == 0o755


def test_a_dir_of_someone_else_is_refused_and_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = tmp_path / "combined-models-1000"
    theirs.mkdir()
    theirs.chmod(0o755)
    monkeypatch.setattr(os, "getuid", lambda: theirs.stat().st_uid + 1)
    with pytest.raises(PathError, match="belongs to uid"):
        ensure_private_dir(theirs)
    assert mode(theirs) == 0o755


def test_a_file_where_a_dir_should_be_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(PathError, match="not a directory"):
        ensure_private_dir(tmp_path / "f")


def test_our_own_loose_dir_is_tightened_and_a_new_one_is_private(tmp_path: Path) -> None:
    ours = tmp_path / "ours"
    ours.mkdir()
    ours.chmod(0o755)
    ensure_private_dir(ours)
    assert mode(ours) == 0o700
    ensure_private_dir(tmp_path / "a" / "b")
    assert mode(tmp_path / "a" / "b") == 0o700


def test_state_files_are_0600_in_a_0700_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    write_private(state / "health.json", b"{}")
    write_private(tmp_path / "new" / "catalogs.json", b"{}")
    assert (mode(state), mode(state / "health.json")) == (0o700, 0o600)
    assert (mode(tmp_path / "new"), mode(tmp_path / "new" / "catalogs.json")) == (0o700, 0o600)


def test_the_daemon_log_is_0600_in_a_0700_dir(tmp_path: Path) -> None:
    log = tmp_path / "log" / "daemon.log"
    with open_private_log(log) as f:
        f.write(b"started\n")
    assert (mode(log.parent), mode(log)) == (0o700, 0o600)
    log.chmod(0o644)
    with open_private_log(log) as f:
        f.write(b"again\n")
    assert mode(log) == 0o600
    assert log.read_bytes() == b"started\nagain\n"


def test_a_symlinked_log_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    target = tmp_path / "target"
    target.write_bytes(b"")
    (tmp_path / "log" / "daemon.log").symlink_to(target)
    with pytest.raises(OSError):
        open_private_log(tmp_path / "log" / "daemon.log")
    assert target.read_bytes() == b""
