"""What the CLI shows a person: live progress while a task runs, the best configuration
at the end. Machine-readable output (`--json`) goes to stdout; everything here goes to
stderr so the two never mix."""
from __future__ import annotations

import shlex
import time
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.store.db import session_scope
from app.domain.states import TASK_TERMINAL, ExperimentState
from app.store.models import Task
from app.serializers import task_dict

err = Console(stderr=True)

DONE_STATES = tuple(s for s in ExperimentState if not s.is_active())


class TaskNotFound(Exception):
    """No task with that id (the CLI says so in one line)."""


def load_report(task_id: int, experiments: bool = True) -> dict[str, Any]:
    with session_scope(readonly=True) as session:
        task = session.get(Task, task_id)
        if task is None:
            raise TaskNotFound(f"task {task_id} not found")
        return task_dict(session, task, experiments=experiments)


def watch(task_id: int, interval: float = 0.5, alive: Callable[[], str | None] = lambda: None) -> dict[str, Any]:
    """Poll the store until the task ends, drawing a progress bar of experiments done.

    `alive()` returns a message when something the watch depends on died (an embedded
    worker, say); the watch then stops with that message instead of waiting forever.
    """
    columns = (
        TextColumn("[bold]{task.fields[name]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False, disable=not err.is_terminal) as progress:
        bar = None
        last_line = ""
        while True:
            report = load_report(task_id, experiments=False)
            c = report["counts"]
            done = sum(c[s] for s in DONE_STATES)
            detail = (
                f"{c['succeeded']} ok · {c['failed'] + c['timed_out']} failed · "
                f"{c['running']} running · {c['queued']} queued · {c['pending']} waiting"
            )
            if bar is None:
                bar = progress.add_task("", total=report["max_iterations"], name=report["name"], detail=detail)
            progress.update(bar, completed=done, detail=detail)
            if not err.is_terminal and detail != last_line:
                err.print(f"task {task_id}: {done}/{report['max_iterations']} done · {detail}", highlight=False)
                last_line = detail
            if report["status"] in TASK_TERMINAL:
                progress.update(bar, total=max(done, 1), completed=done)
                return load_report(task_id)
            problem = alive()
            if problem:
                raise RuntimeError(problem)
            time.sleep(interval)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


SIM_FIGURES = {"virtual": "figures: the model's, in virtual time",
               "wall": "figures: measured on the wall clock, lag-checked"}


def print_summary(report: dict[str, Any]) -> None:
    """The best configuration as a table and the command that launches it."""
    sim = ""
    if report["simulated"]:
        figures = SIM_FIGURES.get(report.get("sim_clock") or "", "")
        sim = f" [yellow](simulated engine and GPUs{'; ' + figures if figures else ''})[/yellow]"
    c = report["counts"]
    err.print(
        f"\nTask {report['id']} [bold]{report['name']}[/bold]: {report['status']}{sim} · "
        f"{c['succeeded']} succeeded, {c['failed']} failed, {c['timed_out']} timed out, {c['cancelled']} cancelled"
        + (f" in {report['elapsed_s']:.1f}s" if report.get("elapsed_s") else "")
    )
    if report.get("error"):
        err.print(f"[red]{report['error']}[/red]")
    if report.get("stop"):
        err.print(report["stop"])
    stopped = sum(1 for e in report.get("experiments") or () if e.get("stop_reason"))
    if stopped:
        err.print(f"{stopped} experiment(s) stopped early (their other load levels skipped, GPUs freed): "
                  "they succeeded, with their score at the deciding level")
    best = report.get("best")
    if not best:
        err.print("No successful experiment: there is no best configuration.")
        return
    table = Table(title=f"Best configuration (experiment #{best['seq']})", title_justify="left")
    table.add_column("parameter")
    table.add_column("value")
    for name, value in best["params"].items():
        table.add_row(name, fmt(value))
    penalty = f" (score with SLO penalty {fmt(best['objective'])})" if best.get("penalty") else ""
    table.add_row(f"[bold]{report['objective_label']}[/bold]",
                  f"[bold]{fmt(best['value'])} {report['objective_unit']}[/bold]{penalty}")
    table.add_row("GPUs", ", ".join(best["gpus"]) or "-")
    err.print(table)
    err.print("Launch command:")
    err.print("  " + shlex.join(best["launch_command"]), highlight=False, soft_wrap=True)
    if report.get("repeats"):
        print_verdict(report["repeats"])


def print_verdict(v: dict[str, Any]) -> None:
    """What the repeats of the top configurations say: a winner to rely on, or a tie."""
    unit = v["objective"]["unit"]
    table = Table(title=f"Top configurations measured again ({v['repeats']} repeats each)", title_justify="left")
    for col in ("#", "parameters", "runs", f"mean ± std ({unit})", f"range ({unit})", f"to rely on ({unit})", "SLOs"):
        table.add_column(col)
    for c in v["configurations"]:
        table.add_row(str(c["runs"][0]["seq"]), " ".join(f"{k}={fmt(x)}" for k, x in c["params"].items()),
                      str(len(c["runs"])), f"{fmt(c['mean'])} ± {c['std']:.2g}", f"{fmt(c['low'])} – {fmt(c['high'])}",
                      fmt(c["relied"]), "met" if c["slo_ok"] else "broken")
    err.print(table)
    w = v["winner"]
    if w is None:
        return
    if v["tie"]:
        others = ", ".join(f"#{t['runs'][0]['seq']}" for t in v["tied"])
        err.print(f"[bold]Tie[/bold]: #{w['runs'][0]['seq']} and {others} are within the noise; any of them is the answer:")
        for c in (w, *v["tied"]):
            err.print("  " + c["launch_command_shell"], highlight=False, soft_wrap=True)
    else:
        err.print(f"[bold]Winner[/bold]: #{w['runs'][0]['seq']}, {fmt(w['relied'])} {unit} to rely on, "
                  "clear of the runner-up's runs.")


def print_levels(levels: list[dict[str, Any]]) -> None:
    """One row per load level with the figures engineers compare first."""
    table = Table(title="Benchmark (times in ms)", title_justify="left")
    for col in ("load", "done", "err", "req/s", "out tok/s", "TTFT p50", "TTFT p99", "TPOT p50", "ITL p50", "E2EL p99", "goodput"):
        table.add_column(col, justify="right")
    for lv in levels:
        load = f"{lv['request_rate']:g} req/s" if lv.get("request_rate") else f"c={lv.get('concurrency')}"
        table.add_row(
            load, str(lv["completed"]), str(lv["errors"]), fmt(lv["request_throughput"]), fmt(lv["output_throughput"]),
            fmt(lv.get("median_ttft_ms")), fmt(lv.get("p99_ttft_ms")), fmt(lv.get("median_tpot_ms")),
            fmt(lv.get("median_itl_ms")), fmt(lv.get("p99_e2el_ms")), fmt(lv.get("goodput")) if lv.get("goodput") is not None else "-",
        )
    err.print(table)
