"""CPU the simulated engine and the benchmark client spend per streamed token on the wall clock.

    python benchmarks/sim_token_cpu.py [--concurrency 32] [--tokens 400] [--rounds 3]
                                       [--client loadgen|plain] [--json]

Why: in wall-clock mode the engine's streaming is what a busy 2-core host starves first (lag),
and what several engines on one worker compete for; engine and client together are what the
admission rule's TOKENS_PER_CORE_S (workers/sim_admission.py) weighs an engine's token rate
against. Method: one engine process (`python -m app.tools.simengine`, llama-3-8b on an H100,
time scale 1, no start-up wait) on 127.0.0.1; per round, `--concurrency` streaming
/v1/completions requests of `--tokens` tokens each, sent at once with `include_usage` (so every
iteration emits one token to every request, the shape a benchmark level has). The client is
the experiments' own (`--client loadgen`: app.tools.loadgen.run_benchmark, one closed-loop
level of D(256,tokens) with its timing and metrics), or a bare aiohttp reader (`plain`: the
engine's cost alone, the client's as low as it goes). The engine's CPU time (utime + stime from
/proc/<pid>/stat, 10 ms ticks) and this process's (the client's) are read before and after the
round. Reported: engine and client CPU microseconds per streamed token and the streamed tokens
one core carries through both (the median round), the rounds' wall seconds and, for `plain`,
the writes the client received per token (reads of the response body, an upper bound of the
server's writes when the client keeps up).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from app.tools.loadgen import Target, run_benchmark  # noqa: E402 - imported before any round is timed

TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15)


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"engine exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("engine did not become healthy")


async def _one(session, url: str, tokens: int) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Stream one request; returns (content chunks, body reads)."""
    body = {"model": "sim", "prompt": "x" * 256, "max_tokens": tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    chunks = reads = 0
    async with session.post(url + "/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for data in resp.content.iter_any():
            reads += 1
            chunks += data.count(b'"text": ')
    return chunks, reads


async def _plain(url: str, concurrency: int, tokens: int) -> tuple[int, int | None]:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        done = await asyncio.gather(*(_one(session, url, tokens) for _ in range(concurrency)))
    return sum(c for c, _ in done), sum(r for _, r in done)


def _round(client: str, url: str, concurrency: int, tokens: int) -> tuple[int, int | None]:
    """One round of streaming through `client`; returns (tokens received, body reads or None)."""
    if client == "plain":
        return asyncio.run(_plain(url, concurrency, tokens))
    (level,) = run_benchmark(Target(url, "sim", f"D(256,{tokens})", max_requests=concurrency), [concurrency])
    if level["completed"] != concurrency:
        raise RuntimeError(f"{level['errors']} requests failed: {level['error_kinds']}")
    return level["total_output_tokens"], None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client", choices=("loadgen", "plain"), default="loadgen")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.tools.simengine", "--model", "llama-3-8b", "--port", str(port),
         "--sim-time-scale", "1", "--sim-startup-seconds", "0"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    rounds = []
    try:
        _wait_healthy(url, proc)
        for _ in range(args.rounds):
            cpu0, client0, t0 = _cpu_s(proc.pid), time.process_time(), time.monotonic()
            chunks, reads = _round(args.client, url, args.concurrency, args.tokens)
            cpu1, client1, t1 = _cpu_s(proc.pid), time.process_time(), time.monotonic()
            expected = args.concurrency * args.tokens
            if chunks != expected:
                raise RuntimeError(f"streamed {chunks} tokens, expected {expected}")
            engine_us, client_us = (cpu1 - cpu0) / chunks * 1e6, (client1 - client0) / chunks * 1e6
            rounds.append({"cpu_s": round(cpu1 - cpu0, 3), "client_cpu_s": round(client1 - client0, 3),
                           "wall_s": round(t1 - t0, 3), "us_per_token": round(engine_us, 1),
                           "client_us_per_token": round(client_us, 1),
                           "tokens_per_core_s": round(1e6 / (engine_us + client_us)),
                           "reads_per_token": round(reads / chunks, 3) if reads is not None else None})
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    out = {"client": args.client, "concurrency": args.concurrency, "tokens_per_request": args.tokens,
           "rounds": rounds, "us_per_token_median": round(statistics.median(r["us_per_token"] for r in rounds), 1),
           "client_us_per_token_median": round(statistics.median(r["client_us_per_token"] for r in rounds), 1),
           "tokens_per_core_s_median": round(statistics.median(r["tokens_per_core_s"] for r in rounds)),
           "load_average": os.getloadavg()}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for r in rounds:
            reads = f", {r['reads_per_token']} client reads/token" if r["reads_per_token"] is not None else ""
            print(f"round: engine {r['cpu_s']} CPU-s, client {r['client_cpu_s']} CPU-s over {r['wall_s']} s wall: "
                  f"{r['us_per_token']} + {r['client_us_per_token']} us/token, {r['tokens_per_core_s']} tokens "
                  f"per core-second{reads}")
        print(f"per streamed token (median of {len(rounds)}, {args.client} client, concurrency {args.concurrency}, "
              f"{args.tokens} tokens a request): "
              f"engine {out['us_per_token_median']} us, client {out['client_us_per_token_median']} us, "
              f"{out['tokens_per_core_s_median']} tokens per core-second together "
              f"(load average {out['load_average'][0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
