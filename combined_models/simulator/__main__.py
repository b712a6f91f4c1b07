"""`python -m combined_models.simulator`: run one simulated provider until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import inspect
import json
import signal
import sys

import msgspec
import trio

from .answer import DEFAULT_TEXT
from .dialects import DIALECTS
from .faults import Fault
from .server import Simulator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m combined_models.simulator",
        description=(
            "Serve a fake LLM provider on loopback. Prints one JSON line "
            '{"base_url": ..., "port": ...} once listening, then serves until SIGINT or SIGTERM.'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            'Faults, given with --fault or sent to POST /_sim/faults as {"push": [...]} or\n'
            '{"clear": true}, are JSON objects such as {"kind": "reset_after", "after_chunks": 3}.\n'
            + inspect.cleandoc(Fault.__doc__ or "")
            + "\n\nGET /_sim/stats and GET /_sim/requests report what happened."
        ),
    )
    parser.add_argument("--dialect", default="openai", choices=sorted(DIALECTS), help="wire dialect to speak")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default)")
    parser.add_argument(
        "--models", default="sim-model", help="comma-separated model ids it serves (default: %(default)s)"
    )
    parser.add_argument(
        "--text", default=DEFAULT_TEXT, help="the answer to every request, streamed word by word"
    )
    parser.add_argument(
        "--api-key",
        help="require this key (as the dialect sends it; copilot: the GitHub OAuth token); any key when omitted",
    )
    parser.add_argument(
        "--thinking",
        default="",
        help="start every answer with this thinking text, as the dialect expresses it",
    )
    parser.add_argument(
        "--aws-secret", help="bedrock: verify SigV4 signatures with this secret key (else only their form)"
    )
    parser.add_argument(
        "--copilot-token-ttl",
        type=float,
        default=1500.0,
        help="copilot: seconds a Copilot token stays valid (default: %(default)s)",
    )
    parser.add_argument(
        "--copilot-poll-interval",
        type=int,
        default=5,
        help="copilot: the device flow's polling interval in seconds (default: %(default)s)",
    )
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed pieces")
    parser.add_argument(
        "--prefill",
        choices=("accept", "ignore"),
        default="accept",
        help="a trailing assistant message is continued (accept) or ignored (ignore)",
    )
    parser.add_argument(
        "--echo-words",
        type=int,
        default=0,
        help="when continuing a cut answer, first repeat its last N words (to test echo stripping)",
    )
    parser.add_argument("--name", default="sim", help="name used in response ids")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="JSON",
        help="queue a fault at start (repeatable, applied in order)",
    )
    return parser


async def _serve(sim: Simulator) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            print(json.dumps({"base_url": sim.base_url, "port": sim.port}), flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sim = Simulator(
        dialect=args.dialect,
        models=[m.strip() for m in args.models.split(",") if m.strip()],
        text=args.text,
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        chunk_delay=args.chunk_delay,
        prefill=args.prefill,
        echo_words=args.echo_words,
        name=args.name,
        thinking=args.thinking,
        aws_secret=args.aws_secret,
        copilot_token_ttl=args.copilot_token_ttl,
        copilot_poll_interval=args.copilot_poll_interval,
    )
    for raw in args.fault:
        try:
            sim.push_fault(msgspec.json.decode(raw, type=Fault))
        except msgspec.DecodeError as e:
            print(f"error: --fault {raw!r}: {e}", file=sys.stderr)
            return 2
    trio.run(_serve, sim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
