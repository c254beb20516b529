"""HTTP load at a fixed concurrency: wrk when it is installed (a C client leaves the 2 cores to the
servers), else a closed loop of aiohttp clients. Either way the same tool measures a route and its
baseline, so their ratio holds."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.load import Run, closed_loop

_WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "errors": %d, "seconds": %f, "p50_us": %d, "p95_us": %d, "p99_us": %d}\\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def load_tool() -> str:
    return "wrk" if shutil.which("wrk") else "aiohttp"


async def http_load(
    name: str, url: str, token: str | None, *, concurrency: int, seconds: float
) -> dict[str, Any]:
    if load_tool() == "wrk":
        return await asyncio.to_thread(_wrk, name, url, token, concurrency, seconds)
    return await _aiohttp(name, url, token, concurrency=concurrency, seconds=seconds)


def _wrk(name: str, url: str, token: str | None, concurrency: int, seconds: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_REPORT)
    headers = ["-H", f"Authorization: Bearer {token}"] if token else []
    done = subprocess.run(
        ["wrk", "-t2", f"-c{concurrency}", f"-d{seconds:.0f}s", "-s", script.name, *headers, url],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed on {url}: {done.stderr.strip() or done.stdout.strip()}")
    Path(script.name).unlink()
    report = orjson.loads(done.stdout.strip().splitlines()[-1])
    return {
        "name": name,
        "concurrency": concurrency,
        "requests": report["requests"],
        "errors": report["errors"],
        "seconds": round(report["seconds"], 3),
        "throughput_per_s": round(report["requests"] / report["seconds"], 1),
        "p50_ms": report["p50_us"] / 1000,
        "p95_ms": report["p95_us"] / 1000,
        "p99_ms": report["p99_us"] / 1000,
    }


async def _aiohttp(
    name: str, url: str, token: str | None, *, concurrency: int, seconds: float
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def get(_caller: int, _n: int) -> bool:
            async with http.get(url) as response:
                await response.read()
                return response.status == 200

        run: Run = await closed_loop(name, get, concurrency=concurrency, seconds=seconds)
    return run.summary()
