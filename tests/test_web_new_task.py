"""The New task page: form -> task conversion, rendering, CSRF, validation errors beside
their fields, storing only valid tasks, cloning, and the parse / preview endpoints. Through
Flask's test client on a real SQLite store and the real Redis broker."""
from __future__ import annotations

import html
import json
import re

import pytest
from werkzeug.datastructures import MultiDict

from app.web.forms import form_to_task, task_to_form

pytestmark = pytest.mark.unit


def csrf_token(client) -> str:
    page = client.get("/tasks/new").get_data(as_text=True)
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)


def form_data(**overrides) -> MultiDict:
    """A valid simulated task as the browser would submit it."""
    data = {
        "task_name": "web-task",
        "description": "from the form",
        "model": "meta-llama/Meta-Llama-3-8B-Instruct",
        "base_runtime": "sim",
        "runtime_image_tag": "",
        "deployment_mode": "sim",
        "sim_time_scale": "0.05",
        "sim_startup_seconds": "0",
        "strategy": "grid_search",
        "objective": "minimize_ttft",
        "max_iterations": "",
        "max_parallel_experiments": "2",
        "timeout_per_iteration": "300",
        "list_configs": "",
        "traffic_scenarios": "D(100,100), N(480,240)/(300,150)",
        "num_concurrency": "8, 32",
        "request_rate": "",
        "max_requests_per_iteration": "50",
        "max_time_per_iteration": "30",
        "slo_ttft": "1.5",
        "slo_ttft_hard_fail": "y",
        "slo_tpot": "",
        "slo_p90": "",
        "slo_p99": "",
        "extra_json": "",
    }
    data.update({k: v for k, v in overrides.items() if not k.startswith("param_")})
    md = MultiDict(list(data.items()))
    rows = overrides.get("rows", [
        {"name": "tp-size", "kind": "values", "values": "1, 2"},
        {"name": "chunked-prefill-size", "kind": "int", "low": "1024", "high": "4096", "step": "1024"},
        {},
    ])
    md.pop("rows", None)
    for row in rows:
        for key in ("name", "kind", "values", "low", "high", "step", "log"):
            md.add(f"param_{key}", row.get(key, "values" if key == "kind" else ""))
    return md


def stored_tasks() -> list:
    from app.store.db import session_scope
    from app.store.models import Task

    with session_scope(readonly=True) as s:
        return [(t.id, t.name, t.spec) for t in s.query(Task).order_by(Task.id)]


def field_errors(page: str, field: str) -> str:
    m = re.search(rf'<ul class="field-errors" id="{field}-errors">(.*?)</ul>', page, re.S)
    assert m, f"no error list for {field}"
    return html.unescape(m.group(1))


# -- form_to_task / task_to_form (pure) ----------------------------------------------------------


def test_form_to_task_builds_values_int_and_float_rows_and_slos():
    md = form_data(
        strategy="random", max_iterations="12", request_rate="0.5, 2", slo_tpot="0.03", slo_p99="4",
        rows=[
            {"name": "tp-size", "kind": "values", "values": "1,2,4"},
            {"name": "schedule-policy", "kind": "values", "values": "lpm, fcfs"},
            {"name": "enable-torch-compile", "kind": "values", "values": "true, false"},
            {"name": "chunked-prefill-size", "kind": "int", "low": "512", "high": "4096", "step": "512"},
            {"name": "mem-fraction-static", "kind": "float", "low": "0.7", "high": "0.9"},
            {"name": "max-running-requests", "kind": "int", "low": "16", "high": "256", "log": "true"},
            {},
        ])
    task = form_to_task(md)
    assert task["parameters"] == {
        "tp-size": [1, 2, 4],
        "schedule-policy": ["lpm", "fcfs"],
        "enable-torch-compile": [True, False],
        "chunked-prefill-size": {"type": "int", "low": 512, "high": 4096, "step": 512},
        "mem-fraction-static": {"type": "float", "low": 0.7, "high": 0.9},
        "max-running-requests": {"type": "int", "low": 16, "high": 256, "log": True},
    }
    assert task["model"] == {"id_or_path": "meta-llama/Meta-Llama-3-8B-Instruct"}
    assert task["sim"] == {"time_scale": 0.05, "startup_seconds": 0}
    assert task["optimization"] == {"strategy": "random", "objective": "minimize_ttft", "max_iterations": 12,
                                    "max_parallel_experiments": 2, "timeout_per_iteration": 300}
    assert task["benchmark"] == {"traffic_scenarios": ["D(100,100)", "N(480,240)/(300,150)"],
                                 "num_concurrency": [8, 32], "request_rate": [0.5, 2],
                                 "max_requests_per_iteration": 50, "max_time_per_iteration": 30}
    assert task["slo"] == {"ttft": {"threshold": 1.5, "hard_fail": True},
                           "tpot": {"threshold": 0.03, "hard_fail": False},
                           "latency": {"p99": {"threshold": 4, "hard_fail": False}}}
    assert "runtime_image_tag" not in task and "description" in task
    from app.domain.taskspec import parse_task

    spec = parse_task(task)
    assert spec.optimization.max_iterations == 12 and spec.slo.latency.p99.threshold == 4


def test_form_to_task_keeps_bad_text_for_validation_and_reports_form_problems():
    problems: list = []
    task = form_to_task(form_data(max_parallel_experiments="lots", extra_json="{nope",
                                  rows=[{"name": "", "values": "1"}, {"name": "a", "values": "1"},
                                        {"name": "a", "values": "2"}]), problems)
    assert task["optimization"]["max_parallel_experiments"] == "lots"
    assert task["parameters"] == {"a": [1]}
    locs = [p["loc"] for p in problems]
    assert ["form", "extra_json"] in locs and ["form", "params", 0] in locs and ["form", "params", 2] in locs


def test_extra_json_is_merged_under_the_fields_and_task_to_form_round_trips():
    extra = '{"optimization": {"seed": 7, "strategy": "bayesian"}, "slo": {"ttft": {"weight": 2.0}, "tpot": {"weight": 3}}}'
    task = form_to_task(form_data(extra_json=extra))
    assert task["optimization"]["seed"] == 7 and task["optimization"]["strategy"] == "grid_search"
    assert task["slo"] == {"ttft": {"threshold": 1.5, "hard_fail": True, "weight": 2.0}}  # tpot cleared on the form
    data, rows, rest = task_to_form(task)
    assert rest == {"optimization": {"seed": 7}, "slo": {"ttft": {"weight": 2.0}}}
    assert data["slo_ttft"] == "1.5" and data["slo_ttft_hard_fail"] is True
    assert data["traffic_scenarios"] == "D(100,100), N(480,240)/(300,150)"
    assert rows[0] == {"name": "tp-size", "kind": "values", "values": "1, 2", "low": "", "high": "", "step": "", "log": ""}
    assert rows[1]["kind"] == "int" and (rows[1]["low"], rows[1]["high"], rows[1]["step"]) == ("1024", "4096", "1024")


# -- the page ------------------------------------------------------------------------------------

IDS = ["task_name", "description", "model", "base_runtime", "runtime_image_tag", "deployment_mode",
       "sim_time_scale", "sim_startup_seconds", "strategy", "objective", "max_iterations",
       "max_parallel_experiments", "timeout_per_iteration", "traffic_scenarios", "num_concurrency",
       "request_rate", "max_requests_per_iteration", "max_time_per_iteration", "slo_ttft", "slo_tpot",
       "slo_p90", "slo_p99", "slo_ttft_hard_fail", "params", "add-param", "task-json", "task-file",
       "fill-from-json", "preview", "list_configs", "extra_json"]


def test_get_renders_every_field_with_a_csrf_token_and_three_empty_rows(client):
    resp = client.get("/tasks/new")
    assert resp.status_code == 200
    page = resp.get_data(as_text=True)
    assert re.search(r'name="csrf_token" type="hidden" value="[^"]{20,}"', page)
    for ident in IDS:
        assert f'id="{ident}"' in page, ident
    params = page.split('id="params"', 1)[1].split("</template>", 1)[0]
    assert params.count('class="param-row"') == 4  # three rows + the template for JS
    for name in ("param_name", "param_kind", "param_values", "param_low", "param_high", "param_step"):
        assert f'name="{name}"' in params
    assert 'class="remove-param"' in params and "js/new_task.js" in page


def test_post_valid_task_stores_it_and_redirects(client):
    resp = client.post("/tasks/new", data=form_data(csrf_token=csrf_token(client)))
    assert resp.status_code == 302, resp.get_data(as_text=True)[:3000]
    [(task_id, name, spec)] = stored_tasks()
    assert resp.headers["Location"].endswith(f"/tasks/{task_id}")
    assert name == "web-task"
    assert spec["parameters"] == {"tp-size": [1, 2],
                                  "chunked-prefill-size": {"type": "int", "low": 1024, "high": 4096, "step": 1024}}
    assert spec["optimization"]["max_parallel_experiments"] == 2
    assert spec["slo"]["ttft"]["hard_fail"] is True
    assert client.get(resp.headers["Location"]).status_code == 200


def test_post_invalid_task_shows_each_error_beside_its_field_and_stores_nothing(client):
    data = form_data(csrf_token=csrf_token(client), max_parallel_experiments="0",
                     traffic_scenarios="D(100,100), Z(1,2)", objective="minimize_ttft",
                     rows=[{"name": "tp-size", "values": "1, 2"}, {"name": "Bad Name", "values": "1"}, {}])
    resp = client.post("/tasks/new", data=data)
    assert resp.status_code == 200
    page = resp.get_data(as_text=True)
    assert "greater than 0" in field_errors(page, "max_parallel_experiments")
    assert "Z(1,2)" in field_errors(page, "traffic_scenarios") and "item 2" in field_errors(page, "traffic_scenarios")
    assert field_errors(page, "task_name") == ""
    rows = re.findall(r'<div class="param-row( has-error)?".*?<ul class="row-errors">(.*?)</ul>', page, re.S)
    bad = [html.unescape(errs) for cls, errs in rows if cls]
    assert len(bad) == 1 and "invalid parameter name 'Bad Name'" in bad[0]
    assert 'value="Bad Name"' in page and 'value="D(100,100), Z(1,2)"' in page  # what was typed is kept
    assert 'id="summary"' in page
    assert stored_tasks() == []


def test_errors_without_a_field_go_to_the_summary(client):
    data = form_data(csrf_token=csrf_token(client), extra_json='{"sim": {"engine": "vllm"}, "bogus": 1}',
                     base_runtime="sglang")
    page = client.post("/tasks/new", data=data).get_data(as_text=True)
    summary = html.unescape(page.split('id="summary"', 1)[1].split("</div>", 1)[0])
    assert "bogus: unknown field" in summary
    assert stored_tasks() == []


def test_post_without_csrf_token_is_refused(client):
    resp = client.post("/tasks/new", data=form_data())
    assert resp.status_code == 400
    assert stored_tasks() == []


def test_post_needs_write_permission(db):
    from app import create_app

    flask_app = create_app({"TESTING": True, "AUTH_TOKEN": "s3cret"})
    c = flask_app.test_client()
    assert c.get("/tasks/new").status_code == 200
    assert c.post("/tasks/new", data=form_data(csrf_token=csrf_token(c))).status_code == 403
    assert stored_tasks() == []


def test_clone_prefills_the_form(client):
    from app.domain.taskspec import parse_task

    client.post("/tasks/new", data=form_data(csrf_token=csrf_token(client), extra_json='{"optimization": {"seed": 3}}'))
    [(task_id, _, _)] = stored_tasks()
    page = client.get(f"/tasks/new?clone={task_id}").get_data(as_text=True)
    assert 'id="task_name" name="task_name" type="text" value="web-task"' in page
    assert 'value="meta-llama/Meta-Llama-3-8B-Instruct"' in page
    assert re.search(r'<option selected value="sim">', page) or 'value="sim" selected' in page
    assert 'value="D(100,100), N(480,240)/(300,150)"' in page and 'value="8, 32"' in page
    assert 'id="slo_ttft" name="slo_ttft" type="text" value="1.5"' in page
    assert re.search(r'id="slo_ttft_hard_fail" name="slo_ttft_hard_fail" type="checkbox" value="y"', page) and "checked" in page
    assert 'name="param_name" value="tp-size"' in page and 'value="1, 2"' in page
    assert 'name="param_name" value="chunked-prefill-size"' in page
    assert "&#34;seed&#34;: 3" in page or "&quot;seed&quot;: 3" in page
    assert client.get("/tasks/new?clone=999").status_code == 404
    # The form filled from the stored task builds the same task back.
    stored = stored_tasks()[0][2]
    data, rows, extra = task_to_form(stored)
    md = MultiDict([(k, "y" if v is True else v) for k, v in data.items() if v is not False])
    md["extra_json"] = json.dumps(extra)
    for row in rows:
        for key, value in row.items():
            md.add(f"param_{key}", value)
    assert parse_task(form_to_task(md)).to_dict() == stored


# -- API: preview and parse ----------------------------------------------------------------------


def test_preview_counts_experiments_and_gpu_range(client):
    task = {"task_name": "p", "model": {"id_or_path": "m"},
            "parameters": {"tp-size": [1, 2, 4], "schedule-policy": ["lpm", "fcfs"]},
            "optimization": {"strategy": "grid_search"}}
    body = client.post("/api/tasks/preview", json=task).json
    assert body["errors"] == [] and body["experiments"] == 6
    assert body["gpus_per_experiment"] == [1, 4] and body["gpu_counts"] == [1, 2, 4]
    task["optimization"]["max_iterations"] = 4
    body = client.post("/api/tasks/preview", json=task).json
    assert body["experiments"] == 4 and any("6 parameter sets" in n for n in body["notes"])
    task["parameters"]["mem-fraction-static"] = {"type": "float", "low": 0.7, "high": 0.9}
    task["optimization"] = {"strategy": "random", "max_iterations": 15}
    body = client.post("/api/tasks/preview", json=task).json
    assert body["experiments"] == 15 and body["gpus_per_experiment"] == [1, 4]
    task["optimization"] = {"strategy": "list", "configs": [{"tp-size": 2}, {"tp-size": 2, "dp-size": 2}]}
    del task["parameters"]["mem-fraction-static"]
    del task["parameters"]["tp-size"]
    body = client.post("/api/tasks/preview", json=task).json
    assert body["experiments"] == 2 and body["gpus_per_experiment"] == [2, 4]
    bad = client.post("/api/tasks/preview", json={"task_name": "p", "model": {"id_or_path": "m"},
                                                  "optimization": {"max_parallel_experiments": 0}}).json
    assert bad["experiments"] is None and bad["errors"][0]["loc"] == ["optimization", "max_parallel_experiments"]


def test_preview_of_the_form_itself(client):
    data = form_data(rows=[{"name": "tp-size", "values": "1, 2, 4"},
                           {"name": "max-running-requests", "kind": "int", "low": "16", "high": "64", "step": "16"}])
    data["base_runtime"], data["deployment_mode"] = "sglang", "docker"
    body = client.post("/api/tasks/preview", data=data).json  # no CSRF token needed: stores nothing
    assert body["errors"] == [] and body["experiments"] == 12 and body["gpus_per_experiment"] == [1, 4]


def test_parse_yaml_returns_the_normalised_task(client):
    text = """
task_name: from-yaml
model: {id_or_path: meta-llama/Meta-Llama-3-8B-Instruct}
base_runtime: vllm
parameters:
  tp_size: [1, 2]
  max-num-seqs: {type: integer, low: 64, high: 256, step: 64}
optimization: {strategy: grid_search, objective: maximize_throughput}
benchmark: {traffic_scenarios: ["D(1024,256)"], num_concurrency: [8, 32]}
"""
    resp = client.post("/api/tasks/parse", data=text, content_type="text/yaml")
    assert resp.status_code == 200, resp.json
    task = resp.json
    assert task["task_name"] == "from-yaml" and task["optimization"]["max_iterations"] == 8
    assert task["parameters"]["max-num-seqs"]["low"] == 64
    assert client.post("/api/tasks/parse", json={"text": text}).json["task_name"] == "from-yaml"
    layout = client.post("/api/tasks/parse?form=1", json={"text": text}).json
    assert layout["form"]["model"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert layout["form"]["num_concurrency"] == "8, 32" and layout["errors"] == []
    assert [r["name"] for r in layout["rows"]] == ["tp_size", "max-num-seqs"]
    assert layout["rows"][1]["kind"] == "int" and layout["rows"][1]["step"] == "64"
    bad = client.post("/api/tasks/parse", data="task_name: [unclosed", content_type="text/yaml")
    assert bad.status_code == 422 and "invalid YAML" in bad.json["errors"][0]["msg"]
    invalid = client.post("/api/tasks/parse", data="task_name: x\nmodel: {id_or_path: m}\noptimization: {objective: fastest}",
                          content_type="text/yaml")
    assert invalid.status_code == 422
    assert invalid.json["errors"][0]["loc"] == ["optimization", "objective"]
    filled = client.post("/api/tasks/parse?form=1", json={"task_name": "x", "model": {"id_or_path": "m"},
                                                          "optimization": {"objective": "fastest"}})
    assert filled.status_code == 200 and filled.json["form"]["objective"] == "fastest" and filled.json["errors"]


def test_a_field_declared_on_the_model_reaches_every_edge(flask_app):
    """A task field is declared once, on the model, with its form label: the form, both
    conversions, the error mapping, the page's fieldsets and the OpenAPI document follow."""
    from typing import Annotated

    from pydantic import Field

    from app.domain.taskspec import TaskSpec
    from app.domain.taskspec.fields import OnForm, form_fields
    from app.domain.taskspec.sections import Optimization
    from app.domain.taskspec.values import PosInt
    from app.web.api.openapi import task_schemas
    from app.web.forms import form_class, sections
    from app.web.submit import map_errors

    class PatientOptimization(Optimization):
        patience: Annotated[PosInt | None, OnForm("Patience (experiments)")] = None

    class PatientSpec(TaskSpec):
        optimization: PatientOptimization = Field(default_factory=PatientOptimization)

    (field,) = [f for f in form_fields(PatientSpec) if f.name == "patience"]
    assert (field.path, field.kind, field.section) == (("optimization", "patience"), "number", "optimization")
    assert field in sections(PatientSpec)["optimization"]["fields"]
    with flask_app.test_request_context():
        assert form_class(PatientSpec)(formdata=None).patience.label.text == "Patience (experiments)"
    task = form_to_task(form_data(patience="5"), model=PatientSpec)
    assert task["optimization"]["patience"] == 5
    assert PatientSpec.model_validate(task).optimization.patience == 5
    assert task_to_form(task, model=PatientSpec)[0]["patience"] == "5"
    fields, _, summary = map_errors([{"loc": ["optimization", "patience"], "msg": "must be positive"}], [], PatientSpec)
    assert fields == {"patience": ["must be positive"]} and summary == []
    schemas = task_schemas(PatientSpec)
    assert schemas["PatientOptimization"]["properties"]["patience"]["anyOf"][0]["type"] == "integer"
    # Not on the base model: nothing of it leaks into the real form.
    assert "patience" not in {f.name for f in form_fields(TaskSpec)}
