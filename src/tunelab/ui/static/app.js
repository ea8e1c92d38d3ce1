// The router: one page, views chosen by the address's #fragment, so links and the back button work.
"use strict";

const routes = [
  [/^#\/new(?:\?base=(.*))?$/, m => renderNewRun(m[1] ? decodeURIComponent(m[1]) : "")],
  [/^#\/run\/(.+)$/, m => renderRun(decodeURIComponent(m[1]))],
  [/^#\/compare\/(.+)$/, m => renderComparison(decodeURIComponent(m[1]))],
  [/^#\/compare$/, () => renderCompare()],
  [/^/, () => renderRuns()],
];

function route() {
  clearTimers();
  const hash = location.hash || "#/runs";
  const view = document.getElementById("view");
  view.replaceChildren();
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", hash.startsWith(a.getAttribute("href")));
  for (const [pattern, render] of routes) {
    const m = hash.match(pattern);
    if (m) { render(m); break; }
  }
}

window.addEventListener("hashchange", route);
route();
