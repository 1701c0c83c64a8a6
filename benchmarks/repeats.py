"""How often `repeats` name the true best configuration, or a tie that includes it.

The space: the quickstart's grid (running-request cap x prefill chunk) on the simulated
engine's model in virtual time, with a varied request sample (`N(2048,512)/(128,32)`), scored
on mean TTFT (s) at 256 concurrent users. Each configuration's true figure is its mean over
`--truth-seeds` request samples. One simulated task: every configuration measured once (a
request sample of its own plus host noise: each figure multiplied by a log-normal factor of
`--noise` relative spread, run-to-run variation of a real serving benchmark), the `--top` best
(`optimization.repeat_top`) measured again `--repeats` times each (new samples, new noise), and the verdict of
app.domain.repeats. Over `--trials` tasks it counts how often the reported winner is the true
best or a declared tie that includes it, against how often the search's single measurement
picked the true best without repeats.

    python benchmarks/repeats.py [--trials 300] [--repeats 3] [--noise 0.03] [--json]
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.domain.objectives import is_better, measure_all  # noqa: E402
from app.domain.repeats import Run, summarise, verdict  # noqa: E402
from app.domain.taskspec import parse_task  # noqa: E402
from app.tools.simengine.virtual import replay  # noqa: E402

OBJECTIVE = "minimize_ttft"
EQUAL = 0.001  # true figures this close are the same configuration's, for any user
TASK = {
    "task_name": "repeats-benchmark", "base_runtime": "sim", "model": {"id_or_path": "llama-3-8b"},
    "sim": {"gpu": "H100-80GB"},
    "parameters": {"max-running-requests": [16, 32, 64, 128, 256], "chunked-prefill-size": [512, 2048, 4096, 16384]},
    "optimization": {"strategy": "grid_search", "objective": OBJECTIVE},
    "benchmark": {"traffic_scenarios": ["N(2048,512)/(128,32)"], "num_concurrency": [256],
                  "max_requests_per_iteration": 192},
}


def figures(samples: int) -> dict[tuple, list[float]]:
    """Each configuration's figure for request samples (seeds) 0..samples-1, no host noise."""
    spec = parse_task(TASK)
    names = list(spec.search_space)
    sim, bench = spec.to_dict()["sim"], spec.benchmark
    out = {}
    for values in itertools.product(*(spec.search_space[n].grid_values() for n in names)):
        argv = ["--engine", spec.engine, "--model", spec.model.id_or_path, "--sim-gpu", sim["gpu"],
                *spec.launch_flags(dict(zip(names, values)))]
        out[values] = [measure_all([[replay(argv, bench.traffic_scenarios[0], bench.num_concurrency[0],
                                            bench.max_requests_per_iteration, seed=s)]], [OBJECTIVE])[1][OBJECTIVE]
                       for s in range(samples)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--noise", type=float, default=0.03)
    parser.add_argument("--top", type=int, default=4, help="optimization.repeat_top: how many are measured again")
    parser.add_argument("--truth-seeds", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    table = figures(args.truth_seeds)
    truth = {cfg: sum(v) / len(v) for cfg, v in table.items()}
    true_best = min(truth, key=truth.get)
    # configurations the model cannot tell apart (within EQUAL) are all the true best
    best_set = {cfg for cfg, v in truth.items() if v <= truth[true_best] * (1 + EQUAL)}
    rng = random.Random(0)
    counter = itertools.count(1)

    def measure(cfg: tuple) -> Run:
        n = next(counter)
        return Run(n, n, rng.choice(table[cfg]) * rng.lognormvariate(0.0, args.noise))

    right = tie = single_right = reached = 0
    for _ in range(args.trials):
        first = {cfg: measure(cfg) for cfg in table}
        ranked = sorted(first, key=lambda c: first[c].measured)
        single_right += ranked[0] in best_set
        summaries = [summarise(str(cfg), {"cfg": cfg}, [first[cfg]] + [measure(cfg) for _ in range(args.repeats)],
                               OBJECTIVE) for cfg in ranked[:args.top]]
        reached += bool(best_set & set(ranked[:args.top]))
        found = verdict(summaries, OBJECTIVE)
        named = {found["winner"].params["cfg"]} | {t.params["cfg"] for t in found["tied"]}
        right += bool(best_set & named)
        tie += found["tie"]
    second = min((c for c in truth if c not in best_set), key=truth.get)
    out = {"configurations": len(table), "true_best": dict(zip(TASK["parameters"], true_best)),
           "equally_best": len(best_set), "true_best_s": truth[true_best], "runner_up_gap": truth[second] / truth[true_best] - 1,
           "trials": args.trials, "repeats": args.repeats, "top": args.top, "noise": args.noise,
           "true_best_measured_again": reached / args.trials,
           "right_or_tie_including_it": right / args.trials, "ties": tie / args.trials,
           "single_measurement_right": single_right / args.trials}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{len(table)} configurations; true best {out['true_best']} at {out['true_best_s']:.4g} s, "
          f"runner-up {out['runner_up_gap']:.1%} behind; {args.trials} tasks, {args.repeats} repeats, "
          f"{args.noise:.0%} host noise")
    print(f"reported winner is the true best or a tie including it: {out['right_or_tie_including_it']:.1%} "
          f"(ties declared: {out['ties']:.1%}; the true best was among the {args.top} measured again in "
          f"{out['true_best_measured_again']:.1%}); one measurement, no repeats: {out['single_measurement_right']:.1%}")


if __name__ == "__main__":
    main()
