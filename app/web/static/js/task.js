// Live task page: polls /api/tasks/<id>/live and /charts every 2 s while the task is not
// terminal, updates the server-rendered page in place and draws the charts (Chart.js,
// vendored in static/vendor/chartjs). A failed poll (e.g. the web process restarting) is
// retried quietly at the next tick.
(function () {
  "use strict";
  const root = document.getElementById("task-live");
  if (!root) return;

  const POLL_MS = 2000;
  const liveUrl = root.dataset.liveUrl;
  const chartsUrl = root.dataset.chartsUrl;
  const objectiveName = root.dataset.objective;
  const view = { page: +root.dataset.page || 1, perPage: +root.dataset.perPage || 50, state: "" };
  let terminal = root.dataset.terminal === "1";
  let timer = null;
  let lastCharts = "";
  const charts = {};
  const paramCharts = {};
  const STATE_COLORS = {
    succeeded: "#18794e", failed: "#c0292b", timed_out: "#c0292b", cancelled: "#8a93a3",
    running: "#1f5fbf", queued: "#b0b8c6", pending: "#b0b8c6",
  };

  const $ = (id) => document.getElementById(id);
  const stateSel = $("state-filter");
  if (stateSel) view.state = stateSel.value;

  // -- small DOM helpers (textContent only: nothing from the server becomes HTML) --------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
    return node;
  }
  const fmt = (v, digits) => (v === null || v === undefined ? "" : Number(v).toFixed(digits));
  const g4 = (v) => (v === null || v === undefined ? "" : Number(v).toPrecision(4).replace(/\.?0+(e|$)/, "$1"));
  const hms = (iso) => (iso ? iso.slice(11, 19) : "");
  const paramText = (p) => Object.entries(p || {}).map(([k, v]) => `${k}=${v}`).join(" ");

  async function getJSON(url) {
    const resp = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
    if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status}`);
    return resp.json();
  }

  function liveQuery() {
    const q = new URLSearchParams({ page: view.page, per_page: view.perPage });
    if (view.state) q.set("state", view.state);
    return `${liveUrl}?${q}`;
  }

  // -- task summary, best configuration, table --------------------------------------------
  function renderTask(t) {
    const status = $("task-status");
    status.textContent = t.status;
    status.className = `status ${t.status}`;
    if (t.elapsed_s !== null && t.elapsed_s !== undefined) $("task-elapsed").textContent = `${t.elapsed_s.toFixed(1)} s`;
    const counts = $("counts");
    counts.replaceChildren(...Object.entries(t.counts).flatMap(([state, n], i) => [
      ...(i ? [" · "] : []), el("span", { "data-state": state }, `${state}: `, el("b", { text: String(n) })),
    ]));
    const err = $("task-error");
    err.textContent = t.error || "";
    err.hidden = !t.error;
    const stop = $("task-stop");
    stop.textContent = t.stop || "";
    stop.hidden = !t.stop;
    if (t.terminal) {
      const form = $("cancel-form");
      if (form) form.remove();
    }
    renderBest(t);
    if (t.pareto_set) renderPareto(t.pareto_set);
    if (t.repeats) renderVerdict(t.repeats);
    if (t.importance) renderImportance(t.importance);
  }

  // -- which flags mattered ------------------------------------------------------------------
  const SVG = "http://www.w3.org/2000/svg";

  function bar(share) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "bar");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `${Math.round(100 * share)} %`);
    const rect = document.createElementNS(SVG, "rect");
    for (const [k, v] of [["x", "0"], ["y", "0"], ["width", `${(100 * share).toFixed(1)}%`], ["height", "100%"]]) rect.setAttribute(k, v);
    svg.append(rect);
    return svg;
  }

  function renderImportance(imp) {
    const box = $("importance-section");
    if (!box) return;
    const s = imp.experiments === 1 ? "" : "s";
    const note = el("p", { class: "hint", id: "importance-note",
      text: `${imp.method} over ${imp.experiments} measured experiment${s} of the search: each flag's share of what sets the best apart${imp.note ? ` — ${imp.note}` : ""}.` });
    const tables = imp.objectives.map((o) => el("table", { class: "importance", "data-objective": o.name },
      el("thead", {}, el("tr", {}, el("th", { text: "Flag" }), el("th", { text: `Share for ${o.label} (${o.unit})` }), el("th", {}))),
      el("tbody", {}, ...o.params.map((p) => el("tr", {}, el("td", {}, el("code", { text: `--${p.name}` })),
        el("td", { class: "num", text: `${Math.round(100 * p.importance)} %` }), el("td", {}, bar(p.importance)))))));
    box.replaceChildren(note, ...tables);
  }

  // -- what the repeats of the top configurations say (the page reloads itself to add the
  //    section the first time: its table is rendered by the server) ---------------------------
  function renderVerdict(v) {
    const box = $("verdict-section");
    if (!box) { if (!terminal) window.location.reload(); return; }
    const unit = v.objective.unit;
    const parts = [];
    if (v.pending) parts.push(el("p", { class: "note", id: "verdict-pending", text: `Measuring the top configurations again: ${v.pending} run${v.pending === 1 ? "" : "s"} to go.` }));
    if (v.winner) {
      const w = v.winner;
      parts.push(v.tie
        ? el("p", { id: "verdict" }, el("strong", { text: "Tie" }), `: #${w.runs[0].seq} and ${v.tied.map((t) => `#${t.runs[0].seq}`).join(", ")} are within the noise (the runner-up's best run scored at least as well as the winner's worst); any of these launch commands is the answer.`)
        : el("p", { id: "verdict" }, el("strong", { text: "Winner" }), `: #${w.runs[0].seq}, ${g4(w.relied)} ${unit} to rely on (${v.objective.direction === "minimize" ? "the worst" : "the mean"} of ${w.runs.length} runs), clear of the runner-up's runs.`));
      [w, ...v.tied].forEach((c, i) => parts.push(el("div", { class: "command-box" },
        el("pre", { class: "command", id: `verdict-command-${i + 1}`, text: c.launch_command_shell }),
        el("button", { type: "button", "data-copy": `verdict-command-${i + 1}`, text: "Copy" }))));
    }
    const rows = v.configurations.map((c) => el("tr", {},
      el("td", {}, el("a", { class: "exp-link", href: `/experiments/${c.runs[0].id}`, text: String(c.runs[0].seq) })),
      el("td", {}, el("code", { text: paramText(c.params) })),
      el("td", { text: String(c.runs.length) }),
      el("td", { class: "num", text: `${g4(c.mean)} ± ${Number(c.std).toPrecision(2)}` }),
      el("td", { class: "num", text: `${g4(c.low)} – ${g4(c.high)}` }),
      el("td", { class: "num" }, el("strong", { text: g4(c.relied) })),
      el("td", { text: c.slo_ok ? "met" : "broken" })));
    const head = ["#", "Parameters", "Runs", `Mean ± std (${unit})`, `Range (${unit})`, `To rely on (${unit})`, "SLOs in every run"];
    parts.push(el("table", { id: "verdict-table" }, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { text: h })))),
      el("tbody", {}, ...rows)));
    box.replaceChildren(...parts);
  }

  // -- the Pareto set of a multi-objective task: pick a point, copy its launch command ------
  let paretoPoints = [];
  let pickedId = null;

  function renderPareto(ps) {
    const body = $("pareto-body");
    if (!body) return;
    paretoPoints = ps.points;
    if (!paretoPoints.some((p) => p.id === pickedId)) pickedId = paretoPoints.length ? paretoPoints[0].id : null;
    const units = ps.objectives.map((o) => o.unit);
    const rows = paretoPoints.map((p) => {
      const radio = el("input", { type: "radio", name: "pareto-pick", value: String(p.id), "aria-label": `pick #${p.seq}` });
      radio.checked = p.id === pickedId;
      return el("tr", { "data-id": String(p.id), class: p.id === pickedId ? "picked" : null },
        el("td", {}, radio),
        el("td", {}, el("a", { class: "exp-link", href: `/experiments/${p.id}`, text: String(p.seq) })),
        ...p.values.map((v, k) => el("td", { class: "num", text: `${g4(v)} ${units[k]}` })),
        el("td", {}, el("code", { text: paramText(p.params) })));
    });
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: String(3 + units.length), text: "None yet." })));
    body.replaceChildren(...rows);
    const hv = $("pareto-hypervolume");
    if (hv) hv.textContent = g4(ps.hypervolume);
    showPicked();
  }

  function showPicked() {
    const point = paretoPoints.find((p) => p.id === pickedId);
    const pre = $("pareto-command");
    if (pre) pre.textContent = point ? point.launch_command_shell : "";
    document.querySelectorAll("#pareto-body tr").forEach((tr) => {
      const on = +tr.dataset.id === pickedId;
      tr.classList.toggle("picked", on);
      const radio = tr.querySelector("input[type=radio]");
      if (radio) radio.checked = on;
    });
  }

  function pick(id) {
    pickedId = id;
    showPicked();
  }

  function renderBest(t) {
    const box = $("best-section");
    const b = t.best;
    if (!b) {
      box.replaceChildren(el("p", { id: "best-none", text: "None yet." }));
      return;
    }
    const rows = Object.entries(b.params).map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: String(v) })));
    rows.push(el("tr", {}, el("th", { text: `${t.objective_label} (${t.objective_unit})` }),
      el("td", {}, el("strong", { id: "best-value", text: `${g4(b.value)} ${t.objective_unit}` }),
        ...(b.penalty ? [` (score with SLO penalty ${g4(b.objective)})`] : []), " (experiment ",
        el("a", { class: "exp-link", href: `/experiments/${b.id}`, text: `#${b.seq}` }), ")")));
    rows.push(el("tr", {}, el("th", { text: "GPUs" }), el("td", { text: (b.gpus || []).join(", ") })));
    const command = b.launch_command_shell || (b.launch_command || []).join(" ");
    const copy = el("button", { type: "button", id: "copy-command", text: "Copy" });
    box.replaceChildren(
      el("table", { id: "best" }, ...rows),
      el("div", { class: "command-box" }, el("pre", { class: "command", id: "best-command", text: command }), copy),
    );
  }

  function copyCommand(preId, buttonId, node) {
    const pre = $(preId);
    const button = node || $(buttonId);
    if (!pre || !button) return;
    const done = () => { button.textContent = "Copied"; setTimeout(() => { button.textContent = "Copy"; }, 1500); };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(pre.textContent).then(done, () => selectText(pre));
    } else {
      selectText(pre);
      try { document.execCommand("copy"); done(); } catch (e) { /* the text stays selected */ }
    }
  }

  function selectText(node) {
    const range = document.createRange();
    range.selectNodeContents(node);
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }

  function renderTable(p) {
    view.page = p.page;
    const body = $("experiments-body");
    const rows = p.experiments.map((e) => {
      const km = e.key_metrics || {};
      const value = e.measured ? e.measured[objectiveName] : e.objective;
      const objective = el("td", { class: "num" }, value === null || value === undefined ? "" : g4(value));
      if (e.objective !== null && (e.slo_ok === false || e.penalty)) {
        objective.append(" ", el("span", { class: "error", title: `score with SLO penalty ${g4(e.objective)}`, text: "SLO" }));
      }
      const why = e.error || e.wait_reason || "";
      return el("tr", { class: e.state, "data-seq": String(e.seq) },
        el("td", {}, el("a", { class: "exp-link", href: `/experiments/${e.id}`, text: String(e.seq) }),
          ...(e.warm_from ? [" ", el("small", { class: "warm", text: "warm" })] : []),
          ...(e.repeat_of ? [" ", el("small", { title: `measures an experiment again, seed ${e.seed}`, text: "repeat" })] : [])),
        el("td", {}, el("code", { text: paramText(e.params) })),
        el("td", { text: e.phase ? `${e.state} (${e.phase})` : e.state }),
        el("td", { text: String(e.attempts) }),
        el("td", { text: (e.gpus || []).join(", ") }),
        el("td", { text: e.worker || "" }),
        el("td", { title: e.started_at || "", text: hms(e.started_at) }),
        el("td", { title: e.finished_at || "", text: hms(e.finished_at) }),
        el("td", { class: "num", text: fmt(km.output_throughput_per_gpu, 1) }),
        el("td", { class: "num", text: fmt(km.p99_ttft_ms, 1) }),
        el("td", { class: "num", text: fmt(km.mean_tpot_ms, 2) }),
        objective,
        el("td", { title: why }, ...(e.failure ? [el("strong", { class: "failure", text: e.failure }), " "] : []),
          ...(e.stop ? [el("span", { class: "note stopped-early", text: e.stop }), " "] : []),
          why.length > 120 ? `${why.slice(0, 117)}...` : why),
      );
    });
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "13", text: "No experiment yet." })));
    body.replaceChildren(...rows);
    const info = $("page-info");
    if (info) info.textContent = `page ${p.page} of ${p.pages} · ${p.total} experiments`;
    const prev = $("prev-page");
    const next = $("next-page");
    if (prev) prev.hidden = p.page <= 1;
    if (next) next.hidden = p.page >= p.pages;
  }

  // -- charts -------------------------------------------------------------------------------
  function goToExperiment(chart, elements) {
    if (!elements.length) return;
    const { datasetIndex, index } = elements[0];
    const point = chart.data.datasets[datasetIndex].data[index];
    if (point && point.id) window.location.href = `/experiments/${point.id}`;
  }

  function tooltipLabel(ctx) {
    const d = ctx.raw || {};
    const parts = [d.seq !== undefined ? `#${d.seq}` : ctx.dataset.label];
    if (Array.isArray(d.x)) parts.push(`${d.gpu || ""} ${fmt(d.x[0], 1)}–${fmt(d.x[1], 1)} s ${d.state || ""}`);
    else parts.push(`${typeof d.x === "number" ? g4(d.x) : d.x}, ${g4(d.y)}${d.unit ? " " + d.unit : ""}`);
    if (d.state && !Array.isArray(d.x)) parts.push(d.state);
    if (d.score !== undefined && d.score !== null && d.score !== d.y) parts.push(`(score with SLO penalty ${g4(d.score)})`);
    return parts.join(" ");
  }

  function baseOptions(xTitle, yTitle, extra) {
    return Object.assign({
      animation: false,
      maintainAspectRatio: false,
      parsing: true,
      onClick: (evt, els, chart) => goToExperiment(chart, els),
      plugins: { tooltip: { callbacks: { label: tooltipLabel } }, legend: { labels: { boxWidth: 10 } } },
      scales: {
        x: { type: "linear", title: { display: true, text: xTitle } },
        y: { type: "linear", title: { display: true, text: yTitle } },
      },
    }, extra || {});
  }

  function upsert(key, canvas, config) {
    const existing = charts[key];
    if (existing && existing.config.type === config.type) {
      existing.data.datasets = config.data.datasets;
      if (config.data.labels) existing.data.labels = config.data.labels;
      existing.options = config.options;
      existing.update("none");
      return existing;
    }
    if (existing) existing.destroy();
    charts[key] = new Chart(canvas, config);
    return charts[key];
  }

  const axisTitle = (c) => `${c.objective_label} (${c.objective_unit})`;

  // Measured figures in the objective's unit; SLO-breaking points are marked, not inflated
  // by their penalty (the penalised score that ranks them is in the tooltip).
  function drawObjective(c) {
    const o = c.objective;
    const asXY = (p) => ({ x: p.t, y: p.y, seq: p.seq, id: p.id, score: p.score, slo: p.slo });
    const met = o.points.filter((p) => p.slo === "met").map(asXY);
    const penalised = o.points.filter((p) => p.slo !== "met").map((p) => Object.assign(asXY(p), { state: "soft SLO broken" }));
    const broken = o.marks.filter((m) => m.y !== null).map((m) => Object.assign(asXY(m), { state: "hard SLO broken" }));
    const failed = o.marks.filter((m) => m.y === null).map((m) => ({ x: m.t, y: 0.04, seq: m.seq, id: m.id, state: m.state }));
    upsert("objective", $("chart-objective"), {
      type: "scatter",
      data: {
        datasets: [
          { label: `measured, SLOs met (${o.direction})`, data: met, backgroundColor: "#1f5fbf", pointRadius: 3 },
          { label: "running best", data: o.best.map(asXY), type: "line", stepped: "after", borderColor: "#18794e",
            backgroundColor: "#18794e", pointRadius: 0, borderWidth: 2 },
          { label: "soft SLO broken (ranked by penalised score)", data: penalised, backgroundColor: "#e0a100",
            pointStyle: "triangle", pointRadius: 5 },
          { label: "hard SLO broken (never the best)", data: broken, backgroundColor: "#c0292b", pointStyle: "triangle",
            pointRadius: 5 },
          { label: "failed / timed out / cancelled", data: failed, yAxisID: "marks", backgroundColor: "#c0292b",
            borderColor: "#c0292b", pointStyle: "crossRot", pointRadius: 5 },
        ],
      },
      options: baseOptions("seconds since the task started (finish time)", axisTitle(c), {
        scales: {
          x: { type: "linear", title: { display: true, text: "seconds since the task started (finish time)" } },
          y: { type: "linear", title: { display: true, text: axisTitle(c) } },
          marks: { type: "linear", display: false, min: 0, max: 1 },
        },
      }),
    });
  }

  const PALETTE = ["#1f5fbf", "#7a3fb8", "#0f8a8a", "#b85c1f", "#5b6475"];

  function drawPareto(c) {
    const datasets = [];
    c.pareto.scenarios.forEach((s, i) => {
      const color = PALETTE[i % PALETTE.length];
      const label = c.pareto.scenarios.length > 1 ? `${s.scenario} ` : "";
      datasets.push({ label: `${label}experiments`, data: s.points,
        backgroundColor: s.points.map((p) => (p.slo_ok ? color : "#e0a100")), pointRadius: 3 });
      datasets.push({ label: `${label}Pareto front`, data: s.front, type: "line", showLine: true,
        borderColor: "#c0292b", backgroundColor: "#c0292b", pointRadius: 4, borderWidth: 1.5 });
    });
    const level = c.pareto.level !== null ? ` (at load ${c.pareto.level})` : " (at the highest load)";
    upsert("pareto", $("chart-pareto"), {
      type: "scatter",
      data: { datasets },
      options: baseOptions(`output tokens/s per GPU${level}`, "p99 TTFT (ms)"),
    });
  }

  function drawParams(c) {
    const box = $("param-charts");
    const names = new Set(c.params.params.map((p) => p.name));
    for (const name of Object.keys(paramCharts)) {
      if (!names.has(name)) { paramCharts[name].chart.destroy(); paramCharts[name].node.remove(); delete paramCharts[name]; }
    }
    for (const p of c.params.params) {
      let entry = paramCharts[p.name];
      if (!entry) {
        const canvas = el("canvas", {});
        const node = el("div", {}, el("div", { class: "hint", text: p.name }), el("div", { class: "canvas-box" }, canvas));
        box.append(node);
        entry = paramCharts[p.name] = { node, canvas, chart: null };
      }
      const data = p.points.map((pt) => ({ x: p.numeric ? pt.x : String(pt.x), y: pt.y, seq: pt.seq, id: pt.id,
        score: pt.score, unit: c.objective_unit, state: pt.slo === "met" ? "" : `SLO ${pt.slo}` }));
      const colors = p.points.map((pt) => (pt.slo === "met" ? "#1f5fbf" : pt.slo === "penalised" ? "#e0a100" : "#c0292b"));
      const options = baseOptions(p.name, axisTitle(c), {
        plugins: { legend: { display: false }, tooltip: { callbacks: { label: tooltipLabel } } },
      });
      if (!p.numeric) options.scales.x = { type: "category", labels: p.values.map(String), offset: true, title: { display: true, text: p.name } };
      const config = { type: "scatter", data: { datasets: [{ label: p.name, data, backgroundColor: colors, pointRadius: 3 }] }, options };
      if (entry.chart) {
        entry.chart.data = config.data;
        entry.chart.options = options;
        entry.chart.update("none");
      } else {
        entry.chart = new Chart(entry.canvas, config);
      }
    }
    if (!c.params.params.length && !box.firstChild) box.append(el("p", { class: "hint", text: "No objective yet." }));
    else if (c.params.params.length) box.querySelectorAll(":scope > p.hint").forEach((n) => n.remove());
  }

  function drawTimeline(c) {
    const tl = c.timeline;
    const data = tl.bars.map((b) => ({ x: [b.start, b.end], y: b.gpu, gpu: b.gpu, seq: b.seq, id: b.id, state: b.open ? "holding" : b.state }));
    $("chart-timeline-box").style.height = `${Math.max(160, 40 + 26 * tl.gpus.length)}px`;
    upsert("timeline", $("chart-timeline"), {
      type: "bar",
      data: {
        labels: tl.gpus,
        datasets: [{ label: "experiment on GPU", data, borderSkipped: false, barPercentage: 0.9, categoryPercentage: 0.9, grouped: false,
          backgroundColor: tl.bars.map((b) => (b.open ? "#1f5fbf" : STATE_COLORS[b.state] || "#8a93a3")),
          borderColor: "#ffffff", borderWidth: 1 }],
      },
      options: baseOptions("seconds since the task started", "GPU", {
        indexAxis: "y",
        scales: {
          x: { type: "linear", min: 0, title: { display: true, text: "seconds since the task started" } },
          y: { type: "category", labels: tl.gpus },
        },
        plugins: { legend: { display: false }, tooltip: { callbacks: { label: tooltipLabel } } },
      }),
    });
  }

  function drawFront(c) {
    const f = c.front;
    if (!f || !$("chart-front")) return;
    const [ox, oy] = f.objectives;
    const asXY = (p) => ({ x: p.x, y: p.y, seq: p.seq, id: p.id });
    const onFront = f.points.filter((p) => p.front).sort((a, b) => a.x - b.x);
    upsert("front", $("chart-front"), {
      type: "scatter",
      data: {
        datasets: [
          { label: "Pareto front (click to pick)", data: onFront.map(asXY), type: "line", showLine: true,
            borderColor: "#c0292b", backgroundColor: "#c0292b", pointRadius: 5, borderWidth: 1.5 },
          { label: "other experiments that met every SLO", data: f.points.filter((p) => !p.front).map(asXY),
            backgroundColor: "#1f5fbf", pointRadius: 3 },
        ],
      },
      options: baseOptions(`${ox.label} (${ox.unit})`, `${oy.label} (${oy.unit})`, {
        onClick: (evt, els, chart) => {
          if (!els.length) return;
          const point = chart.data.datasets[els[0].datasetIndex].data[els[0].index];
          if (els[0].datasetIndex === 0 && point) pick(point.id);
          else goToExperiment(chart, els);
        },
      }),
    });
  }

  function renderCharts(c) {
    if (typeof Chart === "undefined") return;  // the vendored script did not load: tables still work
    const text = JSON.stringify(c);
    if (text === lastCharts) return;
    lastCharts = text;
    for (const draw of [drawFront, drawObjective, drawPareto, drawParams, drawTimeline]) {
      try { draw(c); } catch (e) { console.error(e); }  // one broken chart must not stop the others
    }
  }

  // -- polling ------------------------------------------------------------------------------
  function indicator(ok) {
    const node = $("live-indicator");
    if (!node) return;
    node.textContent = terminal ? "" : ok ? "live" : "reconnecting...";
    node.classList.toggle("offline", !ok);
  }

  async function refreshTable() {
    try {
      const data = await getJSON(liveQuery());
      renderTable(data.experiments);
      renderTask(data.task);
    } catch (e) { indicator(false); }
  }

  async function tick() {
    timer = null;
    try {
      const [live, chartData] = await Promise.all([getJSON(liveQuery()), getJSON(chartsUrl)]);
      terminal = !!live.task.terminal;
      renderTask(live.task);
      renderTable(live.experiments);
      renderCharts(chartData);
      indicator(true);
    } catch (e) {
      indicator(false);  // e.g. the web process restarting: try again at the next tick
    }
    if (!terminal) timer = setTimeout(tick, POLL_MS);
  }

  // -- controls (the links and the form still work without JS) ------------------------------
  root.addEventListener("click", (evt) => {
    const radio = evt.target.closest("input[name=pareto-pick]");
    if (radio) { pick(+radio.value); return; }
    const copy = evt.target.closest("button[data-copy]");
    if (copy) { copyCommand(copy.dataset.copy, copy.id || null, copy); return; }
    const target = evt.target.closest("#prev-page, #next-page, #copy-command, #copy-pareto");
    if (!target) return;
    evt.preventDefault();
    if (target.id === "copy-command") { copyCommand("best-command", "copy-command"); return; }
    if (target.id === "copy-pareto") { copyCommand("pareto-command", "copy-pareto"); return; }
    view.page = Math.max(1, view.page + (target.id === "next-page" ? 1 : -1));
    history.replaceState(null, "", `?${new URLSearchParams(liveQuery().split("?")[1])}`);
    refreshTable();
  });
  if (stateSel) {
    stateSel.addEventListener("change", () => {
      view.state = stateSel.value;
      view.page = 1;
      refreshTable();
    });
  }

  tick();  // draws the charts once even for a finished task, then polls while it runs
})();
