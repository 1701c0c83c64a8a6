"""How fast the search strategies find the best configuration, in experiments and GPU-hours.

Each space is a real task over the simulated engine; every one of its points is evaluated
once with the engine's scheduler and performance model in virtual time
(app.tools.simengine.virtual), so the true optimum is known exhaustively. That ground truth is
cached (under ~/.cache/autotuner-bench, keyed by the task and the simulator's source). Then
each strategy — the project's own classes from app.domain.strategies — runs in a simulated
parallel loop in virtual time: `slots` experiments at once, each taking its engine's start-up
plus its load levels' simulated durations, a refused start costing the weight load before the
failure. The loop asks the strategy for as many points as slots are free, exactly as the
coordinator does, with the history the coordinator would give it.

With early stopping ("+ ES"), each experiment measures the deciding load level first and skips
the others when it cannot beat the best score measured so far or breaks a hard SLO there
(app.domain.stopping; the job does the same, workers/probe.py). "+ stop rule" adds the task
stop rule: no new experiment after `--patience` experiments without an improvement beyond
`--noise`.

Per space and strategy, over `--seeds` seeds: experiments and GPU-hours until the best
eligible result is within 2 % of the optimum (median and 10th-90th percentile), all GPU-hours
spent, and how often the final answer is the true optimum.

    nice python benchmarks/search.py [--seeds 10] [--budget 80] [--spaces a,b] [--json]
"""
from __future__ import annotations

import argparse
import hashlib
import heapq
import itertools
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.domain.engines.failures import classify_failure, is_infeasible  # noqa: E402
from app.domain.objectives import Score, is_better, score  # noqa: E402
from app.domain.states import ExperimentState  # noqa: E402
from app.domain.stopping import probe_order, probe_verdict, task_stop  # noqa: E402
from app.domain.strategies import make_strategy  # noqa: E402
from app.domain.strategies.base import Trial, canonical  # noqa: E402
from app.domain.taskspec import TaskSpec, parse_task  # noqa: E402

WITHIN = 0.02  # "found": the best eligible result within 2 % of the optimum
CACHE = Path.home() / ".cache" / "autotuner-bench"
SIM_SOURCES = ["model.py", "server.py", "virtual.py", "flags.py"]


def _task(name: str, engine: str, model: str, gpu: str, parameters: dict[str, list[Any]], objective: str,
          slo: dict[str, Any], levels: list[int], scenario: str, requests: int) -> dict[str, Any]:
    return {"task_name": name, "base_runtime": "sim", "model": {"id_or_path": model},
            "sim": {"engine": engine, "gpu": gpu}, "parameters": parameters,
            "optimization": {"strategy": "grid_search", "objective": objective},
            "benchmark": {"traffic_scenarios": [scenario], "num_concurrency": levels,
                          "max_requests_per_iteration": requests}, "slo": slo}


# Two models, three GPU types, tensor and data parallelism, regions the engine refuses (at
# start-up: memory; by its argument checks: vLLM's batched-token rules), binding SLOs.
SPACES: dict[str, dict[str, Any]] = {
    "sglang-8b-h100-ttft": _task(
        "sglang-8b-h100-ttft", "sglang", "meta-llama/Meta-Llama-3-8B-Instruct", "H100-80GB",
        {"dp-size": [1, 2], "max-running-requests": [16, 32, 64, 128, 256],
         "chunked-prefill-size": [512, 1024, 2048, 4096, 8192, 16384],
         "mem-fraction-static": [0.6, 0.75, 0.88, 0.97], "schedule-conservativeness": [0.5, 1.0]},
        "minimize_ttft", {"tpot": {"threshold": 0.03, "weight": 1.0}}, [16, 64, 128], "D(2048,128)", 200),
    "vllm-70b-h100-throughput": _task(
        "vllm-70b-h100-throughput", "vllm", "meta-llama/Meta-Llama-3-70B-Instruct", "H100-80GB",
        {"tensor-parallel-size": [1, 2, 4, 8], "max-num-seqs": [32, 64, 128, 256, 512, 1024],
         "max-num-batched-tokens": [256, 512, 1024, 2048, 4096, 8192, 16384],
         "enable-chunked-prefill": [True, False], "max-model-len": [8192]},
        "maximize_throughput", {"tpot": {"threshold": 0.05, "hard_fail": True}}, [32, 128, 256], "D(1024,256)",
        200),
    "vllm-8b-a100-throughput": _task(
        "vllm-8b-a100-throughput", "vllm", "meta-llama/Meta-Llama-3-8B-Instruct", "A100-80GB",
        {"tensor-parallel-size": [1, 2], "data-parallel-size": [1, 2, 4],
         "gpu-memory-utilization": [0.5, 0.7, 0.9, 0.97], "max-num-seqs": [16, 64, 256, 1024],
         "max-num-batched-tokens": [512, 2048, 8192, 16384], "max-model-len": [8192]},
        "maximize_throughput", {"latency": {"p90": {"threshold": 12.0, "hard_fail": True}}}, [64, 256, 512],
        "D(512,512)", 300),
    "sglang-70b-h200-tpot": _task(
        "sglang-70b-h200-tpot", "sglang", "meta-llama/Meta-Llama-3-70B-Instruct", "H200",
        {"tp-size": [1, 2, 4, 8], "dp-size": [1, 2], "kv-cache-dtype": ["auto", "fp8_e5m2"],
         "mem-fraction-static": [0.7, 0.85, 0.97], "max-running-requests": [32, 128, 512],
         "chunked-prefill-size": [1024, 4096, 16384]},
        "minimize_tpot", {"ttft": {"threshold": 4.0, "hard_fail": True}}, [16, 64, 128], "D(1024,128)", 200),
}


# --------------------------------------------------------------------------- ground truth


def _cache_key(task: dict[str, Any]) -> str:
    sim = Path(__file__).resolve().parents[1] / "app" / "tools" / "simengine"
    measured = {k: task[k] for k in ("model", "sim", "parameters", "benchmark")}  # not the objective nor SLOs
    digest = hashlib.sha256(json.dumps(measured, sort_keys=True).encode())
    for name in SIM_SOURCES:
        digest.update((sim / name).read_bytes())
    return digest.hexdigest()[:16]


def _failed_start_seconds(spec: TaskSpec, params: dict[str, Any]) -> float:
    """How long a start that fails takes: the simulated engine's weight load, up to the failure."""
    from app.tools.simengine.model import resolve_model, weight_bytes

    model = resolve_model(None, spec.model.id_or_path)
    return 5.0 + weight_bytes(model, None) / spec.gpus_needed(params) / 10e9


def evaluate_point(spec: TaskSpec, params: dict[str, Any]) -> dict[str, Any]:
    """What the simulated engine does with one point: refused (and why), or each load level's
    summary in virtual time and the start-up time."""
    from app.tools.simengine.flags import parse_args
    from app.tools.simengine.model import GPU_PRESETS, StartupError, plan, resolve_model
    from app.tools.simengine.virtual import replay

    sim = spec.to_dict()["sim"]
    argv = ["--engine", spec.engine, "--model", spec.model.id_or_path, "--sim-gpu", sim["gpu"],
            *spec.launch_flags(params)]
    gpus = spec.gpus_needed(params)
    rule = spec.engine_spec.refusal(params)
    if rule:  # the real engine's own argument check; the simulator does not model every one
        return {"refused": rule, "kind": "invalid_argument", "gpus": gpus, "seconds": 5.0}
    try:
        cfg = parse_args(argv)
        cap = plan(resolve_model(cfg.model_preset, cfg.model_path), GPU_PRESETS[cfg.gpu], cfg.settings)
        levels = [[replay(argv, sc, int(c), spec.benchmark.max_requests_per_iteration) for c in spec.benchmark.levels]
                  for sc in spec.benchmark.traffic_scenarios]
    except StartupError as exc:
        return {"refused": str(exc), "kind": classify_failure(str(exc)), "gpus": gpus,
                "seconds": _failed_start_seconds(spec, params)}
    except SystemExit as exc:
        return {"refused": f"engine exited {exc.code}", "kind": "invalid_argument", "gpus": gpus, "seconds": 2.0}
    keep = ("concurrency", "completed", "errors", "duration", "output_throughput_per_gpu", "mean_e2el_ms",
            "mean_ttft_ms", "mean_tpot_ms", "median_e2el_ms", "p90_e2el_ms", "p95_e2el_ms", "p99_e2el_ms")
    return {"gpus": gpus, "startup": cap.startup_seconds,
            "levels": [[{k: lv.get(k) for k in keep} for lv in scenario] for scenario in levels]}


@dataclass
class Space:
    name: str
    spec: TaskSpec
    points: dict[str, dict[str, Any]]  # canonical params -> evaluate_point's answer
    optimum: float
    best_keys: set[str]

    def objective_of(self, outcome: dict[str, Any], levels: list[float] | None = None) -> tuple[float | None, bool]:
        """(objective, slo_ok) as the tuner scores it, from the given levels only."""
        scenarios = [[lv for lv in sc if levels is None or float(lv["concurrency"]) in levels]
                     for sc in outcome["levels"]]
        s = score(scenarios, self.spec.optimization.objective, self.spec.to_dict().get("slo"),
                  at=self.spec.optimization.objective_level)
        return s.objective, s.slo_ok

    def within(self, value: float) -> bool:
        if self.spec.objective_direction == "maximize":
            return value >= self.optimum * (1 - WITHIN)
        return value <= self.optimum * (1 + WITHIN)


def load_space(name: str, quiet: bool = False) -> Space:
    task = SPACES[name]
    spec = parse_task(task)
    path = CACHE / f"search-{name}-{_cache_key(task)}.json"
    if path.exists():
        points = json.loads(path.read_text())
    else:
        started = time.monotonic()
        names = list(spec.search_space)
        points = {}
        for values in itertools.product(*(spec.search_space[n].grid_values() for n in names)):
            params = dict(zip(names, values))
            points[canonical(params)] = {"params": params, **evaluate_point(spec, params)}
        CACHE.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(points))
        if not quiet:
            print(f"# {name}: {len(points)} points evaluated in {time.monotonic() - started:.0f} s", file=sys.stderr)
    space = Space(name, spec, points, math.nan, set())
    values = {}
    for key, outcome in points.items():
        if "levels" in outcome:
            value, ok = space.objective_of(outcome)
            if value is not None and ok:
                values[key] = value
    best = max(values.values()) if spec.objective_direction == "maximize" else min(values.values())
    space.optimum = best
    space.best_keys = {k for k, v in values.items() if v == best}
    return space


# --------------------------------------------------------------------------- the loop


@dataclass
class Run:
    experiments_to_2pct: int | None = None
    gpu_h_to_2pct: float | None = None
    experiments: int = 0
    gpu_h: float = 0.0
    final_is_optimum: bool = False
    stopped_early: int = 0
    refused_runs: int = 0


@dataclass(order=True)
class _Event:
    at: float
    seq: int
    key: str = field(compare=False)
    probe: bool = field(compare=False)  # the deciding level's end (early stopping decides here)


def simulate(space: Space, strategy: str, slots: int, seed: int, budget: int, early_stop: bool,
             patience: int | None, noise: float) -> Run:
    """One task run in virtual time; returns what it cost to get within 2 % and at the end."""
    task = json.loads(json.dumps(SPACES[space.name]))
    task["optimization"].update(strategy=strategy, seed=seed, max_parallel_experiments=slots, max_iterations=budget)
    spec = parse_task(task)
    strat = make_strategy(spec)
    objective = spec.optimization.objective
    order = probe_order(spec.benchmark.levels, spec.optimization.objective_level)
    history: list[Trial] = []
    index: dict[str, int] = {}
    active: dict[str, tuple[float, int]] = {}  # key -> (start, gpus)
    events: list[_Event] = []
    finished: list[float | None] = []  # eligible objectives, in finishing order
    best: float | None = None
    probed: float | None = None  # the best deciding-level score measured so far
    best_key: str | None = None
    clock, spent, seq = 0.0, 0.0, 0
    run = Run()
    stopped = False

    def spent_until(t: float) -> float:
        return spent + sum(gpus * (t - start) for start, gpus in active.values())

    while True:
        free = slots - len(active)
        if not stopped and free > 0 and len(history) < budget:
            for params in strat.suggest(history, min(free, budget - len(history))):
                key = canonical(params)
                outcome = space.points[key]
                index[key] = len(history)
                history.append(Trial(params=params, state=ExperimentState.RUNNING))
                active[key] = (clock, outcome["gpus"])
                if "levels" not in outcome:
                    heapq.heappush(events, _Event(clock + outcome["seconds"], seq, key, False))
                else:
                    per_level = {float(lv["concurrency"]): lv["duration"] for sc in outcome["levels"] for lv in sc}
                    probe_end = clock + outcome["startup"] + per_level[order[0]]
                    end = clock + outcome["startup"] + sum(per_level.values())
                    heapq.heappush(events, _Event(probe_end if early_stop else end, seq, key, early_stop))
                    outcome["_end_after_probe"] = end - probe_end
                seq += 1
        if not events:
            break
        event = heapq.heappop(events)
        clock = event.at
        outcome = space.points[event.key]
        if event.probe:
            value, ok = space.objective_of(outcome, [order[0]])
            verdict = probe_verdict(Score(objective=value, slo_ok=ok), probed, objective)
            if ok and value is not None and (probed is None or is_better(value, probed, objective)):
                probed = value  # its score is final: later probes compare with it while it runs on
            if verdict is None:
                if ok and value is not None:  # the probe's score is final: the strategy may read it now
                    history[index[event.key]].objective = value
                heapq.heappush(events, _Event(clock + outcome["_end_after_probe"], event.seq, event.key, False))
                continue
            run.stopped_early += 1
        start, gpus = active.pop(event.key)
        spent += gpus * (clock - start)
        trial = history[index[event.key]]
        if "levels" not in outcome:
            trial.state = ExperimentState.FAILED
            trial.infeasible = is_infeasible(outcome["kind"])
            run.refused_runs += 1
            finished.append(None)
        else:
            value, ok = space.objective_of(outcome)
            trial.state = ExperimentState.SUCCEEDED
            if ok:
                trial.objective = value
            else:
                trial.slo_broken = True
            finished.append(value if ok else None)
            if ok and value is not None and (probed is None or is_better(value, probed, objective)):
                probed = value
            if ok and value is not None and (best is None or is_better(value, best, objective)):
                best, best_key = value, event.key
                if run.experiments_to_2pct is None and space.within(best):
                    run.experiments_to_2pct = len(finished)
                    run.gpu_h_to_2pct = spent_until(clock) / 3600
        if task_stop(finished, objective, patience, noise):
            stopped = True
    run.experiments = len(finished)
    run.gpu_h = spent / 3600
    run.final_is_optimum = best_key in space.best_keys
    return run


# --------------------------------------------------------------------------- the table

STRATEGY_ROWS: list[tuple[str, str, int]] = [  # (label, strategy, slots)
    ("grid, 8 slots", "grid_search", 8),
    ("random, 8 slots", "random", 8),
    ("Bayesian, 1 slot", "bayesian", 1),
    ("Bayesian, 4 slots", "bayesian", 4),
    ("Bayesian, 8 slots", "bayesian", 8),
]


# (row suffix, incumbent probe, task stop rule)
VARIANTS: list[tuple[str, bool, bool]] = [("", False, False), (" + ES", True, False), (" + ES + stop rule", True, True)]


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "p10": None, "p90": None}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]  # noqa: E731
    return {"median": statistics.median(ordered), "p10": pick(0.1), "p90": pick(0.9)}


def summarise(runs: list[Run]) -> dict[str, Any]:
    reached = [r for r in runs if r.experiments_to_2pct is not None]
    return {
        "seeds": len(runs), "reached": len(reached),
        "experiments_to_2pct": _spread([r.experiments_to_2pct for r in reached]),
        "gpu_h_to_2pct": _spread([r.gpu_h_to_2pct for r in reached]),
        "experiments": _spread([r.experiments for r in runs]),
        "gpu_h": _spread([r.gpu_h for r in runs]),
        "final_optimum": sum(r.final_is_optimum for r in runs) / len(runs),
        "stopped_early": statistics.mean(r.stopped_early for r in runs),
        "refused_runs": statistics.mean(r.refused_runs for r in runs),
    }


def _fmt(d: dict[str, float | None], digits: int = 0) -> str:
    if d["median"] is None:
        return "–"
    f = f"{{:.{digits}f}}"
    return f"{f.format(d['median'])} ({f.format(d['p10'])}–{f.format(d['p90'])})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spaces", default=",".join(SPACES))
    parser.add_argument("--rows", default="", help="row labels to run, separated by ; (default: all)")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budget", type=int, default=80, help="max_iterations of each run")
    parser.add_argument("--patience", type=int, default=20, help="stop rule: stop after this many experiments "
                        "without an improvement")
    parser.add_argument("--noise", type=float, default=0.01, help="stop rule: what counts as an improvement "
                        "(relative)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    wanted = [r.strip() for r in args.rows.split(";") if r.strip()]
    results: dict[str, dict[str, Any]] = {}
    for name in args.spaces.split(","):
        space = load_space(name)
        refused = sum("levels" not in p for p in space.points.values())
        results[name] = {"points": len(space.points), "refused": refused, "optimum": space.optimum, "rows": {}}
        if not args.json:
            print(f"\n## {name}: {len(space.points)} points, {refused} refused, optimum {space.optimum:.4g} "
                  f"({spec_unit(space.spec)}), {len(space.best_keys)} optimal point(s)")
            print("| strategy | exp. to 2 % | GPU-h to 2 % | reached | exp. run | GPU-h run | final = optimum |"
                  " stopped early |")
            print("|---|---|---|---|---|---|---|---|")
        for label, strategy, slots in STRATEGY_ROWS:
            for suffix, early, patience in VARIANTS:
                row = label + suffix
                if wanted and row not in wanted or (patience and strategy != "bayesian"):
                    continue
                started = time.monotonic()
                seeds = [0] if strategy == "grid_search" else range(args.seeds)  # the grid ignores the seed
                runs = [simulate(space, strategy, slots, seed, args.budget, early, args.patience if patience else None,
                                 args.noise) for seed in seeds]
                summary = summarise(runs)
                summary["seconds"] = time.monotonic() - started
                results[name]["rows"][row] = summary
                if not args.json:
                    print(f"| {row} | {_fmt(summary['experiments_to_2pct'])} | {_fmt(summary['gpu_h_to_2pct'], 2)} | "
                          f"{summary['reached']}/{summary['seeds']} | {_fmt(summary['experiments'])} | "
                          f"{_fmt(summary['gpu_h'], 2)} | {summary['final_optimum']:.0%} | "
                          f"{summary['stopped_early']:.1f} |", flush=True)
    if args.json:
        print(json.dumps(results, indent=1))


def spec_unit(spec: TaskSpec) -> str:
    from app.domain.objectives import OBJECTIVES

    o = OBJECTIVES[spec.optimization.objective]
    return f"{o.direction[:3]} {o.unit}"


if __name__ == "__main__":
    main()
