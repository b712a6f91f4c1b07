"""The daemon's log: formats, private rotated files, one line per request, and `cmctl logs`."""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from combined_models.client import cli
from combined_models.config import ConfigError, LoggingConfig, parse_config
from combined_models.daemon.logs import BackgroundHandler, JsonFormatter, TextFormatter, setup_logging
from combined_models.paths import log_dir
from combined_models.simulator import Fault

from .conftest import done_of, error_of, open_stack


def record(msg: str = "request done", event: dict[str, object] | None = None) -> logging.LogRecord:
    rec = logging.LogRecord("combined_models.requests", logging.INFO, __file__, 1, msg, (), None)
    if event is not None:
        rec.event = event
    return rec


EVENT = {"event": "request", "request": 7, "tried": ["a/m", "b/m"], "served_by": None, "ttft_ms": 12.5}


def test_json_lines_carry_the_event_fields() -> None:
    line = JsonFormatter().format(record(event=EVENT))
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["level"] == "INFO" and obj["logger"] == "combined_models.requests"
    assert obj["msg"] == "request done" and obj["ts"].endswith("+00:00")
    assert {k: obj[k] for k in EVENT} == EVENT


def test_text_lines_append_the_event_as_key_value() -> None:
    line = TextFormatter().format(record(event=EVENT))
    assert "INFO combined_models.requests: request done " in line
    assert line.endswith("event=request request=7 tried=a/m,b/m served_by=- ttft_ms=12.5")
    assert TextFormatter().format(record("plain")).endswith(": plain")


def test_the_logging_table_is_checked_by_key() -> None:
    cfg = parse_config('[logging]\nformat = "json"\nmax_bytes = 4096\nbackup_count = 2\n')
    assert (cfg.logging.format, cfg.logging.max_bytes, cfg.logging.backup_count) == ("json", 4096, 2)
    assert parse_config("").logging == LoggingConfig()
    for bad, key in (
        ('format = "xml"', "logging.format"),
        ("backup_count = 0", "logging.backup_count"),
        ("max_bytes = 10", "logging.max_bytes"),
        ("colour = true", "logging`: Object contains unknown field `colour"),
    ):
        with pytest.raises(ConfigError, match=f"`{key}`"):
            parse_config(f"[logging]\n{bad}\n")


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers[:]:
        root.removeHandler(h)
        h.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root")
def test_rotation_keeps_a_bounded_number_of_private_files(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    handler = setup_logging(LoggingConfig(format="json", max_bytes=1024, backup_count=2), d)
    for i in range(200):
        logging.getLogger("combined_models.requests").info("line %d", i, extra={"event": {"request": i}})
    handler.flush()  # the writer thread has written everything
    names = sorted(p.name for p in d.iterdir())
    assert names == ["daemon.log", "daemon.log.1", "daemon.log.2"]
    for p in d.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        assert p.stat().st_size <= 1024
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    last = (d / "daemon.log").read_text().splitlines()[-1]
    assert json.loads(last)["request"] == 199


@pytest.mark.usefixtures("restore_root")
def test_without_a_file_the_log_goes_to_the_stream(tmp_path: Path) -> None:
    out = io.StringIO()
    handler = setup_logging(LoggingConfig(file=False), tmp_path / "logs", stream=out)
    logging.getLogger("combined_models.daemon").info("hello")
    handler.flush()
    assert out.getvalue().rstrip().endswith("combined_models.daemon: hello")
    assert not (tmp_path / "logs").exists()


def lines_of(caplog: pytest.LogCaptureFixture, kind: str) -> list[dict[str, object]]:
    return [r.event for r in caplog.records if getattr(r, "event", {}).get("event") == kind]  # type: ignore[attr-defined]


async def test_a_failed_over_request_logs_one_request_line_and_one_failover(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with open_stack(short_dir) as st:
        st.sims["first"].push_fault(Fault(kind="status", status=503))
        with trio.fail_after(10):
            assert done_of(await st.ask()).provider == "second"
            error_of(await st.ask("no-such-model"))
    requests = lines_of(caplog, "request")
    assert len(requests) == 2
    served, unknown = requests
    assert served["tried"] == ["first/sim-model-1", "second/sim-model-1"]
    assert (served["outcome"], served["served_by"], served["model"]) == ("done", "second", "sim-model-1")
    assert isinstance(served["ttft_ms"], float) and isinstance(served["total_ms"], float)
    assert 0 <= served["ttft_ms"] <= served["total_ms"]
    assert (unknown["outcome"], unknown["served_by"], unknown["tried"]) == ("unknown_model", None, [])
    assert unknown["request"] != served["request"]
    (failover,) = lines_of(caplog, "failover")
    assert (failover["from"], failover["to"], failover["after_output"]) == ("first", "second", False)
    assert failover["request"] == served["request"]
    health = lines_of(caplog, "health")
    assert [(h["provider"], h["state"]) for h in health] == [("first", "cooldown")]


def test_cmctl_logs_prints_the_last_lines(capsys: pytest.CaptureFixture[str]) -> None:
    d = log_dir()
    d.mkdir(parents=True, mode=0o700)
    (d / "daemon.log").write_text("".join(f"line {i}\n" for i in range(10)))
    with pytest.raises(SystemExit) as exit:
        cli.main(["logs", "-n", "2"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == "line 8\nline 9\n"


def test_cmctl_logs_json_needs_the_json_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = log_dir()
    d.mkdir(parents=True, mode=0o700)
    (d / "daemon.log").write_text('text line\n{"msg": "a"}\n{"msg": "b"}\n')
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    with pytest.raises(SystemExit) as exit:
        cli.main(["logs", "--json", "--config", str(cfg)])
    assert exit.value.code == 2
    assert 'format = "json"' in capsys.readouterr().err
    cfg.write_text('[logging]\nformat = "json"\n')
    with pytest.raises(SystemExit) as exit:
        cli.main(["logs", "--json", "--config", str(cfg)])
    assert exit.value.code == 0
    assert capsys.readouterr().out == '{"msg": "a"}\n{"msg": "b"}\n'


def test_cmctl_logs_without_a_log_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        cli.main(["logs"])
    assert exit.value.code == 1
    assert "no log yet" in capsys.readouterr().err


def test_following_reads_across_a_rotation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "daemon.log"
    path.write_bytes(b"old 1\n")
    f = open(path, "rb")  # noqa: SIM115
    f.read()
    sleeps = 0

    def fake_sleep(_: float) -> None:
        nonlocal sleeps
        sleeps += 1
        if sleeps == 1:
            with open(path, "ab") as g:
                g.write(b"old 2\npart")
        elif sleeps == 2:
            with open(path, "ab") as g:
                g.write(b"ial\n")
            os.rename(path, tmp_path / "daemon.log.1")
            path.write_bytes(b"new 1\n")
        elif sleeps > 4:
            raise KeyboardInterrupt

    import combined_models.client.cli as mod

    orig = mod.time.sleep
    mod.time.sleep = fake_sleep  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            mod._follow(path, f, False)
    finally:
        mod.time.sleep = orig
        f.close()
    assert capsys.readouterr().out == "old 2\npartial\nnew 1\n"


@pytest.mark.parametrize("backups", [2, 1])
def test_following_misses_no_file_when_two_rotations_come_between_looks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, backups: int
) -> None:
    """With two backups the held file is found as `.2`; with one it was deleted: every backup is newer."""
    path = tmp_path / "daemon.log"
    path.write_bytes(b"a\n")
    f = open(path, "rb")  # noqa: SIM115
    f.read()
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=1, backupCount=backups)
    sleeps = 0

    def fake_sleep(_: float) -> None:
        nonlocal sleeps
        sleeps += 1
        if sleeps == 1:  # two records, each past max_bytes: two rollovers while nobody looks
            for msg in ("b", "c"):
                handler.emit(logging.makeLogRecord({"msg": msg}))
        elif sleeps > 3:
            raise KeyboardInterrupt

    import combined_models.client.cli as mod

    monkeypatch.setattr(mod.time, "sleep", fake_sleep)
    try:
        with pytest.raises(KeyboardInterrupt):
            mod._follow(path, f, False)
    finally:
        handler.close()
        f.close()
    # "b" went to a file the follower never had open, now `daemon.log.1`.
    assert capsys.readouterr().out == "b\nc\n"


class StalledDisk(logging.Handler):
    """A target whose writes block until released, as on a network home that stopped answering."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.unblock = threading.Event()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entered.set()
        self.unblock.wait(timeout=30)
        self.lines.append(record.getMessage())


def test_a_stalled_disk_neither_blocks_the_caller_nor_grows_the_queue() -> None:
    disk = StalledDisk()
    handler = BackgroundHandler(disk, limit=5)
    logger = logging.Logger("stalled")  # not the root: nothing else sees these
    logger.addHandler(handler)
    try:
        logger.info("line 0")
        assert disk.entered.wait(timeout=10)  # the writer is stuck in the disk with line 0
        for i in range(1, 50):  # each would block if writes were synchronous
            logger.info("line %d", i)
        assert handler.dropped == 44  # five wait; the rest are dropped and counted
    finally:
        disk.unblock.set()
    handler.flush()
    note = "44 log records dropped: the log could not be written fast enough"
    assert disk.lines == ["line 0", note, *(f"line {i}" for i in range(1, 6))]
    handler.close()


def test_closing_writes_what_waits_and_a_message_is_merged_when_logged() -> None:
    disk = StalledDisk()
    disk.unblock.set()
    handler = BackgroundHandler(disk)
    logger = logging.Logger("closing")
    logger.addHandler(handler)
    args = ["first"]
    logger.info("value %s", args)
    args[0] = "changed"  # after the call: the line keeps what was logged
    for i in range(100):
        logger.info("line %d", i)
    handler.close()
    assert disk.lines[0] == "value ['first']"
    assert len(disk.lines) == 101


async def test_a_provider_back_to_ready_gets_a_health_line(
    short_dir: Path, caplog: pytest.LogCaptureFixture, clock: trio.testing.MockClock
) -> None:
    caplog.set_level(logging.INFO)
    async with open_stack(short_dir) as st:
        st.sims["first"].push_fault(Fault(kind="status", status=503))
        with trio.fail_after(10):
            assert done_of(await st.ask()).provider == "second"
        clock.jump(60)  # past the cooldown: the next request probes first, and it answers
        with trio.fail_after(10):
            assert done_of(await st.ask()).provider == "first"
    health = lines_of(caplog, "health")
    assert [(h["provider"], h["state"], h["reason"]) for h in health] == [
        ("first", "cooldown", "overloaded"),
        ("first", "ready", "recovered"),
    ]
