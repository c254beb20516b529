"""`python -m bench {commands,reads,scale,relay,all}`: each scenario against its baselines measured in the
same run, printed as a table and written as JSON (`--out`, default `bench/results/`).

Postgres and NATS: `CAREPLAN_BENCH_DATABASE_URL` (a superuser URL) and `CAREPLAN_BENCH_NATS_URL`, or
embedded servers from the venv when unset, as the tests do."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench.commands import run_commands, run_relay_lag
from bench.http_load import load_tool
from bench.infra import ROOT, Servers, servers
from bench.programs import run_programs
from bench.reads import run_reads
from bench.report import render
from bench.scale import run_scale
from bench.scopes import run_scopes
from bench.topologies import run_topologies
from bench.tracing import run_tracing
from bench.worst_search import run_worst_search

SCENARIOS = (
    "commands",
    "reads",
    "scale",
    "relay",
    "worst-search",
    "topologies",
    "programs",
    "scopes",
    "tracing",
)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenario", choices=(*SCENARIOS, "all"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--concurrency", type=int, default=64, help="commands in flight")
    parser.add_argument("--commands", type=int, default=3000, help="commands per measured phase")
    parser.add_argument(
        "--sequential", type=int, default=300, help="careplan.create commands sent one at a time (commands)"
    )
    parser.add_argument("--workers", type=int, default=8, help="CAREPLAN_WORKERS of each service process")
    parser.add_argument(
        "--replicas",
        type=int,
        default=os.cpu_count() or 1,
        help="careplan serve processes on the command consumer (default: one per core)",
    )
    parser.add_argument("--read-seconds", type=float, default=8.0, help="seconds per read route")
    parser.add_argument(
        "--sizes", default="10000,100000,1000000", help="care plans for the scale scenario, comma separated"
    )
    parser.add_argument("--relay-seconds", type=float, default=20.0)
    args = parser.parse_args()
    chosen = SCENARIOS if args.scenario == "all" else (args.scenario,)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with servers() as running:
        results = asyncio.run(_run(running, chosen, args))
    results["machine"] = _machine(running)
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(render(results))
    name = "all" if args.scenario == "all" else args.scenario
    (args.out / f"{name}.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"\nwritten: {args.out / f'{name}.json'} ({results['seconds']} s)")


async def _run(running: Servers, chosen: tuple[str, ...], args: argparse.Namespace) -> dict[str, Any]:
    plans: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "commands": lambda: run_commands(
            running,
            concurrency=args.concurrency,
            total=args.commands,
            workers=args.workers,
            replicas=args.replicas,
            sequential=args.sequential,
        ),
        "reads": lambda: run_reads(running, concurrency=32, seconds=args.read_seconds),
        "scale": lambda: run_scale(running, sizes=[int(s) for s in args.sizes.split(",")]),
        "relay": lambda: run_relay_lag(
            running,
            concurrency=args.concurrency,
            seconds=args.relay_seconds,
            workers=args.workers,
            replicas=args.replicas,
        ),
        "worst-search": lambda: run_worst_search(running),
        "programs": lambda: run_programs(
            running,
            concurrency=16,
            total=min(args.commands, 600),
            workers=args.workers,
            sequential=min(args.sequential, 100),
        ),
        "tracing": lambda: run_tracing(
            running, concurrency=32, total=min(args.commands, 1500), workers=args.workers
        ),
        "scopes": lambda: run_scopes(running, concurrency=32, seconds=args.read_seconds),
        "topologies": lambda: run_topologies(
            running,
            concurrency=args.concurrency,
            total=args.commands,
            workers=args.workers,
            read_seconds=args.read_seconds,
        ),
    }
    results: dict[str, Any] = {"scenarios": {}}
    for scenario in chosen:
        began = time.perf_counter()
        results["scenarios"][scenario] = await plans[scenario]()
        results["scenarios"][scenario]["seconds"] = round(time.perf_counter() - began, 1)
    return results


def _machine(running: Servers) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "servers": running.where,
        "http_load_tool": load_tool(),
    }


if __name__ == "__main__":
    main()
