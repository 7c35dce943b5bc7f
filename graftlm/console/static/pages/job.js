// One fine-tuning job: live loss and token-accuracy curves (train and validation) that grow as metrics
// events arrive (polled every second while the job is active), events, checkpoints, cancel / pause / resume.
import { api } from "../api.js";
import { lineChart } from "../charts.js";
import { alertBox, badge, clear, fmt, h, kv, link, table } from "../ui.js";

const ACTIVE = new Set(["validating_files", "queued", "running", "cancelling", "pausing"]);

export async function render(root, ctx) {
  const jobId = ctx.params[0];
  const head = h("section", { class: "card", id: "job-summary" });
  const actions = h("div", { class: "row" });
  const actionSlot = h("div", { "aria-live": "polite" });
  const loss = lineChart("Loss", "cross-entropy");
  const acc = lineChart("Token accuracy", "share of target tokens", [0, 1]);
  const points = h("p", { class: "muted", id: "curve-points", "aria-live": "polite" });
  const eventsEl = h("div", { class: "events" });
  const ckptEl = h("div");
  root.append(h("p", {}, link("#/jobs", "← all jobs")), head,
    h("section", { class: "card" }, h("h2", {}, "Curves"), points, h("div", { class: "grid2" }, loss.el, acc.el)),
    h("div", { class: "grid2" }, h("section", { class: "card" }, h("h2", {}, "Events"), eventsEl),
      h("section", { class: "card" }, h("h2", {}, "Checkpoints"), ckptEl)));

  const events = new Map();  // id → event: every event fetched once, merged on each poll
  let ordered = [];          // the same events, newest first
  let timer = null;
  let stopped = false;

  async function newEvents() {
    // events come newest first; read pages until one we already have
    let after = null;
    const fresh = [];
    for (;;) {
      const page = await api(`/fine_tuning/jobs/${encodeURIComponent(jobId)}/events?limit=100${after ? `&after=${after}` : ""}`);
      let known = false;
      for (const e of page.data) {
        if (events.has(e.id)) { known = true; break; }
        events.set(e.id, e);
        fresh.push(e);
      }
      if (known || !page.has_more || !page.data.length) { ordered = [...fresh, ...ordered]; return; }
      after = page.data[page.data.length - 1].id;
    }
  }

  function drawCurves() {
    const byStep = new Map();
    for (const e of events.values()) {
      if (e.type !== "metrics" || !e.data || e.data.step === undefined) continue;
      byStep.set(e.data.step, { ...(byStep.get(e.data.step) || {}), ...e.data });
    }
    const steps = [...byStep.keys()].sort((a, b) => a - b);
    const col = (k) => steps.map((s) => (byStep.get(s)[k] ?? null));
    loss.update(steps, [{ label: "train loss", values: col("train_loss") }, { label: "validation loss", values: col("valid_loss") }]);
    const exact = col("valid_exact_match");
    acc.update(steps, [{ label: "train accuracy", values: col("train_mean_token_accuracy") },
      { label: "validation accuracy", values: col("valid_mean_token_accuracy") },
      ...(exact.some((v) => v !== null) ? [{ label: "validation exact match", values: exact }] : [])]);
    const validCount = col("valid_loss").filter((v) => v !== null).length;
    points.textContent = steps.length
      ? `${steps.length} training points (last step ${steps[steps.length - 1]}), ${validCount} validation points`
      : "No metrics yet: curves appear once the first step is logged.";
  }

  function drawSummary(job) {
    const hp = job.hyperparameters || {};
    clear(head, h("h1", {}, `Job ${job.id} `, badge(job.status)), kv([
      ["Base model", job.model], ["Method", hp.training_method],
      ["Custom model", job.fine_tuned_model ? link(`#/models/${encodeURIComponent(job.fine_tuned_model)}`, job.fine_tuned_model) : null],
      ["Fine-tuning cluster", job.dedicated_ai_cluster_id || null],
      ["Training file", job.training_file], ["Validation file", job.validation_file || "80:20 split of the training file"],
      ["Trained tokens", fmt.int(job.trained_tokens)], ["Created", fmt.time(job.created_at)],
      ["Finished", job.finished_at ? fmt.time(job.finished_at) : null],
      ["Error", job.error && job.error.message ? h("span", { class: "error" }, job.error.message) : null],
      ["Hyperparameters", h("details", {}, h("summary", {}, `${Object.keys(hp).length} values`),
        kv(Object.entries(hp).map(([k, v]) => [k, h("code", {}, JSON.stringify(v))])))],
    ]), actions, actionSlot);
    clear(actions);
    if (!ctx.canWrite) return;
    const act = (name, label, cls) => h("button", { type: "button", class: cls, onclick: async (e) => {
      e.target.disabled = true;
      try { await api(`/fine_tuning/jobs/${encodeURIComponent(job.id)}/${name}`, { method: "POST" }); clear(actionSlot); }
      catch (err) { clear(actionSlot, alertBox(err)); }
      await tick(false);
    } }, label);
    if (ACTIVE.has(job.status)) actions.append(act("cancel", "Cancel", "danger"));
    if (job.status === "running" || job.status === "queued") actions.append(act("pause", "Pause"));
    if (job.status === "paused") actions.append(act("resume", "Resume", "primary"), act("cancel", "Cancel", "danger"));
  }

  async function drawCheckpoints() {
    const page = await api(`/fine_tuning/jobs/${encodeURIComponent(jobId)}/checkpoints?limit=50`);
    clear(ckptEl, table([
      { label: "Step", num: true, value: (c) => c.step_number },
      { label: "Train loss", num: true, value: (c) => fmt.num(c.metrics.train_loss) },
      { label: "Validation loss", num: true, value: (c) => fmt.num(c.metrics.valid_loss) },
      { label: "Validation accuracy", num: true, value: (c) => fmt.num(c.metrics.valid_mean_token_accuracy) },
      { label: "Exact match", num: true, value: (c) => fmt.num(c.metrics.valid_exact_match) },
    ], page.data, { empty: "No checkpoints yet." }));
  }

  function drawEvents() {
    clear(eventsEl, table([
      { label: "Time", value: (e) => fmt.time(e.created_at) },
      { label: "Level", value: (e) => e.level },
      { label: "Message", value: (e) => e.message },
    ], ordered.slice(0, 200), { empty: "No events yet." }));
  }

  async function tick(schedule = true) {
    if (stopped) return;
    try {
      const job = await api(`/fine_tuning/jobs/${encodeURIComponent(jobId)}`);
      const before = events.size;
      await newEvents();
      drawSummary(job);
      if (events.size !== before || !points.textContent) { drawCurves(); drawEvents(); await drawCheckpoints(); }
      if (schedule && !stopped) timer = setTimeout(tick, ACTIVE.has(job.status) ? 1000 : 5000);
    } catch (err) {
      clear(actionSlot, alertBox(err));
      if (schedule && !stopped && err.status !== 404) timer = setTimeout(tick, 3000);
    }
  }
  await tick();
  return () => { stopped = true; clearTimeout(timer); loss.destroy(); acc.destroy(); };
}
