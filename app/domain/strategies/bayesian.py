"""Bayesian optimisation with Optuna's TPE sampler, rebuilt from the history on every call.

No Optuna storage outlives a call: an in-memory study is filled from the history and asked
`n` times. What each experiment tells the sampler:

- succeeded, eligible -> COMPLETE with its objective;
- cannot run (out of memory, KV cache too small, invalid argument, start-up timeout: see
  app.domain.engines.failures) or broke a hard SLO -> COMPLETE with a violated constraint.
  TPE ranks infeasible trials below every feasible one, so the region that cannot run or
  cannot meet the SLO stops being sampled instead of being a plain failure it learns nothing
  from;
- other failures (a crash mid-benchmark, a lost worker) -> FAIL, ignored: not the
  configuration's fault;
- running, with its score already measured at the deciding load level by the incumbent probe
  (final: the objective reads only that level) -> COMPLETE with that score;
- pending/queued/running -> RUNNING; with `constant_liar=True` TPE treats them as bad results,
  so parallel suggestions spread out instead of piling onto one spot; the trials asked during
  this call are RUNNING too, so the n suggestions spread among themselves.

Known constraints (the engine's own argument checks, app.domain.engines.constraints) are
applied before a point is suggested: a refused proposal is told to the study as infeasible
and asked again, so no GPU is ever spent on it.

Two choices keep parallel suggestions efficient (measured with benchmarks/search.py):
- the first INITIAL_DESIGN points come from a seeded, balanced design (every value of every
  parameter used about equally often, in a shuffled order) instead of TPE's independent
  random draws, so 8 slots started at once cover the space instead of clumping;
- a numeric choice (`max-num-seqs: [32, 64, 128, ...]`) is searched by its position in the
  list, an ordered integer, instead of as unordered categories: TPE then carries what it
  learned about 128 over to 64 and 256, which a categorical distribution cannot.

A multi-objective task (`optimization.objectives`) gets a study with one direction per
objective, which TPE handles as MOTPE with the parameters modelled jointly (multivariate), fed
each experiment's `values` (its figures with the SLO penalty applied per objective).

The sampler seed mixes `optimization.seed` with the history length, which keeps calls
replayable (same history -> same suggestions). TPE can propose a point that is already taken,
which in a finite space is likely near the end: each slot is retried a bounded number of
times, then filled with the best-spread unused grid point (the grid strategy's order), so the
space is still exhausted cleanly.
"""
from __future__ import annotations

import itertools
import logging
import math
import random
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from app.domain.objectives import direction
from app.domain.states import ExperimentState
from app.domain.strategies.base import Strategy, Trial, canonical, seen_keys, total_size
from app.domain.strategies.grid import unused_points
from app.domain.taskspec import Choice, Domain, FloatRange, IntRange

RETRIES_PER_SLOT = 20
INITIAL_DESIGN = 10  # spread points before TPE models the results
N_STARTUP_TRIALS = 2  # TPE models from this many results on (the design covers the space before)
# Candidates TPE scores per suggestion (Optuna's default is 24): in the benchmark's spaces of a
# few hundred points, 128 found the optimum in fewer experiments where it is hardest to find.
EI_CANDIDATES = 128


def _ordinal(dom: Domain) -> bool:
    """A choice of numbers (not switches), searched by position in its (sorted) list."""
    return (isinstance(dom, Choice) and dom.size() >= 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in dom.values))


class Encoding:
    """Search space <-> Optuna distributions: the same names; numeric choices by position."""

    def __init__(self, space: dict[str, Domain]) -> None:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        self.space = space
        self.ordered: dict[str, list[Any]] = {}
        self.dists: dict[str, Any] = {}
        for name, dom in space.items():
            if _ordinal(dom):
                values = sorted(dom.values)  # type: ignore[type-var]
                self.ordered[name] = values
                self.dists[name] = IntDistribution(0, len(values) - 1)
            elif isinstance(dom, Choice):
                self.dists[name] = CategoricalDistribution(list(dom.values))
            elif isinstance(dom, IntRange):
                # high aligned to the step: Optuna warns (every call) when it is not
                self.dists[name] = IntDistribution(dom.low, dom.value_at(dom.size() - 1), log=dom.log, step=dom.step)
            else:
                assert isinstance(dom, FloatRange)
                self.dists[name] = FloatDistribution(dom.low, dom.high, log=dom.log)

    def encode(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """Parameters -> sampler values; None when a value is not in the current space."""
        out = {}
        for name in self.dists:
            value = params.get(name)
            if name in self.ordered:
                if value not in self.ordered[name]:
                    return None
                value = self.ordered[name].index(value)
            out[name] = value
        return out

    def decode(self, values: dict[str, Any]) -> dict[str, Any]:
        return {name: self.ordered[name][values[name]] if name in self.ordered else values[name]
                for name in self.dists}


def design(space: dict[str, Domain], seed: int) -> Iterator[dict[str, Any]]:
    """A seeded, balanced design: point i takes, for each parameter, the next value of a
    shuffled pass over that parameter's values (strata of a range), reshuffled after each pass.
    Any prefix uses every value about equally often (a Latin-hypercube-like design)."""
    rng = random.Random(seed)
    names = list(space)
    passes: dict[str, list[int]] = {name: [] for name in names}
    strata = {name: dom.size() if dom.is_finite else 8 for name, dom in space.items()}  # type: ignore[misc]
    while True:
        point = {}
        for name in names:
            if not passes[name]:
                passes[name] = list(range(strata[name]))
                rng.shuffle(passes[name])
            index = passes[name].pop()
            dom = space[name]
            if dom.is_finite:
                point[name] = dom.value_at(index)  # type: ignore[union-attr]
            else:
                assert isinstance(dom, FloatRange)
                u = (index + rng.random()) / strata[name]
                point[name] = (math.exp(math.log(dom.low) + u * (math.log(dom.high) - math.log(dom.low))) if dom.log
                               else dom.low + u * (dom.high - dom.low))
        yield point


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna logs every in-memory study it creates; one per call (a suggestion, an importance
    reading) would flood the logs and the terminal of `autotuner run`."""
    import optuna

    level = optuna.logging.get_verbosity()  # also makes optuna set up its logger first
    optuna.logging.set_verbosity(max(level, logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _frozen(trial: Trial, encoding: Encoding, objectives: int = 1) -> Any | None:
    """History entry -> Optuna FrozenTrial, or None when it says nothing to TPE (cancelled,
    or params outside the current search space). With several `objectives` a result is its
    `values` (a multi-objective task)."""
    from optuna.trial import TrialState, create_trial

    dists = encoding.dists
    if any(v is not None for k, v in trial.params.items() if k not in dists):
        return None
    params = encoding.encode(trial.params)
    if params is None:
        return None
    if trial.state.is_active() and trial.objective is not None and objectives == 1:
        # running, but its probe measured the deciding level: that score is final, and a liar's
        # bad value would steer the search away from the most promising running experiments
        kwargs: dict[str, Any] = {"state": TrialState.COMPLETE, "values": [float(trial.objective)]}
    elif trial.state.is_active():
        kwargs = {"state": TrialState.RUNNING}
    elif objectives > 1 and trial.state == ExperimentState.SUCCEEDED and trial.values is not None:
        kwargs = {"state": TrialState.COMPLETE, "values": [float(v) for v in trial.values]}
    elif trial.state == ExperimentState.SUCCEEDED and trial.objective is not None and not math.isnan(trial.objective):
        kwargs = {"state": TrialState.COMPLETE, "values": [float(trial.objective)] * objectives}
    elif trial.infeasible:
        kwargs = {"state": TrialState.COMPLETE, "values": [0.0] * objectives, "constraints": {"runs": 1.0}}
    elif trial.slo_broken and trial.state == ExperimentState.SUCCEEDED:
        kwargs = {"state": TrialState.COMPLETE, "values": [0.0] * objectives, "constraints": {"hard_slo": 1.0}}
    elif trial.state.is_failure() or trial.state == ExperimentState.SUCCEEDED:
        kwargs = {"state": TrialState.FAIL}
    else:
        return None
    try:
        return create_trial(params=params, distributions=dists, **kwargs)
    except (ValueError, TypeError):  # a value outside the current distributions: the spec changed
        return None


class BayesianStrategy(Strategy):
    name = "bayesian"
    label = "Bayesian (Optuna TPE)"

    def suggest(self, history: Sequence[Trial], n: int) -> list[dict[str, Any]]:
        space = self.spec.search_space
        if n <= 0:
            return []
        seen = seen_keys(history)
        if not space:
            return [] if canonical({}) in seen else [{}]
        with quiet_optuna():
            return self._suggest(space, history, seen, n)

    def _suggest(self, space: dict[str, Domain], history: Sequence[Trial], seen: set[str], n: int) -> list[dict[str, Any]]:
        import optuna

        encoding = Encoding(space)
        seed = (self.spec.optimization.seed * 1_000_003 + len(history)) % (2**31 - 1)
        directions = [direction(name) for name in self.spec.objective_names]  # several: multi-objective TPE
        # The parameters modelled jointly, with one objective or several. Several: measured with
        # benchmarks/pareto.py (the front's hypervolume after 40 experiments went from 9 to 10 seeds
        # of 10 at 95 %). One: Optuna's own default, which benchmarks/search.py's figures were taken with.
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=N_STARTUP_TRIALS,
                                             multivariate=True, n_ei_candidates=EI_CANDIDATES)
        study = optuna.create_study(directions=directions, sampler=sampler)
        for trial in history:
            frozen = _frozen(trial, encoding, len(directions))
            if frozen is not None:
                study.add_trial(frozen)
        out = self._from_design(space, history, seen, n)
        for point in out:
            self._running(study, encoding, point)
        finite = total_size(space) is not None
        while len(out) < n:
            point = self._ask_new(study, encoding, seen)
            if point is None and finite:
                point = next(unused_points(space, seen, self.refused), None)
                if point is not None:  # let the liar know about it too
                    self._running(study, encoding, point)
            if point is None:
                break
            seen.add(canonical(point))
            out.append(point)
        return out

    def _from_design(self, space: dict[str, Domain], history: Sequence[Trial], seen: set[str],
                     n: int) -> list[dict[str, Any]]:
        """The next points of the initial design, while fewer than INITIAL_DESIGN experiments exist
        (a cancelled one does not count: it measured nothing)."""
        started = sum(1 for t in history if t.state != ExperimentState.CANCELLED)
        size = total_size(space)
        draws = 50 * INITIAL_DESIGN if size is None else min(50 * INITIAL_DESIGN, 4 * size)
        return self.take_new(itertools.islice(design(space, self.spec.optimization.seed), draws), seen,
                             min(n, INITIAL_DESIGN - started))

    @staticmethod
    def _running(study: Any, encoding: Encoding, point: dict[str, Any]) -> None:
        import optuna

        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING,
                                                  params=encoding.encode(point), distributions=encoding.dists))

    def _ask_new(self, study: Any, encoding: Encoding, seen: set[str]) -> dict[str, Any] | None:
        """Ask TPE until it proposes an unseen point the engine accepts. Duplicates stay RUNNING
        (a harmless lie); a point the engine's argument checks refuse is told as infeasible, so
        TPE learns that region without a GPU spent on it."""
        from optuna.trial import create_trial

        for _ in range(RETRIES_PER_SLOT):
            trial = study.ask(encoding.dists)
            point = encoding.decode(trial.params)
            if canonical(point) in seen:
                continue
            if self.refused(point):
                study.add_trial(create_trial(params=trial.params, distributions=encoding.dists,
                                             values=[0.0] * len(study.directions),
                                             constraints={"engine_refuses": 1.0}))
                continue
            return point
        return None
