// Charts: uPlot (vendored, MIT) for curves; a small SVG bar chart with confidence intervals for the ladder.
import { h } from "./ui.js";

const COLORS = ["#2457c5", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285", "#c2255c"];

// A line chart of `series` ({label, values}) over `x`; returns {el, update(x, series)}. `yRange` fixes the
// y axis (accuracies: [0, 1]); otherwise it follows the data.
export function lineChart(title, yLabel, yRange = null) {
  const el = h("div", { class: "chart", role: "img", "aria-label": title });
  let plot = null;
  function update(x, series) {
    el.dataset.points = String(x.length);
    const data = [x, ...series.map((s) => s.values)];
    if (!window.uPlot) { el.textContent = "chart library failed to load"; return; }
    if (plot && plot.series.length === series.length + 1) { plot.setData(data); return; }
    if (plot) plot.destroy();
    const width = Math.max(320, (el.clientWidth || 560) - 4);
    plot = new window.uPlot({
      title, width, height: 240,
      scales: { x: { time: false }, ...(yRange ? { y: { range: yRange } } : {}) },
      axes: [{ label: "step" }, { label: yLabel }],
      series: [{ label: "step" }, ...series.map((s, i) => ({
        label: s.label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true,
        points: { show: true, size: 4 } }))],
    }, data, el);
  }
  return { el, update, destroy: () => plot && plot.destroy() };
}

// Bars with 95% CI whiskers, one per ladder rung (scores in [0, 1]).
export function ciBarChart(rungs, { width = 720, height = 300 } = {}) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", "100%");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "Score per rung with 95% confidence intervals");
  const el = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  const padL = 44, padB = 56, padT = 12, plotH = height - padB - padT;
  const slot = (width - padL - 10) / Math.max(1, rungs.length);
  const y = (v) => padT + plotH * (1 - Math.max(0, Math.min(1, v)));
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    el("line", { x1: padL, x2: width - 10, y1: y(t), y2: y(t), stroke: "#ddd" });
    el("text", { x: padL - 6, y: y(t) + 4, "text-anchor": "end", "font-size": 11 }, t.toFixed(2));
  }
  rungs.forEach((r, i) => {
    const x = padL + i * slot + slot * 0.15, w = slot * 0.7, cx = x + w / 2;
    const bar = el("rect", { x, y: y(r.score), width: w, height: y(0) - y(r.score), fill: COLORS[i % COLORS.length] });
    const tip = document.createElementNS(NS, "title");
    tip.textContent = `${r.name}: ${r.score.toFixed(3)} [${r.ci_low.toFixed(3)}, ${r.ci_high.toFixed(3)}]`;
    bar.append(tip);
    el("line", { x1: cx, x2: cx, y1: y(r.ci_low), y2: y(r.ci_high), stroke: "#000" });
    el("line", { x1: cx - 6, x2: cx + 6, y1: y(r.ci_low), y2: y(r.ci_low), stroke: "#000" });
    el("line", { x1: cx - 6, x2: cx + 6, y1: y(r.ci_high), y2: y(r.ci_high), stroke: "#000" });
    el("text", { x: cx, y: height - padB + 16, "text-anchor": "middle", "font-size": 11 }, r.name);
    el("text", { x: cx, y: height - padB + 30, "text-anchor": "middle", "font-size": 11 }, r.score.toFixed(2));
  });
  return svg;
}
