// The list of runs (with the queue) and one run's page: live progress, curves, log, saved recipe, stop/resume.
"use strict";

function renderRuns() {
  const view = document.getElementById("view");
  const body = h("tbody");
  const queue = h("div");
  view.append(h("h1", {}, "Runs"),
    h("table", { id: "runs" }, h("thead", {}, h("tr", {}, ["run", "status", "task", "model", "strategy", "metric",
      "validation", "test", "steps", "started"].map(c => h("th", {}, c)))), body),
    h("h2", {}, "Queue"), h("p", { class: "muted" }, "Queued runs start one after another, when nothing else the app started is running. The queue is kept on disk."),
    queue);
  poll(async () => {
    const data = await api("GET", "/api/runs");
    body.replaceChildren(...data.runs.map(r => {
      const hl = r.headline || {};
      const step = r.progress ? `${r.progress.step}/${r.progress.total}` : fmt(hl.steps);
      return h("tr", { "data-run": r.name },
        h("td", {}, h("a", { href: `#/run/${encodeURIComponent(r.name)}` }, r.name)), h("td", {}, badge(r.status)),
        h("td", {}, r.task || "–"), h("td", {}, r.model || "–"), h("td", {}, r.strategy || "–"),
        h("td", {}, hl.metric || r.metric || "–"), h("td", { class: "num" }, fmt(hl.validation)),
        h("td", { class: "num" }, fmt(hl.test)), h("td", { class: "num" }, step), h("td", {}, when(r.started)));
    }));
    if (!data.runs.length) body.append(h("tr", {}, h("td", { colspan: 10, class: "muted" }, "No runs yet: start one from New run.")));
    queue.replaceChildren(data.queue.length ? h("table", { id: "queue" }, h("tbody", {}, data.queue.map((q, i) =>
      h("tr", { "data-queued": q.name }, h("td", {}, `${i + 1}. ${q.name}`), h("td", {}, h("code", {}, q.command)),
        h("td", {}, h("button", { class: "secondary", onclick: async () => { await api("DELETE", `/api/queue/${q.id}`); } }, "Remove"))))))
      : h("p", { class: "muted" }, "Empty."));
  }, 1500);
}

function curves(run) {
  const records = run.metrics || [];
  const train = records.filter(r => r.train_loss !== undefined && r.train_loss !== null).map(r => [r.step, r.train_loss]);
  const val = records.filter(r => r.split === "validation");
  const charts = [lineChart("loss", [
    { label: "train loss", color: "#0b62c4", points: train },
    { label: "validation loss", color: "#d9480f", points: val.filter(r => r.loss != null).map(r => [r.step, r.loss]) }])];
  const metric = run.metric;
  if (metric && metric !== "loss") {
    charts.push(lineChart(`validation ${metric}`, [{ label: metric, color: "#1b7f3b",
      points: val.filter(r => r[metric] != null).map(r => [r.step, r[metric]]) }]));
  }
  return charts;
}

function renderRun(name) {
  const view = document.getElementById("view");
  const status = h("span"), error = h("div", { class: "err", id: "run-error" }), failed = h("div", { class: "err", id: "action-error" });
  const stop = h("button", { id: "stop", onclick: async () => { stop.disabled = true; await act("stop"); } }, "Stop");
  const resume = h("button", { id: "resume", class: "secondary", onclick: async () => { resume.disabled = true; await act("resume"); } }, "Resume");
  const report = h("a", { id: "report", href: "#", hidden: true }, "Open report");
  const again = h("a", { id: "again", href: "#/new", hidden: true }, "New run from this config");
  const fill = h("div"), progress = h("span", { id: "progress-text", class: "muted" });
  const figures = h("div"), charts = h("div", { class: "grid charts", id: "charts" });
  const log = h("pre", { id: "log" }), recipe = h("pre", { id: "recipe" }), command = h("code", { id: "command" });
  const checkpoints = h("span", { id: "checkpoints", class: "muted" });
  view.append(h("h1", {}, "Run ", h("span", { id: "run-name" }, name), " ", status), error, failed,
    h("div", { class: "actions" }, stop, resume, report, again),
    h("div", { class: "bar" }, fill), progress, figures, charts,
    h("h2", {}, "Log (last lines)"), log,
    h("h2", {}, "Saved config"), h("p", { class: "muted" }, "The run's own recipe.yaml: the resolved recipe it ran with (defaults filled in), not the form."), recipe,
    h("p", {}, "Command: ", command), h("p", {}, "Checkpoints: ", checkpoints));

  async function act(what) {
    try { await api("POST", `/api/runs/${encodeURIComponent(name)}/${what}`, {}); failed.textContent = ""; }
    catch (e) { failed.textContent = e.message; }
  }
  let drawn = -1;
  poll(async () => {
    const run = await api("GET", `/api/runs/${encodeURIComponent(name)}`);
    status.replaceChildren(badge(run.status));
    error.textContent = run.error || "";
    stop.disabled = !run.can_stop;
    resume.disabled = !run.can_resume;
    report.hidden = !run.report;
    again.hidden = !run.recipe_path;
    if (run.recipe_path) again.href = `#/new?base=${encodeURIComponent(run.recipe_path)}`;
    if (run.report) report.href = `/files/${run.report.split("/").map(encodeURIComponent).join("/")}`;
    const p = run.progress;
    const done = run.status === "finished" ? 1 : p && p.total ? p.step / p.total : 0;
    fill.style.width = `${Math.round(done * 100)}%`;
    progress.textContent = p ? `step ${p.step} of ${p.total}` + (p.loss != null ? ` · loss ${fmt(p.loss)}` : "") +
      (p.examples_per_second ? ` · ${fmt(p.examples_per_second, 1)} examples/s` : "") : (run.status === "starting" ? "loading data and model…" : "");
    progress.dataset.step = p ? p.step : "";
    const hl = run.headline;
    figures.replaceChildren(hl ? h("p", { id: "headline" }, `validation ${hl.metric} ${fmt(hl.validation)} (best checkpoint) · test ${fmt(hl.test)} · ${fmt(hl.steps)} steps · ${fmt(hl.train_seconds, 1)} s training`) : "");
    if ((run.metrics || []).length !== drawn) {
      drawn = (run.metrics || []).length;
      charts.replaceChildren(...curves(run));
    }
    log.textContent = run.log || "(no output yet)";
    recipe.textContent = run.recipe_yaml || "(the run folder is not written yet)";
    command.textContent = run.command || "–";
    checkpoints.textContent = run.checkpoints.length ? run.checkpoints.join(", ") : "none yet";
  }, 1000);
}
