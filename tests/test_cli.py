"""The command line: one readable line (or one per problem) and an exit code, never a
traceback; and the README's first command end to end on the embedded default."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "tests" / "data" / "examples-original").glob("*.json"))


@pytest.mark.unit
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_validate_accepts_every_original_example(path):
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: ")


@pytest.mark.unit
def test_validate_explains_ome_sections():
    result = CliRunner().invoke(main, ["validate", str(ROOT / "tests/data/examples-original/simple_task.json")])
    assert "note: clusterbasemodel_config" in result.output
    assert "sglang" in result.output


@pytest.mark.unit
def test_validate_prints_every_problem_with_its_path(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({
        "task_name": "x",
        "model": {},
        "parameters": {"tp-size": [1], "bad name": [1]},
        "optimization": {"strategy": "annealing", "max_parallel_experiments": 0},
    }))
    result = CliRunner().invoke(main, ["validate", str(bad)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert all(line.startswith("error: ") for line in lines)
    text = result.output
    for loc in ("model.id_or_path", "parameters.bad name", "optimization.strategy", "optimization.max_parallel_experiments"):
        assert loc in text
    assert "Traceback" not in text


@pytest.mark.unit
def test_missing_file_and_broken_json_are_one_line(tmp_path):
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "nope.json")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    broken = tmp_path / "broken.json"
    broken.write_text('{"task_name": "x",\n  "model": }')
    result = CliRunner().invoke(main, ["validate", str(broken)])
    assert result.exit_code == 2 and "line 2" in result.output


@pytest.mark.unit
def test_worker_needs_exactly_one_gpu_source():
    result = CliRunner().invoke(main, ["worker"])
    assert result.exit_code == 2 and "exactly one of" in result.output


@pytest.mark.unit
def test_worker_on_a_host_without_nvml_says_how_to_simulate(monkeypatch):
    import workers.gpu_discovery as gd

    def no_nvml(_indices):
        raise gd.GpuDiscoveryError("NVML is not available on this host; use --simulated-gpus N")

    monkeypatch.setattr(gd, "discover_gpus", no_nvml)
    result = CliRunner().invoke(main, ["worker", "--gpus", "0,1"])
    assert result.exit_code == 1 and "--simulated-gpus" in result.output and "Traceback" not in result.output


@pytest.mark.unit
def test_status_of_unknown_task_is_one_line(db):
    result = CliRunner().invoke(main, ["status", "4242"])
    assert result.exit_code == 1 and result.output.strip() == "error: task 4242 not found"


@pytest.mark.unit
def test_an_sqlite_without_update_returning_is_refused_in_one_line(tmp_path, monkeypatch):
    """The claim, the end and the ledger's take are UPDATE ... RETURNING, which SQLite has from
    3.35: on an older libsqlite3 (RHEL 9's 3.34.1) SQLAlchemy's dialect says it has none, and
    the store refuses the database when its engine is made, in one line, instead of raising in
    every claim and end once work runs (each result lost)."""
    import sqlite3.dbapi2

    from app.store.db import UnsupportedDatabase, get_engine

    monkeypatch.setattr(sqlite3.dbapi2, "sqlite_version_info", (3, 34, 1))
    monkeypatch.setattr(sqlite3.dbapi2, "sqlite_version", "3.34.1")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'old.db'}")
    expected = ("SQLite 3.34.1 is too old: the autotuner needs SQLite 3.35 or newer (UPDATE ... RETURNING); use a "
                "Python whose sqlite3 is built on a newer SQLite, or PostgreSQL (DATABASE_URL)")
    with pytest.raises(UnsupportedDatabase) as raised:
        get_engine()
    assert str(raised.value) == expected
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 1 and result.output.strip() == f"error: {expected}"


@pytest.mark.unit
def test_a_bug_in_a_command_keeps_its_traceback(monkeypatch):
    """Only the errors a user can cause or fix become one line: a KeyError in the worker's
    start-up is a bug, and must not read like a message."""
    import workers.gpu_discovery as gd

    def broken(_indices):
        raise KeyError("uuid")

    monkeypatch.setattr(gd, "discover_gpus", broken)
    result = CliRunner().invoke(main, ["worker", "--gpus", "0"])
    assert isinstance(result.exception, KeyError) and result.exit_code == 1


def run_json(path: Path, tmp_path: Path) -> tuple[dict, dict]:
    """`autotuner run PATH --json` on the embedded default in a home of its own: (its
    environment, for later commands; the report)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env["AUTOTUNER_HOME"] = str(tmp_path / "home")
    proc = subprocess.run([sys.executable, "-m", "app.cli", "run", str(path), "--json"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return env, json.loads(proc.stdout)


@pytest.mark.integration
def test_run_quickstart_on_the_embedded_default(tmp_path):
    """The README's first command: SQLite, bundled Redis, simulated GPUs, real workers."""
    env, report = run_json(ROOT / "examples" / "quickstart.json", tmp_path)
    assert report["status"] == "completed" and report["simulated"] is True
    assert report["counts"]["succeeded"] == len(report["experiments"]) >= 8
    best = report["best"]
    assert report["objective"] == "minimize_ttft"
    eligible = [e["objective"] for e in report["experiments"] if e["slo_ok"] is not False]
    assert best["objective"] == min(eligible)
    assert best["launch_command"][:3] == ["python", "-m", "sglang.launch_server"]
    assert report["objective_unit"] == "s" and best["value"] == best["measured"]["minimize_ttft"]
    for exp in report["experiments"]:  # the measured figure, and the score it ranks by with the SLO penalty
        assert exp["objective"] == pytest.approx(exp["measured"]["minimize_ttft"] * (1 + exp["penalty"]))
    for exp in report["experiments"]:
        assert {"params", "state", "attempts", "gpus", "worker", "started_at", "finished_at", "objective", "error"} <= set(exp)
        assert all(":" in g for g in exp["gpus"])  # host:index
    assert (tmp_path / "home" / "autotuner.db").exists()
    # The stack it started is gone: no stack file, and `status` reads the same result.
    assert not (tmp_path / "home" / "stack.json").exists()
    status = subprocess.run([sys.executable, "-m", "app.cli", "status", str(report["id"]), "--json"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert json.loads(status.stdout)["best"]["id"] == best["id"]


@pytest.mark.integration
def test_up_then_submit_wait_from_another_shell(tmp_path):
    """The README's long-running stack: `autotuner up`, then `autotuner submit --wait`
    finds its broker through the stack file, and the web API shows the result."""
    import signal
    import urllib.request

    from tests.helpers import free_port, mixed_task, wait_for

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env["AUTOTUNER_HOME"] = str(tmp_path / "home")
    port = free_port()
    up = subprocess.Popen([sys.executable, "-m", "app.cli", "up", "--port", str(port), "--simulated-gpus", "2"],
                          env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        def pool():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/pool", timeout=2) as resp:
                    return [w for w in json.load(resp)["workers"] if w["online"]]
            except OSError:
                return None

        (worker,) = wait_for(pool, 90, "the stack's web app and worker")
        assert worker["simulated"] and worker["slots"] == 2
        task_file = tmp_path / "task.json"
        task_file.write_text(json.dumps(mixed_task([{"tp-size": 1}, {"tp-size": 2}, {"tp-size": 1}], parallel=2)))
        proc = subprocess.run([sys.executable, "-m", "app.cli", "submit", str(task_file), "--wait", "--json"],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        report = json.loads(proc.stdout)
        assert report["status"] == "completed" and report["counts"]["succeeded"] == 3
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/tasks/{report['id']}", timeout=5) as resp:
            assert b"completed" in resp.read()
        # A second `up` on the same home refuses instead of fighting over it.
        again = subprocess.run([sys.executable, "-m", "app.cli", "up"], env=env, cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)
    assert not (tmp_path / "home" / "stack.json").exists()


@pytest.mark.process
def test_sim_serve_and_bench_against_it(tmp_path):
    """`autotuner sim serve` starts the simulated engine; `autotuner bench` measures any
    server with the tuner's client, closed and open loop."""
    from tests.helpers import free_port, stop_process, wait_for

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "sim", "serve", "--port", str(port), "--tp-size", "1",
         "--sim-time-scale", "0.01", "--sim-startup-seconds", "0"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        def healthy():
            try:
                return urllib.request.urlopen(url + "/health", timeout=1).status == 200
            except OSError:
                return False

        wait_for(healthy, 30, "the simulated engine")
        closed = subprocess.run([sys.executable, "-m", "app.cli", "bench", "--url", url, "--scenario", "D(32,8)",
                                 "--concurrency", "1,4", "--max-requests", "8", "--json"],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert closed.returncode == 0, closed.stderr
        report = json.loads(closed.stdout)
        assert report["model"] == "meta-llama/Meta-Llama-3-8B-Instruct"
        assert [lv["concurrency"] for lv in report["levels"]] == [1, 4]
        assert all(lv["completed"] == 8 and lv["total_output_tokens"] == 64 for lv in report["levels"])
        opened = subprocess.run([sys.executable, "-m", "app.cli", "bench", "--url", url, "--request-rate", "50",
                                 "--max-requests", "6", "--goodput", "ttft:60000", "--json"],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
        (level,) = json.loads(opened.stdout)["levels"]
        assert level["request_rate"] == 50 and level["completed"] == 6 and level["good_requests"] == 6
        bad = subprocess.run([sys.executable, "-m", "app.cli", "bench", "--url", url, "--scenario", "Q(1)"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr
    finally:
        stop_process(server)


@pytest.mark.process
def test_sim_serve_rejects_unknown_flags_like_the_engine():
    proc = subprocess.run([sys.executable, "-m", "app.cli", "sim", "serve", "--no-such-flag", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unrecognized arguments: --no-such-flag" in proc.stderr


@pytest.mark.integration
def test_run_multi_objective_example_returns_its_pareto_set(tmp_path):
    """examples/pareto-sim.json end to end: real workers measure both objectives, the
    multi-objective sampler picks the experiments, and --json returns the Pareto set: only
    non-dominated points, each with its figures and launch command, and its hypervolume."""
    from app.domain.pareto import dominates, hypervolume

    _, report = run_json(ROOT / "examples" / "pareto-sim.json", tmp_path)
    names = [o["name"] for o in report["objectives"]]
    directions = [o["direction"] for o in report["objectives"]]
    assert names == ["maximize_throughput", "minimize_p99_ttft"] and report["counts"]["succeeded"] == 8
    ps = report["pareto_set"]
    measured = [tuple(e["measured"][n] for n in names) for e in report["experiments"]
                if e["slo_ok"] is not False and not e["penalty"]]
    front = [tuple(p["values"]) for p in ps["points"]]
    assert front and all(not any(dominates(q, p, directions) for q in measured) for p in front)
    assert all(any(dominates(p, q, directions) or p == q for p in front) for q in measured)
    assert ps["reference_point"] == [100, 30] and ps["reference_given"]
    assert ps["hypervolume"] > 0 and ps["hypervolume"] == pytest.approx(hypervolume(front, directions, ps["reference_point"]))
    assert all(p["launch_command"][:3] == ["python", "-m", "sglang.launch_server"] for p in ps["points"])


@pytest.mark.integration
def test_run_with_repeats_measures_the_top_two_again_with_other_request_orders(tmp_path):
    """Real workers and sim engines: after the search the two best configurations run twice
    more each with seeds 1 and 2 (a different sample of request lengths: another total of
    input tokens), and --json reports the verdict over three runs each."""
    task = json.loads((ROOT / "examples" / "quickstart.json").read_text())
    task["parameters"] = {"max-running-requests": [16, 64, 256]}
    task["sim"].update(time_scale=0.2, startup_seconds=0.3)
    task["optimization"].update(repeats=2, repeat_top=2)
    task["benchmark"].update(traffic_scenarios=["N(1024,256)/(64,16)"], num_concurrency=[32],
                             max_requests_per_iteration=48)
    path = tmp_path / "repeats.json"
    path.write_text(json.dumps(task))
    env, report = run_json(path, tmp_path)
    assert report["status"] == "completed" and report["counts"]["succeeded"] == 3 + 2 * 2
    v = report["repeats"]
    assert v["pending"] == 0 and len(v["configurations"]) == 2
    assert all(len(c["runs"]) == 3 for c in v["configurations"])
    assert v["winner"]["launch_command_shell"].startswith("python -m sglang.launch_server")
    status = subprocess.run([sys.executable, "-m", "app.cli", "status", str(report["id"]), "--json"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert json.loads(status.stdout)["repeats"] == v
    assert sorted(e["seed"] for e in report["experiments"]) == [0, 0, 0, 1, 1, 2, 2]
    import sqlite3

    with sqlite3.connect(tmp_path / "home" / "autotuner.db") as db:
        metrics = dict(db.execute("SELECT id, metrics FROM experiments").fetchall())
    for c in v["configurations"]:  # the request sample differs with the seed: so does the input token total
        totals = {json.loads(metrics[r["id"]])["scenarios"][0]["levels"][0]["total_input_tokens"] for r in c["runs"]}
        assert len(totals) == 3
