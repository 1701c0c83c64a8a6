"""The benchmark client's own ceiling: how much load it can generate and still time it right.

Method
------
* A zero-delay OpenAI-compatible server (``benchmarks/zero_delay_server.py``, aiohttp) runs as
  its own process on 127.0.0.1 and answers every streaming ``/v1/completions`` request at once
  with ``max_tokens`` SSE chunks of one token each, the usage chunk and ``[DONE]``. The true
  time to first token is therefore ~0, and the median TTFT a client reports *is* its error:
  client work + loopback + the server's own handling. The server also reports its share
  (request body read -> first chunk written, "srv TTFT"), how long it waited for the client
  to finish sending a request ("body wait") and how busy its core was ("srv CPU"), so a
  level where the server, not the client, was the limit would show srv CPU near 100 %. The
  client's core use ("cli CPU") is measured too: our process's CPU time per level, and for
  guidellm all processes of its session, sampled from /proc every 0.5 s. Pinning keeps
  other processes off neither core, so the CPU the rest of the machine used during each
  level is reported as well ("other", from /proc/stat, steal included) and a level where
  it reached 10 % of a core is marked as noisy. A busy host under a VM can slow a core with
  no trace in /proc, so each level also carries a speed probe: microseconds per
  ``json.loads`` of one SSE chunk on the client core ("probe us"); levels and runs are
  comparable only where their probes are alike.
* On a machine with two or more cores the client (this process, and every process it starts)
  is pinned to one core and the server to another with ``os.sched_setaffinity``, so each
  side has exactly one core and neither steals the other's; where pinning is impossible the
  report says so.
* Closed loop: for each concurrency level N, N workers each send one streaming request at a
  time, back-to-back, until ``--requests`` were sent. Per level the report gives the request
  rate achieved (completed / level duration), streamed output tokens per second and the
  median TTFT. Two shapes: D(128,128) (token streaming) and D(128,1) (pure request rate).
* The ceiling of a client for a shape = the highest request rate and the highest tokens per
  second among the levels whose median TTFT is under ``--ttft-limit-ms`` (1 ms). The peak
  (any TTFT) is shown beside it.
* Our client is ``app.tools.loadgen.run_benchmark`` (one call per level, so its CPU time per
  level is measured too). The established client is guidellm (the first of guidellm,
  genai-bench, aiperf that installs and runs offline here): run as a CLI with
  ``--profile kind=concurrent`` over the same levels, ``--constraint max_requests``, a local
  JSONL dataset holding exactly the prompts our client sends (so no tokenizer and no
  Hugging Face download is needed), ``request_format=/v1/completions``, HTTP/1.1, and
  ``GUIDELLM__MAX_WORKER_PROCESSES=1`` (``--guidellm-workers``): on one core its default of
  one worker process per stream (up to 10) is slower and noisier. Its JSON report gives
  ``requests_per_second``, ``output_tokens_per_second`` (successful, mean = total / duration)
  and ``time_to_first_token_ms`` (successful, median), the same definitions as ours.
  guidellm is found as ``--guidellm PATH``, ``$GUIDELLM``, ``guidellm`` on PATH or
  ``/opt/guidellm-venv/bin/guidellm``; it is best kept in its own virtual environment,
  since it pulls torch and transformers::

      python -m venv /opt/guidellm-venv && /opt/guidellm-venv/bin/pip install guidellm

  Without it the script still measures ours and says why the comparison is missing.

    python benchmarks/client_ceiling.py [--quick] [--json] [--repeats N] [--requests N]
                                        [--levels 1,2,4] [--skip-established] [--guidellm PATH]

``--quick`` (4 levels, 300 requests a level) takes about 1.5 minutes with guidellm; the full
run (9 levels, 2000 requests a level) 7 to 10 minutes per repeat. On a shared VM the figures
move by up to 2x from run to run with the host's load (see "probe us"); the gap between the
clients, measured back to back, does not. ``--repeats N`` runs the whole sweep N times and
shows, per level, the least disturbed repeat (highest request rate); the ceilings are taken
over all repeats.
Everything runs on loopback, every loop is bounded by a request count and every subprocess
by a timeout; the server is stopped by its PID at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.tools.loadgen import Target, run_benchmark  # noqa: E402
from app.tools.loadgen.scenarios import make_prompt, parse_scenario  # noqa: E402

MODEL = "zero-delay"
SHAPES = ("D(128,128)", "D(128,1)")
FULL_LEVELS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUICK_LEVELS = (1, 2, 8, 64)
GUIDELLM_FALLBACK = "/opt/guidellm-venv/bin/guidellm"
OTHER_FLAG = 0.10  # other processes using >= 10 % of a core during a level: a noisy level
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROBE_CHUNK = (b'{"id":"cmpl-zd","object":"text_completion","created":0,"model":"zero-delay",'
               b'"choices":[{"index":0,"text":" a","logprobs":null,"finish_reason":null}]}')


def speed_probe(n: int = 1000) -> float:
    """Microseconds of this thread's CPU time per ``json.loads`` of one SSE chunk (median of
    5 x n) on the client's core: a fixed slice of a client's per-token work. Thread CPU time,
    so processes sharing the core (guidellm's, while it runs) do not count; it still rises
    when the host under the VM runs the core slower or steals from it unreported, which
    /proc does not show. Compare it across levels and runs."""
    times = []
    for _ in range(5):
        t = time.thread_time()
        for _ in range(n):
            json.loads(PROBE_CHUNK)
        times.append((time.thread_time() - t) / n * 1e6)
    return sorted(times)[2]


# ---------------------------------------------------------------- CPU pinning and the server

def plan_cores() -> tuple[int | None, int | None, str]:
    """(client core, server core, sentence for the report)."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None, "not pinned: os.sched_setaffinity is not available on this OS"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None, f"not pinned: only {len(cpus)} core available to this process"
    return cpus[0], cpus[1], (f"client (and its subprocesses) pinned to CPU {cpus[0]}, "
                              f"server to CPU {cpus[1]}, of {len(cpus)} available")


class Server:
    """The zero-delay server as a subprocess; stopped by PID."""

    def __init__(self, cpu: int | None, log: Path) -> None:
        cmd = [sys.executable, str(ROOT / "benchmarks" / "zero_delay_server.py"),
               "--host", "127.0.0.1", "--port", "0", "--model", MODEL]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        with log.open("w") as errf:  # a file, not a pipe: nobody drains stderr during the run
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf, text=True)
        self.affinity = self.proc.stdout.readline().strip().removeprefix("AFFINITY ")
        line = self.proc.stdout.readline()  # "PORT n", printed once listening
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"zero-delay server did not start: {log.read_text()[-2000:]}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def stats(self, since: float, until: float) -> dict:
        url = f"{self.url}/stats?since={since!r}&until={until!r}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.load(resp)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def machine_busy_s() -> float | None:
    """CPU seconds all cores together spent busy so far (user, nice, system, irq, softirq and
    steal, from the first line of /proc/stat); None where there is no /proc."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / TICK


def level_row(client: str, shape: str, concurrency: int, completed: int, errors: int,
              req_s: float | None, tok_s: float | None, ttft_ms: float | None,
              srv: dict, client_cpu: float | None, machine_busy: float | None,
              probe_us: float | None) -> dict:
    """One level's figures; ``other_cpu_util`` = machine busy - client - server, in cores:
    what processes outside this benchmark (or the hypervisor, as steal) took meanwhile."""
    srv_cpu = srv.get("server_cpu_util")
    other = (None if None in (machine_busy, client_cpu, srv_cpu)
             else max(0.0, machine_busy - client_cpu - srv_cpu))
    return {
        "client": client, "scenario": shape, "concurrency": concurrency,
        "completed": completed, "errors": errors,
        "request_throughput": req_s, "output_throughput": tok_s, "median_ttft_ms": ttft_ms,
        "server_median_ttft_ms": srv.get("median_server_ttft_ms"),
        "server_median_body_wait_ms": srv.get("median_body_wait_ms"),
        "server_cpu_util": srv_cpu, "client_cpu_util": client_cpu, "other_cpu_util": other,
        "speed_probe_us": probe_us,
    }


# ---------------------------------------------------------------- our client

def run_ours(server: Server, shape: str, levels: list[int], requests: int) -> list[dict]:
    rows = []
    for level in levels:
        probe0 = speed_probe()
        t0, c0, b0 = time.time(), time.process_time(), machine_busy_s()
        (r,) = run_benchmark(Target(server.url, MODEL, shape, requests, None, request_timeout_s=60), [level])
        t1, c1, b1 = time.time(), time.process_time(), machine_busy_s()
        busy = None if b0 is None or b1 is None else (b1 - b0) / (t1 - t0)
        probe = (probe0 + speed_probe()) / 2
        rows.append(level_row("ours", shape, level, r["completed"], r["errors"],
                              r["request_throughput"], r["output_throughput"],
                              r["median_ttft_ms"], server.stats(t0, t1), (c1 - c0) / (t1 - t0),
                              busy, probe))
        print_progress(rows[-1])
    return rows


# ---------------------------------------------------------------- guidellm

class SessionCpuSampler(threading.Thread):
    """Every 0.5 s, the CPU seconds (user + system) of all live processes of one session
    (the guidellm run started with ``start_new_session``) and of the whole machine, read from
    /proc (Linux only); every 2 s, ``speed_probe`` (about 5 ms of this core's time)."""

    def __init__(self, sid: int, interval_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.sid, self.interval_s = sid, interval_s
        # (wall time, this session's CPU s, the machine's busy CPU s, this process's CPU s)
        self.samples: list[tuple[float, float, float, float]] = []
        self.probes: list[tuple[float, float]] = []
        self.done = threading.Event()

    def cpu_s(self) -> float:
        total = 0
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == self.sid:  # session; then utime, stime at 11, 12
                total += int(fields[11]) + int(fields[12])
        return total / TICK

    def run(self) -> None:
        if not os.path.isdir("/proc"):
            return
        k = 0
        while not self.done.wait(self.interval_s):
            self.samples.append((time.time(), self.cpu_s(), machine_busy_s() or 0.0,
                                 time.process_time()))
            k += 1
            if k % 4 == 0:
                self.probes.append((time.time(), speed_probe()))

    def probe(self, since: float, until: float) -> float | None:
        inside = sorted(p for t, p in self.probes if since <= t <= until)
        return inside[len(inside) // 2] if inside else None

    def util(self, since: float, until: float, which: int = 1) -> float | None:
        """CPU seconds per second in the window: which=1 the session, 2 the machine less
        this (sampling) process."""
        inside = [s for s in self.samples if since <= s[0] <= until]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        a, b = inside[0], inside[-1]
        used = b[which] - a[which] if which == 1 else (b[2] - a[2]) - (b[3] - a[3])
        return used / (b[0] - a[0])


def find_guidellm(explicit: str | None) -> str | None:
    """``explicit`` alone when given, else $GUIDELLM, PATH, then GUIDELLM_FALLBACK."""
    cands = [explicit] if explicit else [os.environ.get("GUIDELLM"), shutil.which("guidellm"),
                                         GUIDELLM_FALLBACK]
    for cand in cands:
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def guidellm_version(exe: str) -> str:
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
        return out.stdout.strip().split()[-1] if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "unknown"


def write_dataset(path: Path, shape: str, n: int, seed: int = 0) -> None:
    """The exact requests ``run_level`` sends for this shape and seed (prompt, lengths)."""
    sc = parse_scenario(shape)
    with path.open("w") as f:
        for i in range(n):
            rng = random.Random(seed * 1_000_003 + i)  # as app.tools.loadgen does for request i
            n_in, n_out = sc.sample(rng)
            f.write(json.dumps({"prompt": make_prompt(n_in, rng), "prompt_tokens_count": n_in,
                                "output_tokens_count": n_out}) + "\n")


def run_guidellm(exe: str, server: Server, shape: str, levels: list[int], requests: int,
                 workers: int, timeout_s: float, workdir: Path) -> list[dict]:
    tag = shape.replace("(", "_").replace(",", "_").replace(")", "")
    data, out, log = workdir / f"{tag}.jsonl", workdir / f"{tag}.json", workdir / f"{tag}.log"
    write_dataset(data, shape, requests)
    cmd = [exe, "run",
           "--backend", f"kind=openai_http,target={server.url},model={MODEL},"
                        "request_format=/v1/completions,http2=false",
           "--profile", f"kind=concurrent,streams={levels[0]}",
           "--override", "profile.streams", ",".join(map(str, levels)),
           "--constraint", f"kind=max_requests,count={requests}",
           "--data", f"kind=json_file,path={data}",
           "--metrics", "kind=generative,sample_size=0",
           "--output", f"kind=json,path={out}",
           "--disable-console"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               GUIDELLM__MAX_WORKER_PROCESSES=str(workers))
    with log.open("w") as logf:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)
        sampler = SessionCpuSampler(proc.pid)
        sampler.start()
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
            proc.wait()
            raise RuntimeError(f"guidellm ran past {timeout_s:.0f} s: {log.read_text()[-1000:]}")
        finally:
            sampler.done.set()
            sampler.join()
    if rc != 0 or not out.exists():
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"guidellm exited {rc}: {tail}")
    rows = []
    for b in json.loads(out.read_text())["benchmarks"]:
        m = b["metrics"]
        rows.append(level_row(
            "guidellm", shape, int(b["config"]["strategy"]["streams"]),
            int(m["request_totals"]["successful"]),
            int(m["request_totals"]["errored"]) + int(m["request_totals"]["incomplete"]),
            m["requests_per_second"]["successful"]["mean"],
            m["output_tokens_per_second"]["successful"]["mean"],
            m["time_to_first_token_ms"]["successful"]["median"],
            server.stats(b["start_time"], b["end_time"]),
            sampler.util(b["start_time"], b["end_time"]),
            sampler.util(b["start_time"], b["end_time"], which=2),
            sampler.probe(b["start_time"], b["end_time"])))
        print_progress(rows[-1])
    return rows


# ---------------------------------------------------------------- ceilings and report

def ceiling(rows: list[dict], limit_ms: float) -> dict:
    ok = [r for r in rows if r["completed"] and r["errors"] == 0]
    under = [r for r in ok if r["median_ttft_ms"] is not None and r["median_ttft_ms"] < limit_ms]
    best_rate = max(under, key=lambda r: r["request_throughput"], default=None)
    best_tok = max(under, key=lambda r: r["output_throughput"], default=None)
    lowest = min(ok, key=lambda r: r["median_ttft_ms"], default=None)
    peak = max(ok, key=lambda r: r["output_throughput"], default=None)
    return {
        "ttft_limit_ms": limit_ms,
        "request_rate": best_rate and best_rate["request_throughput"],
        "request_rate_at_concurrency": best_rate and best_rate["concurrency"],
        "request_rate_repeat": best_rate and best_rate.get("repeat"),
        "output_tokens_per_s": best_tok and best_tok["output_throughput"],
        "output_tokens_per_s_at_concurrency": best_tok and best_tok["concurrency"],
        "output_tokens_per_s_repeat": best_tok and best_tok.get("repeat"),
        "lowest_median_ttft_ms": lowest and lowest["median_ttft_ms"],
        "lowest_median_ttft_at_concurrency": lowest and lowest["concurrency"],
        "peak_request_rate": peak and max(r["request_throughput"] for r in ok),
        "peak_output_tokens_per_s": peak and peak["output_throughput"],
    }


def _f(v, fmt: str = "{:,.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def noisy(r: dict) -> bool:
    return r.get("other_cpu_util") is not None and r["other_cpu_util"] >= OTHER_FLAG


def print_progress(r: dict) -> None:
    print(f"  {r['client']:<8} {r['scenario']:<11} c={r['concurrency']:<4} "
          f"{_f(r['request_throughput'])} req/s  {_f(r['output_throughput'])} tok/s  "
          f"TTFT p50 {_f(r['median_ttft_ms'], '{:.3f}')} ms", file=sys.stderr, flush=True)


LEGEND = """\
TTFT p50: the client's median time to first token = its error (the server adds no delay).
body wait / srv TTFT: medians seen by the server: request headers parsed -> body read (the
  client still sending) / body read -> first chunk written (the server's own work).
srv CPU / cli CPU: CPU time / wall time of the server / the client on its one core (for
  guidellm: all its processes, sampled from /proc every 0.5 s).
other: CPU the rest of the machine used meanwhile (other processes, steal), in % of one
  core; * marks a level where it reached {flag:.0f} %: the machine was not quiet, rerun it.
probe us: speed_probe(), microseconds of thread CPU time per json.loads of one SSE chunk on
  the client core, before and after the level (ours) or every 2 s during it (guidellm); it
  rises when the host runs that core slower, even where /proc shows nothing, so compare
  figures only between levels with similar probes."""


def print_report(result: dict) -> None:
    n = result.get("repeats", 1)
    shown = result.get("best_levels") or result["levels"]
    print(f"\nClient ceiling against a zero-delay server ({result['machine']})")
    print(f"CPU pinning: {result['pinning']}; server: {result['server_affinity']}")
    print(f"{result['requests_per_level']} requests per level, closed loop, /v1/completions "
          "streaming" + (f"; sweep run {n} times, per level the repeat (rep) with the highest "
                         "request rate" if n > 1 else "") + "\n")
    head = (f"{'client':<9}{'scenario':<12}{'conc':>5}{'done':>6}{'err':>4}{'req/s':>9}"
            f"{'tok/s':>9}{'TTFT p50 ms':>13}{'body wait ms':>14}{'srv TTFT ms':>13}"
            f"{'srv CPU':>9}{'cli CPU':>9}{'other':>7}{'probe us':>10}{'rep':>4}")
    print(head)
    print("-" * len(head))

    def pct(v: float | None) -> str:
        return _f(None if v is None else 100 * v, "{:.0f} %")

    for r in shown:
        print(f"{r['client']:<9}{r['scenario']:<12}{r['concurrency']:>5}{r['completed']:>6}"
              f"{r['errors']:>4}{_f(r['request_throughput']):>9}{_f(r['output_throughput']):>9}"
              f"{_f(r['median_ttft_ms'], '{:.3f}'):>13}"
              f"{_f(r['server_median_body_wait_ms'], '{:.3f}'):>14}"
              f"{_f(r['server_median_ttft_ms'], '{:.3f}'):>13}"
              f"{pct(r['server_cpu_util']):>9}{pct(r['client_cpu_util']):>9}"
              f"{pct(r['other_cpu_util']):>7}{_f(r['speed_probe_us'], '{:.2f}'):>10}"
              f"{r.get('repeat', 1):>4}{' *' if noisy(r) else ''}")
    print(LEGEND.format(flag=100 * OTHER_FLAG))

    print(f"\nCeilings (levels with median TTFT < {result['ttft_limit_ms']} ms; "
          "peak = best level at any TTFT" + (", over all repeats" if n > 1 else "") + "):")
    for key, c in result["ceilings"].items():
        client, shape = key.split(" ", 1)
        if c["request_rate"] is None:
            print(f"  {client:<9}{shape:<12} none under the limit (lowest median TTFT "
                  f"{_f(c['lowest_median_ttft_ms'], '{:.3f}')} ms at "
                  f"c={c['lowest_median_ttft_at_concurrency']}); peak "
                  f"{_f(c['peak_request_rate'])} req/s, {_f(c['peak_output_tokens_per_s'])} tok/s")
            continue

        def where(k: str) -> str:
            return (f"c={c[k + '_at_concurrency']}"
                    + (f", rep {c[k + '_repeat']}" if n > 1 else ""))

        print(f"  {client:<9}{shape:<12} {_f(c['request_rate'])} req/s "
              f"({where('request_rate')}), {_f(c['output_tokens_per_s'])} tok/s "
              f"({where('output_tokens_per_s')}); peak {_f(c['peak_request_rate'])} req/s, "
              f"{_f(c['peak_output_tokens_per_s'])} tok/s")
    n_noisy = sum(1 for r in shown if noisy(r))
    if n_noisy:
        print(f"\nWARNING: {n_noisy} of {len(shown)} levels shown ran while other processes used "
              "the machine (marked *); their figures are below this client's ceiling.")
    print(f"\nEstablished client: {result['established']['note']}")


def machine() -> str:
    model = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import aiohttp
    return (f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"aiohttp {aiohttp.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"levels {','.join(map(str, QUICK_LEVELS))}, 300 requests a level")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--levels", help="comma-separated concurrency levels")
    parser.add_argument("--requests", type=int, help="requests per level (default 2000)")
    parser.add_argument("--shapes", default=";".join(SHAPES),
                        help="semicolon-separated scenarios (default 'D(128,128);D(128,1)')")
    parser.add_argument("--ttft-limit-ms", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the whole sweep this many times; the table shows, per level, "
                             "the repeat with the highest request rate (the least disturbed)")
    parser.add_argument("--skip-established", action="store_true", help="measure ours only")
    parser.add_argument("--guidellm", help="path of the guidellm executable")
    parser.add_argument("--guidellm-workers", type=int, default=1,
                        help="GUIDELLM__MAX_WORKER_PROCESSES (default 1: best on one core)")
    args = parser.parse_args()

    levels = ([int(x) for x in args.levels.split(",")] if args.levels
              else list(QUICK_LEVELS if args.quick else FULL_LEVELS))
    requests = args.requests or (300 if args.quick else 2000)
    shapes = [s.strip() for s in args.shapes.split(";") if s.strip()]
    for s in shapes:
        parse_scenario(s)

    client_cpu, server_cpu, pinning = plan_cores()
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})

    established: dict = {"client": None}
    exe = None if args.skip_established else find_guidellm(args.guidellm)
    if args.skip_established:
        established["note"] = "skipped (--skip-established)"
    elif exe is None:
        established["note"] = ("missing: guidellm not found (--guidellm, $GUIDELLM, PATH, "
                               f"{GUIDELLM_FALLBACK}); install it with `python -m venv "
                               "/opt/guidellm-venv && /opt/guidellm-venv/bin/pip install guidellm`")
    else:
        established = {"client": "guidellm", "version": guidellm_version(exe), "path": exe,
                       "worker_processes": args.guidellm_workers,
                       "note": (f"guidellm {guidellm_version(exe)} ({exe}), "
                                f"GUIDELLM__MAX_WORKER_PROCESSES={args.guidellm_workers}, "
                                "local JSONL dataset of the same prompts, no tokenizer")}

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="client-ceiling-") as tmp:
        server = Server(server_cpu, Path(tmp) / "server.log")
        try:
            for repeat in range(1, max(1, args.repeats) + 1):
                for shape in shapes:  # the two clients back to back, on the same machine state
                    new = run_ours(server, shape, levels, requests)
                    if exe is not None:
                        try:
                            timeout = 120 + len(levels) * (30 + requests * 0.05)
                            new += run_guidellm(exe, server, shape, levels, requests,
                                                args.guidellm_workers, timeout, Path(tmp))
                        except RuntimeError as exc:
                            established["note"] += f"; {shape} (repeat {repeat}) failed: {exc}"
                    rows += [dict(r, repeat=repeat) for r in new]
        finally:
            server.stop()

    best: dict[tuple, dict] = {}
    for r in rows:  # per level, the repeat with the highest request rate
        key = (r["client"], r["scenario"], r["concurrency"])
        if key not in best or (r["request_throughput"] or 0) > (best[key]["request_throughput"]
                                                                 or 0):
            best[key] = r
    ceilings = {}
    for client in ("ours", "guidellm"):
        for shape in shapes:
            sel = [r for r in rows if r["client"] == client and r["scenario"] == shape]
            if sel:  # over every repeat: the best level that met the TTFT limit
                ceilings[f"{client} {shape}"] = ceiling(sel, args.ttft_limit_ms)
    result = {
        "machine": machine(),
        "pinning": pinning, "server_affinity": server.affinity,
        "requests_per_level": requests, "concurrency_levels": levels, "scenarios": shapes,
        "ttft_limit_ms": args.ttft_limit_ms, "repeats": max(1, args.repeats),
        "established": established, "levels": rows, "best_levels": list(best.values()),
        "ceilings": ceilings,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)


if __name__ == "__main__":
    main()
