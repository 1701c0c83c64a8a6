"""`autotuner`: the command line.

Every command fails with a non-zero exit and one readable line (or, for an invalid task
file, one line per problem), never a traceback.
"""
from __future__ import annotations

import functools
import json
import signal
import sys
import time
from typing import Any, Callable

import click

from app.config import get_settings, home_dir

EXIT_FAILED, EXIT_USAGE = 1, 2


def friendly_errors(fn: Callable) -> Callable:
    """Turn the errors a user can cause or fix into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from kombu.exceptions import OperationalError as BrokerError
        from sqlalchemy.exc import OperationalError as DbError

        from app.console import TaskNotFound
        from app.domain.engines import UnknownEngine
        from app.domain.taskspec import TaskSpecError
        from app.store.db import UnsupportedDatabase

        try:
            return fn(*args, **kwargs)
        except TaskSpecError as exc:
            for e in exc.errors:
                loc = ".".join(str(p) for p in e["loc"]) or "(file)"
                click.echo(f"error: {loc}: {e['msg']}", err=True)
            sys.exit(EXIT_USAGE)
        except DbError as exc:
            click.echo(f"error: cannot use the database ({get_settings().database_url.split('@')[-1]}): {exc.orig}", err=True)
            sys.exit(EXIT_FAILED)
        except BrokerError as exc:
            click.echo(f"error: cannot reach the broker ({get_settings().broker_url}): {exc}", err=True)
            sys.exit(EXIT_FAILED)
        # not LookupError: a KeyError bug keeps its traceback
        except (TaskNotFound, UnknownEngine, UnsupportedDatabase) as exc:
            click.echo(f"error: {exc.args[0]}", err=True)
            sys.exit(EXIT_FAILED)

    return wrapper


def load_spec(path: str, deployment_mode: str | None, engine: str | None = None):
    from app.domain.taskspec import load_task_file, parse_task

    spec = load_task_file(path)
    overrides = {k: v for k, v in (("deployment_mode", deployment_mode), ("engine", engine)) if v}
    if overrides:
        data = spec.to_dict()
        data.update(overrides)
        if engine and data.get("base_runtime") in ("sglang", "vllm") and data["base_runtime"] != engine:
            data["base_runtime"] = engine  # --engine vllm on a file written for sglang
        spec = parse_task(data)
    return spec


def emit(report: dict[str, Any], as_json: bool) -> None:
    from app.console import print_summary

    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_summary(report)


def exit_for(report: dict[str, Any]) -> None:
    sys.exit(0 if report["status"] == "completed" else EXIT_FAILED)


mode_option = click.option(
    "--deployment-mode",
    type=click.Choice(["docker", "process", "sim"]),
    help="Override the file's deployment mode (e.g. try an original task file on the simulated engine).",
)
engine_option = click.option(
    "--engine",
    help="The engine whose flags the parameters are (sglang, vllm, or one of AUTOTUNER_ENGINES_FILE), "
         "e.g. for an OME file whose base_runtime names a ClusterServingRuntime.",
)


def with_overrides(fn: Callable) -> Callable:
    return mode_option(engine_option(fn))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Parallel autotuner for LLM inference servers (SGLang, vLLM)."""
    from app.config import install_for_domain

    install_for_domain()  # read once for this process (its Celery workers' children inherit it)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the normalised task as JSON.")
@with_overrides
@friendly_errors
def validate(file: str, as_json: bool, deployment_mode: str | None, engine: str | None) -> None:
    """Check a task file; print every problem with its field path."""
    spec = load_spec(file, deployment_mode, engine)
    if as_json:
        click.echo(json.dumps(spec.to_dict(), indent=2))
        return
    size = spec.grid_size()
    click.echo(
        f"ok: {spec.task_name}: {spec.engine} via {spec.deployment_mode}, strategy {spec.optimization.strategy}, "
        f"{spec.optimization.max_iterations} experiment(s) max, {spec.optimization.max_parallel_experiments} in parallel"
        + (f", grid of {size}" if size else "")
    )
    for note in spec.notes:
        click.echo(f"note: {note}")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--wait", is_flag=True, help="Follow the task until it ends; exit 0 only if it completed.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@with_overrides
@friendly_errors
def submit(file: str, wait: bool, as_json: bool, deployment_mode: str | None, engine: str | None) -> None:
    """Store a task and start it on the running stack."""
    from app.console import watch
    from app.store.migrate import upgrade
    from app.task_service import create_task

    spec = load_spec(file, deployment_mode, engine)
    upgrade()
    task_id = create_task(spec)
    if not wait:
        click.echo(json.dumps({"id": task_id, "status": "pending"}) if as_json else f"submitted task {task_id}")
        return
    report = watch(task_id)
    emit(report, as_json)
    exit_for(report)


@main.command()
@click.argument("task_id", type=int, required=False)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def status(task_id: int | None, as_json: bool) -> None:
    """One task in detail, or the list of tasks."""
    from app.console import fmt, load_report
    from app.store.db import session_scope
    from app.serializers import list_tasks

    if task_id is not None:
        emit(load_report(task_id), as_json)
        return
    with session_scope(readonly=True) as session:
        tasks = list_tasks(session)
    if as_json:
        click.echo(json.dumps({"tasks": tasks}, indent=2))
        return
    for t in tasks:
        c = t["counts"]
        best = f"best {fmt(t['best']['value'])} {t['objective_unit']}" if t["best"] else "no best yet"
        click.echo(
            f"{t['id']:>5}  {t['status']:<10} {t['name']:<30} "
            f"{c['succeeded']}/{t['max_iterations']} ok, {c['running']} running  {best}"
        )


@main.command()
@click.argument("task_id", type=int)
@friendly_errors
def cancel(task_id: int) -> None:
    """Cancel a task: running experiments stop at their next check, GPUs are freed."""
    from app.task_service import Conflict, NotFound, cancel_task

    try:
        click.echo(f"task {task_id}: {cancel_task(task_id)}")
    except (NotFound, Conflict) as exc:
        raise click.ClickException(str(exc))


@main.command("set")
@click.argument("task_id", type=int)
@click.option("--max-parallel", type=int, help="How many of its experiments may run at once.")
@click.option("--priority", type=int, help="Higher first when experiments wait for GPUs (default 0).")
@friendly_errors
def set_(task_id: int, max_parallel: int | None, priority: int | None) -> None:
    """Change a running task's parallelism or priority."""
    from app.task_service import Conflict, NotFound, update_task

    if max_parallel is None and priority is None:
        raise click.UsageError("give --max-parallel and/or --priority")
    try:
        result = update_task(task_id, max_parallel_experiments=max_parallel, priority=priority)
    except (NotFound, Conflict) as exc:
        raise click.ClickException(str(exc))
    click.echo(f"task {task_id}: max_parallel_experiments {result['max_parallel_experiments']}, "
               f"priority {result['priority']}")


@main.command()
@click.argument("worker", required=False)
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to wait for the answer.")
@friendly_errors
def ping(worker: str | None, timeout: float) -> None:
    """Is a Celery worker alive? (WORKER: its node name, e.g. gpu-host-gpu-0-1@host, as the
    pool page shows it; without it, every worker answers.) Exit 0 when it answered: a liveness
    probe for Kubernetes or a container's HEALTHCHECK."""
    from app.celery_app import app as celery

    replies = celery.control.ping(destination=[worker] if worker else None, timeout=timeout) or []
    names = sorted(name for reply in replies for name in reply)
    if not names:
        raise click.ClickException(f"{worker or 'no worker'} did not answer within {timeout:g}s")
    click.echo("\n".join(f"{name}: ok" for name in names))


@main.group()
def gpus() -> None:
    """The GPU pool: list GPUs, clear a quarantine."""


@gpus.command("list")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def gpus_list(as_json: bool) -> None:
    """Every registered GPU with its state (held, fenced, quarantined)."""
    from app.store.db import session_scope
    from app.serializers import pool_dict

    with session_scope(readonly=True) as session:
        rows = pool_dict(session)["gpus"]
    if as_json:
        click.echo(json.dumps({"gpus": rows}, indent=2))
        return
    for g in rows:
        state = "online" if g["online"] else "offline"
        if g["held_by"]:
            state += f", held by task {g['held_by']['task_id']} exp #{g['held_by']['seq']}"
        if g["fenced_by_attempt"]:
            state += ", fenced until a lost attempt's engine is stopped"
        if g["quarantined_at"]:
            state += f", QUARANTINED: {g['quarantine_reason']}"
        sim = " (simulated)" if g["simulated"] else ""
        click.echo(f"{g['label']:<24} {g['name']}{sim}: {state}")


@gpus.command("clear")
@click.argument("label")
@friendly_errors
def gpus_clear(label: str) -> None:
    """Clear the quarantine of GPU LABEL (HOST:INDEX) once you have checked it is free."""
    from app.store.pool import clear_quarantine, parse_gpu_label

    try:
        host, index = parse_gpu_label(label)
    except ValueError as exc:
        raise click.ClickException(str(exc))
    if not clear_quarantine(host, index):
        raise click.ClickException(f"GPU {label} is not registered (see `autotuner gpus list`)")
    click.echo(f"GPU {label}: quarantine cleared")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("--simulated-gpus", default=4, show_default=True, help="Size of the simulated GPU pool.")
@click.option("--cpu", is_flag=True, help="The pool is this host's CPU (one device, one experiment at a time) "
                                          "instead of simulated GPUs: for llama.cpp.")
@with_overrides
@friendly_errors
def run(file: str, as_json: bool, simulated_gpus: int, cpu: bool, deployment_mode: str | None,
        engine: str | None) -> None:
    """Run one task start to finish on an embedded stack (bundled Redis, simulated GPUs or
    this host's CPU)."""
    from app.console import err, watch
    from app.store.migrate import upgrade
    from app.stack import Stack, running_stack_pid
    from app.task_service import check_submittable, create_task

    spec = load_spec(file, deployment_mode, engine)
    check_submittable(spec)
    if (pid := running_stack_pid()) is not None:
        raise click.ClickException(
            f"`autotuner up` (pid {pid}) is running on {home_dir()}; use `autotuner submit {file} --wait` instead"
        )
    upgrade()
    stack = Stack(home=home_dir(), simulated_gpus=simulated_gpus, cpu=cpu)
    pool = "this host's CPU" if cpu else f"{simulated_gpus} simulated GPUs"
    err.print(f"Starting the embedded stack in {home_dir()} ({pool})…")
    try:
        stack.start()
        task_id = create_task(spec)

        def alive() -> str | None:
            restarted, give_up = stack.supervise()
            for line in restarted:
                err.print(f"[yellow]{line}[/yellow]")
            return give_up

        try:
            report = watch(task_id, alive=alive)
        except RuntimeError as exc:
            raise click.ClickException(str(exc))
    finally:
        stack.stop()
    emit(report, as_json)
    exit_for(report)


@main.command()
@click.option("--simulated-gpus", default=4, show_default=True, help="Simulated GPUs of the local worker (0: none).")
@click.option("--cpu", is_flag=True, help="The local worker offers this host's CPU instead of simulated GPUs.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@friendly_errors
def up(simulated_gpus: int, cpu: bool, host: str, port: int) -> None:
    """Run the whole stack until Ctrl-C: web, coordinator, a simulated GPU worker (or one
    offering this host's CPU)."""
    from app.console import err
    from app.store.migrate import upgrade
    from app.stack import Stack, running_stack_pid

    if (pid := running_stack_pid()) is not None:
        raise click.ClickException(f"a stack (pid {pid}) is already running on {home_dir()}")
    upgrade()
    stack = Stack(home=home_dir(), simulated_gpus=simulated_gpus, cpu=cpu, web_port=port, web_host=host,
                  start_worker=cpu or simulated_gpus > 0)
    stack.start()
    stack.write_stack_file()
    err.print(f"Web UI: http://{host}:{port}   broker: {stack.broker_url}   logs: {home_dir() / 'logs'}")
    err.print(f"Flower: CELERY_BROKER_URL={stack.broker_url} FLOWER_BASIC_AUTH=user:password "
              "celery -A app.celery_app flower")
    stopping = False

    def _stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stopping:
            restarted, give_up = stack.supervise()
            for line in restarted:
                err.print(f"[yellow]{line}[/yellow]")
            if give_up:
                err.print(f"[red]{give_up}[/red]")
                raise SystemExit(1)
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        err.print("Stopping…")
        stack.stop()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--workers", default=2, show_default=True, envvar="AUTOTUNER_WEB_WORKERS",
              type=click.IntRange(1, 64), help="gunicorn worker processes.")
@click.option("--threads", default=8, show_default=True, envvar="AUTOTUNER_WEB_THREADS",
              type=click.IntRange(1, 256), help="Threads per worker (requests served at once by each).")
@click.option("--timeout", default=60, show_default=True, envvar="AUTOTUNER_WEB_TIMEOUT",
              type=click.IntRange(1, 3600), help="Seconds before a worker stuck on a request is restarted.")
@click.option("--keep-alive", "keepalive", default=5, show_default=True, envvar="AUTOTUNER_WEB_KEEPALIVE",
              type=click.IntRange(0, 300), help="Seconds an idle keep-alive connection stays open.")
@click.option("--graceful-timeout", default=30, show_default=True, envvar="AUTOTUNER_WEB_GRACEFUL_TIMEOUT",
              type=click.IntRange(1, 3600), help="Seconds in-flight requests get to finish on shutdown.")
@friendly_errors
def web(host: str, port: int, workers: int, threads: int, timeout: int, keepalive: int,
        graceful_timeout: int) -> None:
    """Serve the web pages and the JSON API (gunicorn, threaded workers)."""
    from app.web.server import ServerOptions, serve

    serve(ServerOptions(host=host, port=port, workers=workers, threads=threads, timeout=timeout,
                        keepalive=keepalive, graceful_timeout=graceful_timeout))


@main.command()
@click.option("--concurrency", default=2, show_default=True)
@click.option("--loglevel", default="INFO")
@friendly_errors
def coordinator(concurrency: int, loglevel: str) -> None:
    """Consume the `control` queue (coordinator and periodic tick)."""
    from app.celery_app import run_coordinator

    run_coordinator(concurrency=concurrency, loglevel=loglevel)


@main.command()
@click.option("--gpus", help="Real GPU indices for this worker's group, e.g. 0,1 (found with NVML).")
@click.option("--simulated-gpus", type=int, help="Use N simulated GPUs instead of real ones.")
@click.option("--gpu-preset", default="H100-80GB", show_default=True, help="Model of the simulated GPUs.")
@click.option("--first-gpu-index", default=0, show_default=True,
              help="Index of the first simulated GPU (several simulated workers on one host need disjoint indices).")
@click.option("--simulated-domains", default=1, show_default=True,
              help="Split the simulated GPUs into this many topology domains (NVLink/PCIe islands).")
@click.option("--cpu", is_flag=True, help="Offer this host's CPU as the worker's one device (llama.cpp runs on it), "
                                          "one experiment at a time.")
@click.option("--cpu-threads", type=int, help="With --cpu: the device's CPUs (the first N this host allows; "
                                               "default all). Its engines are pinned to them.")
@click.option("--group", help="Device group name (queue gpu.<group>; cpu.<group> with --cpu, whose group name ends in -cpu); default from host and indices.")
@click.option("--slots", type=int, help="Experiments run at once; default: one per GPU (per GPU slot). The Celery pool has a spare process per four slots (at least one).")
@click.option("--slots-per-gpu", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Split each GPU between this many engines, each told to use 1/N of its memory "
                   "(several small models on one large GPU).")
@click.option("--loglevel", default="INFO")
@friendly_errors
def worker(gpus: str | None, simulated_gpus: int | None, gpu_preset: str, first_gpu_index: int, simulated_domains: int,
           cpu: bool, cpu_threads: int | None, group: str | None, slots: int | None, slots_per_gpu: int,
           loglevel: str) -> None:
    """Start a worker pinned to one group of GPUs, or offering this host's CPU (--cpu)."""
    import os

    from app.store.pool import GpuSpec
    from workers.cpu_device import CPU_SET_ENV, CpuDeviceError, cpu_device, cpu_set
    from workers.gpu_discovery import GpuDiscoveryError, discover_gpus, live_utilization, simulated_gpus as sim_gpus
    from workers.gpu_worker import run_worker

    if sum(map(bool, (gpus, simulated_gpus, cpu))) != 1:
        raise click.UsageError("give exactly one of --gpus 0,1, --simulated-gpus N or --cpu")
    if cpu_threads is not None and not cpu:
        raise click.UsageError("--cpu-threads goes with --cpu")
    if cpu:
        if slots_per_gpu != 1:
            raise click.UsageError("--slots-per-gpu splits GPUs; a CPU device is not split")
        try:
            cpus = cpu_set(cpu_threads)
        except CpuDeviceError as exc:
            raise click.UsageError(str(exc))
        os.environ[CPU_SET_ENV] = ",".join(map(str, cpus))  # the runtime in the pool processes reads it
        run_worker([cpu_device(cpus)], group=group, slots=slots or 1, loglevel=loglevel)
        return
    try:
        if simulated_gpus:
            found = sim_gpus(simulated_gpus, gpu_preset, first_index=first_gpu_index, domains=simulated_domains)
            utilization = dict  # nothing to measure: an empty reading
        else:
            try:
                indices = [int(i) for i in gpus.split(",") if i.strip()]
            except ValueError:
                raise click.UsageError(f"--gpus takes indices like 0,1; got {gpus!r}")
            found = discover_gpus(indices)
            utilization = functools.partial(live_utilization, indices)
    except GpuDiscoveryError as exc:
        raise click.ClickException(str(exc))
    specs = [GpuSpec(g.index, g.name, g.memory_mb, g.uuid, g.simulated, g.utilization, g.domain) for g in found]
    run_worker(specs, group=group, slots=slots, utilization=utilization, loglevel=loglevel, slots_per_gpu=slots_per_gpu)


def _numbers(text: str | None, kind: type) -> list | None:
    if not text:
        return None
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}")


def _goodput(text: str | None) -> dict[str, float] | None:
    """`ttft:200,tpot:50,e2el:2000` (milliseconds), as vllm bench serve's --goodput."""
    if not text:
        return None
    out = {}
    for item in text.split(","):
        key, _, value = item.partition(":")
        if key not in ("ttft", "tpot", "e2el") or not value:
            raise click.BadParameter(f"expected ttft:MS, tpot:MS or e2el:MS, got {item!r}")
        out[key] = float(value)
    return out


@main.command()
@click.option("--url", required=True, help="Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:30000")
@click.option("--model", help="Model name to send (default: the first of /v1/models).")
@click.option("--scenario", default="D(100,100)", show_default=True, help="D(in,out), N(mi,si)/(mo,so) or U(a,b)/(c,d)")
@click.option("--concurrency", default="1", show_default=True, help="Closed-loop levels, e.g. 1,8,64.")
@click.option("--request-rate", help="Open-loop levels in requests/s, e.g. 1,4,16 (instead of --concurrency).")
@click.option("--burstiness", default=1.0, show_default=True, help="Gamma shape of arrivals (1 = Poisson).")
@click.option("--max-concurrency", type=int, help="Cap on requests in flight (open loop).")
@click.option("--max-requests", default=100, show_default=True, help="Requests per level.")
@click.option("--max-time", default=60.0, show_default=True, help="Seconds per level.")
@click.option("--warmup", default=0, show_default=True, help="Warm-up requests per level, not counted.")
@click.option("--api", type=click.Choice(["completions", "chat"]), default="completions", show_default=True)
@click.option("--num-gpus", default=1, show_default=True, help="GPUs behind the server (for the per-GPU figures).")
@click.option("--goodput", help="Per-request SLOs for goodput, e.g. ttft:200,tpot:50 (ms).")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bench(url, model, scenario, concurrency, request_rate, burstiness, max_concurrency, max_requests, max_time,
          warmup, api, num_gpus, goodput, seed, as_json) -> None:
    """Benchmark any running server, with the tuner's own client and metrics."""
    from app.tools.loadgen import Target, parse_scenario, run_benchmark
    from app.tools.loadgen.client import first_model
    from app.console import print_levels

    try:
        parse_scenario(scenario)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--scenario")
    rates = _numbers(request_rate, float)
    levels = None if rates else _numbers(concurrency, int)
    try:
        model = model or first_model(url)
        target = Target(url, model, scenario, max_requests=max_requests, max_time_s=max_time, num_gpus=num_gpus,
                        api=api, seed=seed, goodput_slo=_goodput(goodput))
        results = run_benchmark(target, levels, request_rates=rates, burstiness=burstiness,
                                max_concurrency=max_concurrency, warmup_requests=warmup)
    except OSError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc}")
    except ValueError as exc:
        raise click.ClickException(str(exc))
    if as_json:
        click.echo(json.dumps({"url": url, "model": model, "scenario": scenario, "levels": results}, indent=2))
    else:
        print_levels(results)


@main.group()
def sim() -> None:
    """The simulated engine (no GPU needed)."""


@sim.command("serve", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--port", default=30000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--engine", type=click.Choice(["sglang", "vllm"]), default="sglang", show_default=True)
@click.option("--model", default="meta-llama/Meta-Llama-3-8B-Instruct", show_default=True)
@click.pass_context
def sim_serve(ctx: click.Context, port: int, host: str, engine: str, model: str) -> None:
    """Serve the simulated engine; other options are the engine's own flags
    (e.g. --tp-size 2 --mem-fraction-static 0.85) and --sim-* settings."""
    from app.tools.simengine.__main__ import main as sim_main

    sys.exit(sim_main(["--host", host, "--port", str(port), "--engine", engine, "--model", model, *ctx.args]))


@main.group()
def llamacpp() -> None:
    """llama.cpp's llama-server: a cached build from a pinned source, and a tiny test model."""


@llamacpp.command("build")
@click.option("--jobs", type=click.IntRange(min=1), help="Parallel compile jobs (default: the CPU count).")
def llamacpp_build(jobs: int | None) -> None:
    """Build llama-server into the user's cache (a no-op when it is already there) and
    print its path."""
    from app.tools.llamacpp.build import BuildError, build_server

    try:
        click.echo(str(build_server(jobs=jobs)))
    except BuildError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)


@llamacpp.command("model")
@click.argument("path", type=click.Path(dir_okay=False, writable=True))
@click.option("--seed", default=0, show_default=True)
def llamacpp_model(path: str, seed: int) -> None:
    """Write the tiny random-weight llama GGUF model (a few MB) to PATH."""
    from app.tools.llamacpp.model import write_model

    try:
        click.echo(str(write_model(path, seed=seed)))
    except OSError as exc:
        click.echo(f"error: cannot write {path}: {exc.strerror}", err=True)
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
