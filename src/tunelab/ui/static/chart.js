// Line charts as inline SVG: no charting library, nothing fetched.
"use strict";

const SVG = "http://www.w3.org/2000/svg";  // the SVG namespace name (an identifier, never requested)

function svg(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

// series: [{label, color, points: [[x, y], ...]}]; draws into a fresh <svg> and returns it.
function lineChart(title, series, xLabel = "step") {
  const W = 560, H = 230, L = 56, R = 12, T = 26, B = 34;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  root.append(svg("text", { x: L, y: 16, "font-size": 13, "font-weight": 600 }, title));
  const points = series.flatMap(s => s.points).filter(p => Number.isFinite(p[0]) && Number.isFinite(p[1]));
  if (!points.length) {
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#6a737d", "font-size": 12 }, "no points yet"));
    return root;
  }
  let [x0, x1] = [Math.min(...points.map(p => p[0])), Math.max(...points.map(p => p[0]))];
  let [y0, y1] = [Math.min(...points.map(p => p[1])), Math.max(...points.map(p => p[1]))];
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  root.append(svg("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "none", stroke: "#d8dee4" }));
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    root.append(svg("line", { x1: L, x2: W - R, y1: sy(y), y2: sy(y), stroke: "#eef1f4" }));
    root.append(svg("text", { x: L - 6, y: sy(y) + 4, "text-anchor": "end", "font-size": 10, fill: "#6a737d" }, fmt(y, 3)));
  }
  const xs = [...new Set([0, 1, 2, 3, 4].map(i => Math.round(x0 + (x1 - x0) * i / 4)))];  // whole steps, each once
  for (const x of xs) {
    root.append(svg("text", { x: sx(x), y: H - B + 14, "text-anchor": "middle", "font-size": 10, fill: "#6a737d" }, fmt(x)));
  }
  root.append(svg("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", "font-size": 11, fill: "#6a737d" }, xLabel));
  series.forEach((s, k) => {
    const pts = s.points.filter(p => Number.isFinite(p[0]) && Number.isFinite(p[1]));
    if (!pts.length) return;
    root.append(svg("polyline", { points: pts.map(p => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" "),
                                  fill: "none", stroke: s.color, "stroke-width": 1.8, class: "series" }));
    if (pts.length < 40) pts.forEach(p => root.append(svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: s.color })));
    const lx = W - R - 130 * (series.length - k), ly = 16;  // the legend on the title line, clear of the curves
    root.append(svg("line", { x1: lx, x2: lx + 16, y1: ly - 4, y2: ly - 4, stroke: s.color, "stroke-width": 2 }));
    root.append(svg("text", { x: lx + 20, y: ly, "font-size": 11 }, s.label));
  });
  return root;
}
