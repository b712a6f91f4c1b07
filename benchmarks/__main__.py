"""`python -m benchmarks [ttft|failover|load|all]`: the daemon's non-functional targets, measured."""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument(
        "which", nargs="?", default="all", choices=("ttft", "failover", "load", "shared", "all")
    )
    parser.add_argument("--requests", type=int, default=500, help="ttft: measured requests per path")
    parser.add_argument(
        "--samples", type=int, default=400, help="failover: measured samples per failure kind"
    )
    parser.add_argument("--rounds", type=int, default=2, help="load: rounds of 500 concurrent streams")
    parser.add_argument("--facts", type=int, default=200, help="shared: 429s propagated to two other daemons")
    args = parser.parse_args(argv)
    if args.which in ("ttft", "all"):
        from . import ttft

        t = time.perf_counter()
        print(
            ttft.run(requests=args.requests), f"  [{time.perf_counter() - t:.1f} s]\n", sep="\n", flush=True
        )
    if args.which in ("failover", "all"):
        from . import failover

        t = time.perf_counter()
        print(
            failover.run(samples=args.samples),
            f"  [{time.perf_counter() - t:.1f} s]\n",
            sep="\n",
            flush=True,
        )
    if args.which in ("load", "all"):
        from . import load

        t = time.perf_counter()
        print(load.run(rounds=args.rounds), f"  [{time.perf_counter() - t:.1f} s]", sep="\n", flush=True)
    if args.which in ("shared", "all"):
        from . import shared

        t = time.perf_counter()
        print(shared.run(facts=args.facts), f"  [{time.perf_counter() - t:.1f} s]", sep="\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
