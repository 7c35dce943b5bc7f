// Evals: eval definitions, their runs (score with 95% CI), a run's failure clusters, and the customization-
// ladder report (a ladder.json written by `graft ladder`, opened from disk) with its chart.
import { api } from "../api.js";
import { ciBarChart, lineChart } from "../charts.js";
import { alertBox, clear, field, fmt, h, kv, table } from "../ui.js";

export async function render(root) {
  const runsEl = h("section", { class: "card", id: "eval-runs", hidden: true });
  const runEl = h("section", { class: "card", id: "eval-run", hidden: true });
  const ladderEl = h("div", { id: "ladder" });
  const { data } = await api("/evals");
  const ladderInput = h("input", { type: "file", accept: ".json,application/json", id: "ladder-file" });
  ladderInput.addEventListener("change", async () => {
    const file = ladderInput.files[0];
    if (!file) return;
    try { renderLadder(ladderEl, JSON.parse(await file.text())); }
    catch (err) { clear(ladderEl, alertBox(new Error(`${file.name} is not a ladder.json: ${err.message}`))); }
  });

  async function showRuns(ev) {
    runsEl.hidden = false;
    runEl.hidden = true;
    const runs = (await api(`/evals/${encodeURIComponent(ev.id)}/runs`)).data;
    clear(runsEl, h("h2", {}, `Runs of ${ev.name}`), table([
      { label: "Run", value: (r) => h("button", { type: "button", class: "linkish", onclick: () => showRun(ev, r.id).catch((err) => clear(runEl, alertBox(err))) }, r.id) },
      { label: "Model", value: (r) => r.model },
      { label: "Strategy", value: (r) => r.strategy },
      { label: "Score", num: true, value: (r) => fmt.num(r.score, 3) },
      { label: "95% CI", value: (r) => `[${fmt.num(r.ci_low, 3)}, ${fmt.num(r.ci_high, 3)}]` },
      { label: "n", num: true, value: (r) => r.n },
      { label: "Failure clusters", num: true, value: (r) => (r.failure_clusters ? r.failure_clusters.length : "—") },
      { label: "Created", value: (r) => fmt.time(r.created_at) },
    ], runs, { empty: "No runs yet: graft eval run, or POST /v1/evals/{id}/runs." }));
  }

  async function showRun(ev, runId) {
    const run = await api(`/evals/${encodeURIComponent(ev.id)}/runs/${encodeURIComponent(runId)}`);
    runEl.hidden = false;
    const clusters = run.failure_clusters || [];
    const aggregates = Object.entries(run.aggregates || {});
    clear(runEl, h("h2", {}, `Run ${run.id}`), kv([["Model", run.model], ["Strategy", run.strategy], ["Examples", run.n],
      ...aggregates.map(([s, a]) => [s, `${fmt.num(a.mean, 3)} [${fmt.num(a.ci_low, 3)}, ${fmt.num(a.ci_high, 3)}]`])]),
    h("h3", {}, `Failure clusters (${clusters.length})`),
    clusters.length ? clusters.map((c) => h("div", { class: "card" }, h("strong", {}, `Cluster ${c.cluster}: ${c.size} failures`),
      table([{ label: "Question", value: (s) => s.question }, { label: "Reference", value: (s) => String(s.reference) },
        { label: "Prediction", value: (s) => String(s.prediction) }], c.samples || [])))
      : h("p", { class: "muted" }, run.failure_clusters ? "No failures." : "Not clustered: run with failures=true (graft eval run --failures)."),
    h("h3", {}, "Failed examples"),
    table([{ label: "Question", value: (r) => r.question }, { label: "Reference", value: (r) => String(r.reference) },
      { label: "Prediction", value: (r) => String(r.prediction) }],
    (run.results || []).filter((r) => Object.values(r.scores || {})[0] < 1).slice(0, 50), { empty: "None." }));
  }

  root.append(h("h1", {}, "Evals"),
    h("section", { class: "card" }, h("h2", {}, "Customization ladder"),
      h("p", { class: "muted" }, "Open the ladder.json that `graft ladder` wrote (the report stays in this browser)."),
      field("ladder.json", ladderInput), ladderEl),
    h("section", { class: "card" }, h("h2", {}, "Evals"), table([
      { label: "Eval", value: (e) => h("button", { type: "button", class: "linkish", onclick: () => showRuns(e).catch((err) => clear(runsEl, alertBox(err))) }, e.name) },
      { label: "Id", value: (e) => h("code", {}, e.id) },
      { label: "Scorers", value: (e) => (e.scorers || []).join(", ") },
      { label: "Created", value: (e) => fmt.time(e.created_at) },
    ], data, { empty: "No evals yet: graft eval create, or POST /v1/evals." })), runsEl, runEl);
}

export function renderLadder(el, ladder) {
  const rungs = ladder.rungs || [];
  if (!rungs.length || rungs.some((r) => typeof r.score !== "number")) throw new Error("no rungs with scores");
  const parts = [h("p", {}, `${ladder.base_model || "model"} on ${ladder.n_eval ?? "?"} examples, scorer ${ladder.scorer || "—"}`),
    ciBarChart(rungs), table([
      { label: "Rung", value: (r) => r.name },
      { label: "Score", num: true, value: (r) => fmt.num(r.score, 3) },
      { label: "95% CI", value: (r) => `[${fmt.num(r.ci_low, 3)}, ${fmt.num(r.ci_high, 3)}]` },
      { label: "Tokens / example", num: true, value: (r) => fmt.num(r.tokens, 0) },
      { label: "Training unit-hours", num: true, value: (r) => fmt.num(r.unit_hours, 2) },
      { label: "Cost", num: true, value: (r) => fmt.num(r.cost, 2) },
    ], rungs)];
  if (ladder.verdict && ladder.verdict.text) parts.push(h("p", { role: "status" }, ladder.verdict.text));
  const curves = Object.entries(ladder.loss_curves || {});
  if (curves.length) {
    const steps = [...new Set(curves.flatMap(([, pts]) => pts.map((p) => p.step)))].sort((a, b) => a - b);
    const chart = lineChart("Training loss per method", "loss");
    parts.push(chart.el);
    clear(el, parts);
    chart.update(steps, curves.map(([m, pts]) => {
      const at = new Map(pts.map((p) => [p.step, p.train_loss ?? p.loss ?? null]));
      return { label: m, values: steps.map((s) => at.get(s) ?? null) };
    }));
    return;
  }
  clear(el, parts);
}
