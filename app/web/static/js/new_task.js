// The New task page: parameter rows, filling the form from a task file, live preview.
(function () {
  "use strict";
  var form = document.getElementById("new-task");
  if (!form) return;
  form.classList.add("js");
  document.documentElement.classList.add("js");
  var params = document.getElementById("params");
  var rowTemplate = document.getElementById("param-row-template");
  var preview = document.getElementById("preview");
  var csrf = form.querySelector("input[name=csrf_token]");

  function headers(extra) {
    var h = extra || {};
    if (csrf) h["X-CSRFToken"] = csrf.value;
    return h;
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function fmtLoc(loc) {
    var out = "";
    (loc || []).forEach(function (p) {
      out += typeof p === "number" ? "[" + p + "]" : (out ? "." : "") + p;
    });
    return out;
  }

  // -- parameter rows ----------------------------------------------------------------------

  function syncKind(row) {
    var kind = row.querySelector("select[name=param_kind]");
    row.setAttribute("data-kind", kind ? kind.value : "values");
  }

  function addRow(values) {
    var row = rowTemplate.content.firstElementChild.cloneNode(true);
    params.appendChild(row);
    if (values) {
      ["name", "kind", "values", "low", "high", "step", "log"].forEach(function (k) {
        var input = row.querySelector("[name=param_" + k + "]");
        if (input && values[k] !== undefined && values[k] !== null) input.value = values[k];
      });
    }
    syncKind(row);
    return row;
  }

  document.getElementById("add-param").addEventListener("click", function () {
    addRow().querySelector("input[name=param_name]").focus();
    schedulePreview();
  });

  params.addEventListener("click", function (ev) {
    var button = ev.target.closest(".remove-param");
    if (!button) return;
    var row = button.closest(".param-row");
    row.parentNode.removeChild(row);
    if (!params.querySelector(".param-row")) addRow();
    schedulePreview();
  });

  params.addEventListener("change", function (ev) {
    if (ev.target.name === "param_kind") syncKind(ev.target.closest(".param-row"));
  });
  Array.prototype.forEach.call(params.querySelectorAll(".param-row"), syncKind);

  // -- sections that depend on a choice ----------------------------------------------------

  function showGroup(group, shown) {
    Array.prototype.forEach.call(document.querySelectorAll(".group-" + group), function (f) {
      f.style.display = shown ? "" : "none";
    });
  }

  function toggleSections() {
    var mode = document.getElementById("deployment_mode").value;
    var runtime = document.getElementById("base_runtime").value;
    showGroup("sim", mode === "sim" || runtime === "sim");
    showGroup("docker", mode === "docker");
    var configs = document.getElementById("list_configs");
    showGroup("list", document.getElementById("strategy").value === "list" || configs.value.trim());
  }
  document.getElementById("base_runtime").addEventListener("change", function () {
    if (this.value === "sim") document.getElementById("deployment_mode").value = "sim";
    toggleSections();
  });
  ["deployment_mode", "strategy"].forEach(function (id) {
    document.getElementById(id).addEventListener("change", toggleSections);
  });
  toggleSections();

  // -- fill from a task file ---------------------------------------------------------------

  var fillErrors = document.getElementById("task-json-errors");

  function showFillErrors(errors) {
    fillErrors.innerHTML = "";
    errors.forEach(function (e) {
      var where = fmtLoc(e.loc);
      fillErrors.appendChild(el("li", "error", (where ? where + ": " : "") + e.msg));
    });
  }

  function setField(id, value) {
    var input = document.getElementById(id);
    if (!input) return;
    if (input.type === "checkbox") input.checked = !!value;
    else input.value = value === undefined || value === null ? "" : value;
  }

  // The form's fields, as the server rendered them from the task model (data-task-field).
  var fields = form.querySelectorAll("[data-task-field]");

  function fill(layout) {
    var data = layout.form || {};
    Array.prototype.forEach.call(fields, function (input) {
      var id = input.id;
      if (input.tagName !== "SELECT") {
        setField(id, data[id]);
        return;
      }
      var value = data[id] || (id === "deployment_mode" && data.base_runtime === "sim" ? "sim" : input.dataset.default)
        || input.options[0].value;
      if (!Array.prototype.some.call(input.options, function (o) { return o.value === value; })) {
        var opt = el("option", "", value);
        opt.value = value;
        input.appendChild(opt);
      }
      input.value = value;
    });
    var extra = layout.extra || {};
    setField("extra_json", Object.keys(extra).length ? JSON.stringify(extra, null, 2) : "");
    if (Object.keys(extra).length) document.getElementById("advanced").open = true;
    params.innerHTML = "";
    (layout.rows || []).forEach(function (r) { addRow(r); });
    addRow();
    toggleSections();
    schedulePreview();
  }

  function fillFromText(text) {
    fillErrors.innerHTML = "";
    if (!text.trim()) {
      showFillErrors([{loc: [], msg: "paste a task file or choose one first"}]);
      return;
    }
    var body, contentType;
    var trimmed = text.trim();
    if (trimmed.charAt(0) === "{") {
      try {
        body = JSON.stringify(JSON.parse(trimmed));  // JSON: checked here, laid out by the server
      } catch (err) {
        showFillErrors([{loc: [], msg: "invalid JSON: " + err.message}]);
        return;
      }
      contentType = "application/json";
    } else {
      body = JSON.stringify({text: text});  // YAML: the server parses it
      contentType = "application/json";
    }
    fetch(form.getAttribute("data-parse-url"), {
      method: "POST", body: body, headers: headers({"Content-Type": contentType}), credentials: "same-origin"
    }).then(function (resp) {
      return resp.json().then(function (data) { return {ok: resp.ok, data: data}; });
    }).then(function (res) {
      if (!res.ok || !res.data.form) {
        showFillErrors(res.data.errors || [{loc: [], msg: "the file could not be read"}]);
        return;
      }
      fill(res.data);
      if (res.data.errors && res.data.errors.length) {
        showFillErrors([{loc: [], msg: "The form is filled, but the task has problems (see the preview):"}]);
      }
    }).catch(function (err) {
      showFillErrors([{loc: [], msg: "could not reach the server: " + err}]);
    });
  }

  document.getElementById("fill-from-json").addEventListener("click", function () {
    fillFromText(document.getElementById("task-json").value);
  });
  document.getElementById("task-file").addEventListener("change", function () {
    var file = this.files && this.files[0];
    if (!file) return;
    var reader = new FileReader();
    reader.onload = function () {
      document.getElementById("task-json").value = reader.result;
      fillFromText(String(reader.result));
    };
    reader.readAsText(file);
  });

  // -- preview -----------------------------------------------------------------------------

  var timer = null;
  var seq = 0;

  function schedulePreview() {
    if (timer) clearTimeout(timer);
    timer = setTimeout(runPreview, 400);
  }

  function renderPreview(p) {
    preview.innerHTML = "";
    if (p.errors && p.errors.length) {
      preview.appendChild(el("strong", "", "Not valid yet:"));
      var ul = el("ul");
      p.errors.forEach(function (e) {
        var where = fmtLoc(e.loc);
        ul.appendChild(el("li", "error", (where ? where + ": " : "") + e.msg));
      });
      preview.appendChild(ul);
      return;
    }
    var gpus = p.gpus_per_experiment || [1, 1];
    var gpuText = gpus[0] === gpus[1] ? String(gpus[0]) : gpus[0] + " to " + gpus[1];
    var line = el("p");
    line.appendChild(el("strong", "", p.experiments + " experiment" + (p.experiments === 1 ? "" : "s")));
    line.appendChild(document.createTextNode(", each on " + gpuText + " GPU" + (gpus[1] === 1 ? "" : "s") +
      (p.grid_size ? " · search space: " + p.grid_size + " parameter set" + (p.grid_size === 1 ? "" : "s") : "")));
    preview.appendChild(line);
    (p.notes || []).forEach(function (n) { preview.appendChild(el("p", "note", n)); });
  }

  function runPreview() {
    var mine = ++seq;
    var body = new URLSearchParams(new FormData(form));
    fetch(form.getAttribute("data-preview-url"), {
      method: "POST", body: body, headers: headers(), credentials: "same-origin"
    }).then(function (resp) { return resp.json(); }).then(function (p) {
      if (mine === seq) renderPreview(p);
    }).catch(function () {
      if (mine === seq) preview.textContent = "Preview unavailable.";
    });
  }

  form.addEventListener("input", schedulePreview);
  form.addEventListener("change", schedulePreview);
  schedulePreview();
})();
