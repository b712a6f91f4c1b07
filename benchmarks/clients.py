"""Real coding CLIs against the front door, offline: OpenCode, Claude Code and Codex CLI.

Installs pinned versions from npm into a cache folder (once), starts simulated
providers of other wire formats than the clients speak (the first member of each
combined model cuts every answer mid-way, so each answer needs a failover) and a
daemon, runs each client non-interactively with one prompt, and prints one line per
client: whether it printed the whole answer. Exits 1 when one did not.

Not part of the tests: it downloads the clients. Usage: `scripts/clients [--only NAME]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._procs import MODEL, TEXT, Daemon, _env, _stop, short_socket_path, simulator, start_daemon

# npm package and version of each client, pinned: their behaviour is what is tested.
PINS = {
    "opencode": ("opencode-ai", "1.18.33"),
    "claude-code": ("@anthropic-ai/claude-code", "2.1.197"),
    "codex": ("@openai/codex", "0.171.0"),
}
BINARIES = {"opencode": "opencode", "claude-code": "claude", "codex": "codex"}
PROMPT = "Reply with the answer you have for this request, exactly as it is."
CUT = json.dumps({"kind": "reset_after", "after_chunks": 6, "times": -1})  # every answer, mid-way
RUN_TIMEOUT = 240.0


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "combined-models" / "clients"


def install(cache: Path) -> Path:
    """The pinned clients in `cache` (installed from npm the first time); returns their bin dir."""
    stamp = cache / "installed.json"
    wanted = {pkg: version for pkg, version in PINS.values()}
    if not (stamp.exists() and json.loads(stamp.read_text()) == wanted):
        if shutil.which("npm") is None:
            raise SystemExit("scripts/clients needs node and npm on PATH")
        cache.mkdir(parents=True, exist_ok=True)
        specs = [f"{pkg}@{version}" for pkg, version in wanted.items()]
        print(f"installing {', '.join(specs)} into {cache} ...", flush=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", str(cache), *specs],
            check=True,
        )
        stamp.write_text(json.dumps(wanted))
    return cache / "node_modules" / ".bin"


@dataclass
class Stack:
    daemon: Daemon
    sims: dict[str, str]  # provider id -> base URL

    @property
    def front_door(self) -> str:
        return f"http://{self.daemon.http}"

    def sim_stats(self, provider: str) -> dict[str, object]:
        origin = self.sims[provider].split("/v1")[0].rstrip("/")
        with urllib.request.urlopen(f"{origin}/_sim/stats", timeout=5) as r:  # loopback only
            stats: dict[str, object] = json.load(r)
        return stats


@contextlib.contextmanager
def stack(root: Path) -> Iterator[Stack]:
    """Three simulated providers and a daemon serving two combined models.

    `cc-model` (for Claude Code, which speaks Anthropic): an OpenAI-format member that
    cuts every answer, then an Anthropic one (which also counts tokens).
    `oa-model` (for OpenCode and Codex, which speak OpenAI): a Gemini-format member
    that cuts every answer, then the Anthropic one.
    """
    with contextlib.ExitStack() as stack_:
        sims = {
            "cutoai": stack_.enter_context(simulator(root, dialect="openai", faults=[CUT])),
            "cutgem": stack_.enter_context(simulator(root, dialect="gemini", faults=[CUT])),
            "simant": stack_.enter_context(simulator(root, dialect="anthropic")),
        }
        apis = {"cutoai": "openai", "cutgem": "gemini", "simant": "anthropic"}
        lines = ['provider_priority = ["cutoai", "cutgem", "simant"]']
        for pid, url in sims.items():
            lines += [
                f"[providers.{pid}]",
                f'api = "{apis[pid]}"',
                f'base_url = "{url}"',
                'api_key = "sk-sim"',
            ]
            lines += [f'models = ["{MODEL}"]']
        lines += [
            '[combined."cc-model"]',
            f'members = ["cutoai/{MODEL}", "simant/{MODEL}"]',
            '[combined."oa-model"]',
            f'members = ["cutgem/{MODEL}", "simant/{MODEL}"]',
            "[http]",
            'listen = "127.0.0.1:0"',
        ]
        config = root / "config.toml"
        config.write_text("\n".join(lines) + "\n")
        sock = stack_.enter_context(short_socket_path())
        daemon = start_daemon(root, config, sock, root / "daemon.log")
        stack_.callback(_stop, daemon.proc)
        yield Stack(daemon, sims)


def client_env(root: Path, cache: Path) -> dict[str, str]:
    env = _env(root)
    env["PATH"] = f"{cache / 'node_modules' / '.bin'}{os.pathsep}{env.get('PATH', '')}"
    for var in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
        env.pop(var, None)
    return env


def run_claude_code(st: Stack, bin_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The prompt, then `/context`, which counts the context's parts with `count_tokens`."""
    env = {
        **env,
        "ANTHROPIC_BASE_URL": st.front_door,
        "ANTHROPIC_AUTH_TOKEN": st.daemon.token,
        "ANTHROPIC_MODEL": "cc-model",
        "ANTHROPIC_SMALL_FAST_MODEL": "cc-model",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
    }
    answer = _run([str(bin_dir / "claude"), "-p", PROMPT], env)
    context = _run([str(bin_dir / "claude"), "-p", "/context"], env)
    if context.returncode != 0:
        return subprocess.CompletedProcess(context.args, context.returncode, answer.stdout, context.stderr)
    return answer


def run_opencode(
    st: Stack, bin_dir: Path, env: dict[str, str], root: Path, cache: Path
) -> subprocess.CompletedProcess[str]:
    project = root / "opencode-project"
    project.mkdir(exist_ok=True)
    provider = {
        "npm": "@ai-sdk/openai-compatible",
        "name": "Combined models",
        "options": {"baseURL": f"{st.front_door}/v1", "apiKey": st.daemon.token},
        "models": {"oa-model": {"name": "oa-model"}},
    }
    (project / "opencode.json").write_text(json.dumps({"provider": {"combined-models": provider}}))
    # OpenCode installs its provider package on first use: keep it with the clients, so later runs are offline.
    env = {**env, "XDG_CACHE_HOME": str(cache / "opencode-cache"), "OPENCODE_DISABLE_AUTOUPDATE": "1"}
    env["OPENCODE_DISABLE_MODELS_FETCH"] = "1"
    return _run(
        [str(bin_dir / "opencode"), "run", "-m", "combined-models/oa-model", PROMPT], env, cwd=project
    )


def run_codex(st: Stack, bin_dir: Path, env: dict[str, str], root: Path) -> subprocess.CompletedProcess[str]:
    home = root / "codex-home"
    home.mkdir(exist_ok=True)
    provider = f'{{ name = "combined-models", base_url = "{st.front_door}/v1", env_key = "CM_TOKEN", wire_api = "responses" }}'
    cmd = [str(bin_dir / "codex"), "exec", "--skip-git-repo-check", "-m", "oa-model"]
    cmd += ["-c", 'model_provider="combined-models"', "-c", f"model_providers.combined-models={provider}"]
    cmd += [PROMPT]
    return _run(cmd, {**env, "CODEX_HOME": str(home), "CM_TOKEN": st.daemon.token}, cwd=root)


def _run(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    if cwd is not None:
        env = {**env, "PWD": str(cwd)}  # node tools read their folder from PWD, not from the process
    try:
        return subprocess.run(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
        return subprocess.CompletedProcess(cmd, -1, out, f"timed out after {RUN_TIMEOUT:.0f}s")


def _int(stats: dict[str, object], key: str) -> int:
    value = stats.get(key, 0)
    return value if isinstance(value, int) else 0


def counted(stats: dict[str, object]) -> int:
    """Token-count requests a simulator answered."""
    routes = stats.get("endpoint_requests")
    return (
        sum(n for r, n in routes.items() if "count" in r and isinstance(n, int))
        if isinstance(routes, dict)
        else 0
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/clients", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", choices=sorted(PINS), action="append", help="run only this client (repeatable)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's folder (logs, client homes) and say where"
    )
    args = parser.parse_args(argv)
    cache = cache_dir()
    bin_dir = install(cache)
    failed = 0
    root = Path(tempfile.mkdtemp(prefix="cm-clients-"))
    if args.keep:
        print(f"run folder: {root}", flush=True)
    try:
        with stack(root) as st:
            env = client_env(root, cache)
            for name in args.only or sorted(PINS):
                before = {p: st.sim_stats(p) for p in st.sims}
                if name == "claude-code":
                    result = run_claude_code(st, bin_dir, env)
                elif name == "opencode":
                    result = run_opencode(st, bin_dir, env, root, cache)
                else:
                    result = run_codex(st, bin_dir, env, root)
                after = {p: st.sim_stats(p) for p in st.sims}
                cut = "cutoai" if name == "claude-code" else "cutgem"
                cuts = _int(after[cut], "chat_requests") - _int(before[cut], "chat_requests")
                served = _int(after["simant"], "completed") - _int(before["simant"], "completed")
                counts = counted(after["simant"]) - counted(before["simant"])
                whole = TEXT in " ".join(result.stdout.split())
                ok = whole and result.returncode == 0 and cuts > 0 and served > 0
                if name == "claude-code":
                    ok = ok and counts > 0  # its counts came from the member, never made up
                failed += not ok
                version = PINS[name][1]
                detail = f"{cuts} answers cut mid-way, {served} finished by the next member"
                if name == "claude-code":
                    detail += f", {counts} token counts from the Anthropic member"
                verdict = "full answer" if ok else "FAILED"
                print(f"{name} {version}: {verdict} ({detail})", flush=True)
                if not ok:
                    tail = (result.stdout[-600:] + "\n" + result.stderr[-600:]).strip()
                    print("  exit", result.returncode, "\n  " + tail.replace("\n", "\n  "), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
