"""How much of the true Pareto front's hypervolume a multi-objective task reaches.

The space: the simulated engine's performance model in virtual time (deterministic, no host
noise; app.tools.simengine.virtual), Llama-3-8B on H100s, closed loop, over tensor
parallelism, the running-request cap and the prefill chunk. Every point of the grid is
evaluated once, so the true front (output tokens/s per GPU against p99 TTFT, or any two or
three objectives of `--objectives`) is known exhaustively. Then, for each seed, the task's own
strategy (multi-objective TPE, `optimization.objectives`) runs `--budget` experiments,
`--parallel` suggested at a time like the coordinator asks, reading each result from the
table; the hypervolume of the front it has found after 20 and 40 experiments is reported as
a share of the true front's, against one reference point (each objective's worst figure over
the whole grid, 10 % worse). Random search over the same budget is the comparison.

    python benchmarks/pareto.py [--seeds 10] [--budget 40] [--parallel 4] [--json]
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.domain.objectives import OBJECTIVES, measure_all, trial_values  # noqa: E402
from app.domain.pareto import default_reference, front, hypervolume  # noqa: E402
from app.domain.strategies import make_strategy  # noqa: E402
from app.domain.strategies.base import Trial, canonical  # noqa: E402
from app.domain.taskspec import parse_task  # noqa: E402
from app.tools.simengine.virtual import replay  # noqa: E402

SPACE = {"tp-size": [1, 2, 4, 8], "max-running-requests": [4, 8, 16, 32, 64, 128, 256],
         "chunked-prefill-size": [256, 512, 1024, 2048, 4096, 8192], "schedule-conservativeness": [0.3, 0.6, 1.0, 1.5]}
CHECKPOINTS = (20, 40)


def task(objectives: list[str], strategy: str, seed: int, budget: int) -> dict:
    return {
        "task_name": "pareto-benchmark", "base_runtime": "sim", "model": {"id_or_path": "llama-3-8b"},
        "sim": {"gpu": "H100-80GB"}, "parameters": SPACE,
        "optimization": {"strategy": strategy, "objectives": objectives, "seed": seed, "max_iterations": budget},
        "benchmark": {"traffic_scenarios": ["D(2048,256)"], "num_concurrency": [64],
                      "max_requests_per_iteration": 192},
    }


def evaluate_grid(spec) -> dict[str, tuple[float, ...]]:
    """Every grid point's figures (in each objective's unit), from the model in virtual time."""
    names = list(spec.search_space)
    sim, bench = spec.to_dict()["sim"], spec.benchmark
    table = {}
    for values in itertools.product(*(spec.search_space[n].grid_values() for n in names)):
        params = dict(zip(names, values))
        argv = ["--engine", spec.engine, "--model", spec.model.id_or_path, "--sim-gpu", sim["gpu"],
                *spec.launch_flags(params)]
        levels = [replay(argv, sc, int(c), bench.max_requests_per_iteration)
                  for sc in bench.traffic_scenarios for c in bench.num_concurrency]
        _, measured = measure_all([levels], spec.objective_names)
        table[canonical(params)] = tuple(measured[n] for n in spec.objective_names)
    return table


def run(spec, table: dict, budget: int, parallel: int) -> list[tuple[float, ...]]:
    """The figures of the experiments the strategy picks, in the order it picks them."""
    strategy = make_strategy(spec)
    history: list[Trial] = []
    found: list[tuple[float, ...]] = []
    while len(history) < budget:
        batch = strategy.suggest(history, min(parallel, budget - len(history)))
        if not batch:
            break
        for params in batch:
            figures = table[canonical(params)]
            measured = dict(zip(spec.objective_names, figures))
            history.append(Trial(params=params, state="succeeded", objective=figures[0],
                                 values=trial_values(measured, 0.0, spec.objective_names)))
            found.append(figures)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objectives", default="maximize_throughput,minimize_p99_ttft")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budget", type=int, default=max(CHECKPOINTS))
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = args.objectives.split(",")
    directions = [OBJECTIVES[n].direction for n in names]
    table = evaluate_grid(parse_task(task(names, "grid_search", 0, args.budget)))
    points = list(table.values())
    reference = default_reference(points, directions)
    true_hv = hypervolume([points[i] for i in front(points, directions)], directions, reference)
    out = {"objectives": names, "grid_points": len(points), "true_front_points": len(front(points, directions)),
           "reference_point": reference, "true_hypervolume": true_hv, "seeds": args.seeds, "parallel": args.parallel,
           "strategies": {}}
    for strategy in ("bayesian", "random"):
        shares: dict[int, list[float]] = {n: [] for n in CHECKPOINTS if n <= args.budget}
        for seed in range(args.seeds):
            found = run(parse_task(task(names, strategy, seed, args.budget)), table, args.budget, args.parallel)
            for n in shares:
                shares[n].append(hypervolume(found[:n], directions, reference) / true_hv)
        out["strategies"][strategy] = {
            str(n): {"mean": statistics.fmean(v), "min": min(v), "max": max(v),
                     "seeds_at_95": sum(x >= 0.95 for x in v)} for n, v in shares.items()}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{len(points)} grid points, true front {out['true_front_points']} points, objectives {names}, "
          f"reference {[round(r, 4) for r in reference]}")
    for strategy, by_n in out["strategies"].items():
        for n, s in by_n.items():
            print(f"{strategy:>8} after {n:>2}: hypervolume share mean {s['mean']:.3f} min {s['min']:.3f} "
                  f"max {s['max']:.3f}, seeds >= 95 %: {s['seeds_at_95']}/{args.seeds}")


if __name__ == "__main__":
    main()
