"""How long the search strategies take to suggest points for large search spaces.

For each strategy, a task over ``--params`` parameters of ``--values`` values each (10**6
points by default, so the grid is sampled, never enumerated) asks for ``--suggest`` points
with an empty history, then again with that many finished trials as history (the case of a
long task). Prints the seconds of each call; `--json` prints them as one object. The tests
(tests/test_strategies.py) check what the points are, not how fast they come.

    python benchmarks/strategy_speed.py [--params 6] [--values 10] [--suggest 50] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=6)
    parser.add_argument("--values", type=int, default=10)
    parser.add_argument("--suggest", type=int, default=50)
    parser.add_argument("--strategies", default="grid_search,random,bayesian")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    # An operator engine with an open vocabulary, so the parameters can be named p0, p1, ...
    engines = Path(tempfile.mkdtemp(prefix="strategy-speed-")) / "engines.json"
    engines.write_text(json.dumps({"generic": {"command": ["server", "--port", "{port}"]}}))
    os.environ["AUTOTUNER_ENGINES_FILE"] = str(engines)
    from app.config import install_for_domain
    from app.domain.strategies import make_strategy
    from app.domain.strategies.base import Trial
    from app.domain.taskspec import parse_task

    install_for_domain()  # as a process's start does: the engines file above
    params = {f"p{i}": list(range(args.values)) for i in range(args.params)}
    results = {}
    for name in args.strategies.split(","):
        spec = parse_task({
            "task_name": "speed", "model": {"id_or_path": "m"}, "base_runtime": "generic",
            "deployment_mode": "process", "parameters": params,
            "optimization": {"strategy": name, "max_iterations": 2 * args.suggest, "seed": 1},
        })
        start = time.perf_counter()
        first = make_strategy(spec).suggest([], args.suggest)
        cold = time.perf_counter() - start
        history = [Trial(p, "succeeded", float(i)) for i, p in enumerate(first)]
        start = time.perf_counter()
        second = make_strategy(spec).suggest(history, args.suggest)
        warm = time.perf_counter() - start
        results[name] = {"points": args.values ** args.params, "suggested": [len(first), len(second)],
                         "empty_history_s": round(cold, 3), "with_history_s": round(warm, 3)}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{args.params} parameters x {args.values} values ({args.values ** args.params} points), "
          f"{args.suggest} suggestions per call")
    print(f"{'strategy':>12} {'empty history':>14} {'with history':>13}")
    for name, r in results.items():
        print(f"{name:>12} {r['empty_history_s']:>13.3f}s {r['with_history_s']:>12.3f}s")


if __name__ == "__main__":
    main()
