// Models: base and custom models; a custom model's lineage (parent, data hashes, config, package versions)
// and export as a zip of its adapter (PEFT format) or full weights.
import { api, apiBlob } from "../api.js";
import { alertBox, clear, fmt, h, kv, link, table } from "../ui.js";

export async function render(root, ctx) {
  const { data } = await api("/console/models");
  const detail = h("section", { class: "card", id: "model-detail", hidden: true });
  root.append(h("h1", {}, "Models"), h("section", { class: "card" }, table([
    { label: "Model", value: (m) => link(`#/models/${encodeURIComponent(m.id)}`, m.id) },
    { label: "Kind", value: (m) => m.kind },
    { label: "Parent", value: (m) => m.parent || "—" },
    { label: "Adapter", value: (m) => m.adapter_type || "—" },
    { label: "Parameters", num: true, value: (m) => fmt.int(m.parameter_count) },
    { label: "Context", num: true, value: (m) => fmt.int(m.context_length) },
    { label: "Created", value: (m) => fmt.time(m.created_at) },
  ], data, { empty: "No models: run `graft models pull smollm2-135m-instruct`." })), detail);
  if (ctx.params[0]) await show(detail, ctx.params[0]);
}

async function show(el, modelId) {
  el.hidden = false;
  let m;
  try { m = await api(`/console/models/${encodeURIComponent(modelId)}`); }
  catch (err) { clear(el, alertBox(err)); return; }
  const parts = [h("h2", {}, m.id), kv([
    ["Kind", m.kind], ["Family", m.family], ["Parent (base model)", m.parent], ["License", m.license],
    ["Source", m.source], ["Weights sha256", m.sha256 ? h("code", {}, m.sha256) : null], ["Adapter type", m.adapter_type],
  ])];
  const l = m.lineage;
  if (l) {
    const datasets = l.datasets || {};
    const versions = l.versions || {};
    parts.push(h("h3", {}, "Lineage"), kv([
      ["Fine-tuning job", l.job_id ? link(`#/jobs/${encodeURIComponent(l.job_id)}`, l.job_id) : null],
      ["Base model", l.base_model], ["Base weights sha256", l.base_model_sha256 ? h("code", {}, l.base_model_sha256) : null],
      ["Method", l.method], ["Task", l.task_type],
      ...Object.entries(datasets).map(([k, v]) => [`Data: ${k}`, h("code", {}, typeof v === "object" ? JSON.stringify(v) : String(v))]),
      ["Steps (best)", l.steps !== undefined ? `${l.steps} (${l.best_step ?? "—"})` : null],
      ["Trained tokens", fmt.int(l.trained_tokens)], ["Trainable parameters", fmt.int(l.trainable_params)],
      ["Metrics", l.metrics ? h("code", {}, JSON.stringify(l.metrics)) : null],
    ]), h("h3", {}, "Configuration"), h("pre", { class: "mono" }, JSON.stringify(l.hyperparameters || {}, null, 1)),
    h("h3", {}, "Package versions"), kv(Object.entries(versions).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)])));
  }
  if (m.kind === "custom") {
    const slot = h("span", { "aria-live": "polite" });
    parts.push(h("div", { class: "row" }, h("button", { type: "button", onclick: async (e) => {
      e.target.disabled = true;
      clear(slot, "Preparing the archive…");
      try {
        const blob = await apiBlob(`/console/models/${encodeURIComponent(m.id)}/archive`);
        const a = h("a", { href: URL.createObjectURL(blob), download: `${m.id.replaceAll(":", "_")}.zip` });
        document.body.append(a);
        a.click();
        a.remove();
        clear(slot, h("span", { class: "ok" }, `Exported (${fmt.bytes(blob.size)}).`));
      } catch (err) { clear(slot, alertBox(err)); }
      e.target.disabled = false;
    } }, "Export (zip)"), slot));
  }
  clear(el, parts);
  el.scrollIntoView({ block: "nearest" });
}
