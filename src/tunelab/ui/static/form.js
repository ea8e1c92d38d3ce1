// The new-run form, built from the recipe schema the server sends (/api/form): every key with its help text,
// "advanced" keys folded away, pydantic's errors shown at their field, and the command it will run, kept up to date.
"use strict";

let schema = null;

async function renderNewRun(startFrom = "") {
  const view = document.getElementById("view");
  schema = schema || await api("GET", "/api/form");
  const fields = schema.fields.map((f, i) => ({ ...f, id: `f-${i}` }));
  const baseSelect = h("select", { id: "base-select" }, h("option", { value: "" }, "(blank form)"),
    schema.recipes.map(r => h("option", { value: r }, r)), h("option", { value: "__path" }, "another file…"));
  const basePath = h("input", { id: "base-path", placeholder: "path/to/recipe.yaml", hidden: true });
  const runName = h("input", { id: "run-name-input", "data-path": "_name", placeholder: "default: the recipe name and the time" });
  const general = h("div", { class: "err", id: "form-errors" });
  const preview = h("pre", { id: "preview" });
  const start = h("button", { id: "start", onclick: () => submit(false) }, "Start run");
  const queue = h("button", { id: "queue", class: "secondary", onclick: () => submit(true) }, "Add to queue");

  view.append(h("h1", {}, "New run"),
    h("p", { class: "muted" }, `A run is a base recipe plus the keys you change here (--set). It runs as its own process in ${schema.output}/, so closing this page stops nothing.`),
    h("div", { class: "row" },
      h("div", { class: "field", "data-path": "_base" }, h("label", { for: "base-select" }, "Base recipe"), baseSelect, basePath, h("div", { class: "err" })),
      h("div", { class: "field", "data-path": "_name" }, h("label", { for: "run-name-input" }, "Run name"), runName, h("div", { class: "err" }))),
    ...schema.sections.map(section => fieldset(section, fields.filter(f => f.section === section))),
    h("div", { class: "preview" }, general, h("b", {}, "Command"), preview, h("div", { class: "actions" }, start, queue)));

  const inputs = fields.map(f => [f, document.getElementById(f.id)]);
  const tagOf = path => { const pair = inputs.find(([f]) => f.path === path && !f.when); return pair ? pair[1].value || pair[0].default : ""; };
  const visible = f => !f.when || Object.entries(f.when).every(([path, tags]) => tags.includes(tagOf(path)));
  const base = () => baseSelect.value === "__path" ? basePath.value.trim() : baseSelect.value;

  function refreshVisibility() {
    for (const [f, input] of inputs) input.closest(".field").hidden = !visible(f);
    for (const folded of view.querySelectorAll("details.advanced")) {  // count the keys of the chosen method or type
      const shown = [...folded.querySelectorAll(".field")].filter(el => !el.hidden).length;
      folded.querySelector("summary").textContent = `Advanced (${shown})`;
      folded.hidden = shown === 0;
    }
  }
  function values() {
    const out = {};
    for (const [f, input] of inputs) if (visible(f)) out[f.path] = input.value;
    return out;
  }
  // `loaded` is the base the inputs show: checks and starts send it, never a path still being typed or fetched,
  // so the values and their base always belong together.
  let loaded = "", wanted = null;
  async function loadBase() {
    const path = base();
    if (path === wanted) return;  // a change event without a new file (focus moving on) keeps the user's edits
    wanted = path;
    let texts = {};
    if (path) {
      try { texts = (await api("GET", `/api/recipe?path=${encodeURIComponent(path)}`)).texts; }
      catch (e) { wanted = null; showErrors({ _base: e.message }); return; }
    }
    if (path !== wanted) return;  // another file was chosen meanwhile
    for (const [f, input] of inputs) input.value = texts[f.path] ?? (isTag(f) ? f.default : "");
    loaded = path;
    refreshVisibility();
    check();
  }
  function isTag(f) { return f.path === "strategy.method" || f.path === "task.type"; }
  function showErrors(errors) {
    general.replaceChildren();
    for (const el of view.querySelectorAll(".field")) {
      el.classList.remove("invalid");
      el.querySelector(".err").textContent = "";
    }
    for (const el of view.querySelectorAll("[data-section-error]")) el.textContent = "";
    for (const [path, message] of Object.entries(errors)) {
      const el = [...view.querySelectorAll(`.field[data-path="${CSS.escape(path)}"]`)].find(e => !e.hidden);
      if (el) {
        el.classList.add("invalid");
        el.querySelector(".err").textContent = message;
        const folded = el.closest("details");
        if (folded) folded.open = true;
      } else if (view.querySelector(`[data-section-error="${CSS.escape(path)}"]`)) {
        view.querySelector(`[data-section-error="${CSS.escape(path)}"]`).textContent = message;
      } else {
        general.append(h("div", { "data-error-path": path }, path ? `${path}: ${message}` : message));
      }
    }
  }
  let pending = null, sequence = 0;
  function check() {
    clearTimeout(pending);
    pending = setTimeout(async () => {
      const mine = ++sequence;
      const plan = await api("POST", "/api/check", { base: loaded, values: values(), name: runName.value });
      if (mine !== sequence) return;  // a newer check is on its way
      preview.textContent = plan.command;
      showErrors(plan.errors);
    }, 150);
  }
  async function submit(toQueue) {
    start.disabled = queue.disabled = true;  // one click, one run
    const plan = await api("POST", "/api/runs", { base: loaded, values: values(), name: runName.value, queue: toQueue })
      .finally(() => { start.disabled = queue.disabled = false; });
    preview.textContent = plan.command;
    showErrors(plan.errors);
    if (!plan.ok) return;
    location.hash = toQueue ? "#/runs" : `#/run/${encodeURIComponent(plan.name)}`;
  }
  baseSelect.addEventListener("change", () => { basePath.hidden = baseSelect.value !== "__path"; if (!basePath.hidden) basePath.focus(); loadBase(); });
  basePath.addEventListener("change", loadBase);
  view.addEventListener("input", e => { if (e.target !== basePath) { refreshVisibility(); check(); } });
  view.addEventListener("change", e => { if (e.target.tagName === "SELECT" && e.target !== baseSelect) { refreshVisibility(); check(); } });
  if (startFrom) {  // "New run from this config" on a run's page: its saved recipe.yaml is the base
    baseSelect.value = "__path";
    basePath.hidden = false;
    basePath.value = startFrom;
  }
  loadBase();
}

function fieldset(section, fields) {
  const open = fields.filter(f => !f.advanced), folded = fields.filter(f => f.advanced);
  const box = h("fieldset", { "data-section": section }, h("legend", {}, section),
    h("div", { class: "err", "data-section-error": section === "run" ? "" : section }),
    open.map(fieldRow));
  if (folded.length) {
    box.append(h("details", { class: "advanced" }, h("summary", {}, `Advanced (${folded.length})`), folded.map(fieldRow)));
  }
  return box;
}

function fieldRow(f) {
  const shownDefault = f.default === "null" ? "none" : f.default;
  let input;
  if (f.kind === "choice" || f.kind === "bool") {
    const isTag = f.path === "strategy.method" || f.path === "task.type";
    const choices = f.kind === "bool" ? ["true", "false"] : f.choices;
    input = h("select", { id: f.id },
      isTag ? null : h("option", { value: "" }, `(default: ${shownDefault || "none"})`),
      choices.map(c => h("option", { value: c }, c)));
  } else {
    input = h("input", { id: f.id, type: "text", spellcheck: "false",
      placeholder: shownDefault ? `default: ${shownDefault}` : (f.kind === "yaml" ? "YAML" : "") });
  }
  input.dataset.path = f.path;
  const name = f.path.split(".").slice(-1)[0];
  return h("div", { class: "field", "data-path": f.path },
    h("label", { for: f.id }, name, h("code", {}, f.path)), input,
    f.help ? h("small", { class: "help" }, f.help) : null, h("div", { class: "err" }));
}
