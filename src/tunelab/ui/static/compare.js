// Comparisons: start `tunelab compare` on one recipe with chosen strategy presets, and watch its table fill.
"use strict";

async function renderCompare() {
  const view = document.getElementById("view");
  const data = await api("GET", "/api/compares");
  const recipe = h("input", { id: "compare-recipe", list: "compare-recipes", placeholder: "path/to/recipe.yaml" });
  const recipes = h("datalist", { id: "compare-recipes" }, data.recipes.map(r => h("option", { value: r })));
  const checks = data.presets.map(p => h("label", { title: `lr ${p.lr}: ${p.why}` },
    h("input", { type: "checkbox", value: p.name, checked: p.name === "full" }), ` ${p.name}`));
  const budget = h("input", { id: "compare-budget", placeholder: "default: 200 steps; or 2ep, 5m, recipe" });
  const seeds = h("input", { id: "compare-seeds", placeholder: "default: the recipe's; e.g. 0,1,2" });
  const name = h("input", { id: "compare-name", placeholder: "default: the recipe name" });
  const field = (path, label, input) => h("div", { class: "field", "data-path": path }, h("label", {}, label), input, h("div", { class: "err" }));
  const command = h("pre", { id: "compare-command" });
  const list = h("tbody");
  view.append(h("h1", {}, "Compare strategies"),
    h("p", { class: "muted" }, "One recipe, several strategies, identical data and budget: tunelab compare, run as its own process. Rows fill in as each variant finishes."),
    field("recipe", "Recipe", h("span", {}, recipe, recipes)),
    field("strategies", "Strategies", h("div", { class: "checks" }, checks)),
    h("div", { class: "row" }, field("budget", "Budget per variant", budget), field("seeds", "Seeds", seeds), field("name", "Name", name)),
    command, h("div", { class: "actions" }, h("button", { id: "compare-start", onclick: start }, "Start comparison")),
    h("h2", {}, "Comparisons"), h("table", {}, h("thead", {}, h("tr", {}, ["comparison", "status", "rows", "report"].map(c => h("th", {}, c)))), list));

  async function start() {
    const chosen = checks.map(l => l.querySelector("input")).filter(i => i.checked).map(i => i.value);
    const plan = await api("POST", "/api/compares", { recipe: recipe.value.trim(), strategies: chosen, budget: budget.value.trim(),
                                                      seeds: seeds.value.trim(), name: name.value.trim() });
    command.textContent = plan.command;
    for (const el of view.querySelectorAll(".field")) el.querySelector(".err").textContent = plan.errors[el.dataset.path] || "";
    if (plan.ok) location.hash = `#/compare/${encodeURIComponent(plan.name)}`;
  }
  poll(async () => {
    const fresh = await api("GET", "/api/compares");
    list.replaceChildren(...fresh.compares.map(c => h("tr", {},
      h("td", {}, h("a", { href: `#/compare/${encodeURIComponent(c.name)}` }, c.name)), h("td", {}, badge(c.status)),
      h("td", {}, `${c.rows.filter(r => r.status === "finished").length}/${c.rows.length} finished`),
      h("td", {}, c.report ? h("a", { href: `/files/${c.report}` }, "report") : "–"))));
  }, 2000);
}

function renderComparison(name) {
  const view = document.getElementById("view");
  const status = h("span"), body = h("tbody"), log = h("pre", { id: "compare-log" }), error = h("div", { class: "err" });
  const stop = h("button", { id: "compare-stop", onclick: async () => { stop.disabled = true;
    await api("POST", `/api/compares/${encodeURIComponent(name)}/stop`, {}); } }, "Stop");
  const report = h("a", { hidden: true, id: "compare-report" }, "Open report");
  const command = h("code");
  view.append(h("h1", {}, "Comparison ", name, " ", status), error, h("div", { class: "actions" }, stop, report),
    h("table", { id: "compare-table" }, h("thead", {}, h("tr", {}, ["variant", "seed", "status", "progress", "metric",
      "validation", "test", "trainable", "rank"].map(c => h("th", {}, c)))), body),
    h("p", {}, "Command: ", command), h("h2", {}, "Log (last lines)"), log);
  poll(async () => {
    const c = await api("GET", `/api/compares/${encodeURIComponent(name)}`);
    status.replaceChildren(badge(c.status));
    error.textContent = c.error || "";
    stop.disabled = !c.can_stop;
    report.hidden = !c.report;
    if (c.report) report.href = `/files/${c.report}`;
    command.textContent = c.command || "–";
    body.replaceChildren(...c.rows.map(r => h("tr", { "data-variant": r.variant },
      h("td", {}, r.variant), h("td", {}, r.seed), h("td", {}, badge(r.status)),
      h("td", {}, r.progress ? `${r.progress.step}/${r.progress.total}` : "–"), h("td", {}, r.metric || "–"),
      h("td", { class: "num" }, fmt(r.validation)), h("td", { class: "num" }, fmt(r.test)),
      h("td", { class: "num" }, r.trainable_share != null ? `${(r.trainable_share * 100).toFixed(1)}%` : "–"),
      h("td", { class: "num" }, r.rank ?? (r.error ? h("span", { class: "err" }, r.error) : "–")))));
    log.textContent = c.log || "";
  }, 1500);
}
