// Fine-tuning: a job form generated from the hyperparameter JSON schema (the one the API, CLI and YAML use,
// with each method's OCI defaults), and the job list.
import { api, listAll } from "../api.js";
import { badge, clear, field, fmt, h, link, select, showFormError, table } from "../ui.js";

export async function render(root, ctx) {
  const list = h("div");
  let timer = null;
  let stopped = false;
  async function refresh() {
    const jobs = await listAll("/fine_tuning/jobs?limit=100", 200);
    clear(list, table([
      { label: "Job", value: (j) => link(`#/jobs/${encodeURIComponent(j.id)}`, j.id) },
      { label: "Base model", value: (j) => j.model },
      { label: "Method", value: (j) => (j.hyperparameters || {}).training_method || "—" },
      { label: "Status", value: (j) => badge(j.status) },
      { label: "Custom model", value: (j) => j.fine_tuned_model || "—" },
      { label: "Created", value: (j) => fmt.time(j.created_at) },
    ], jobs, { empty: "No fine-tuning jobs yet." }));
  }
  root.append(h("h1", {}, "Fine-tuning"));
  if (ctx.canWrite) root.append(await jobForm());
  root.append(h("section", { class: "card" }, h("h2", {}, "Jobs"), list));
  await refresh();
  const poll = async () => {
    if (stopped) return;
    try { await refresh(); } catch { /* next time */ }
    timer = setTimeout(poll, 3000);
  };
  timer = setTimeout(poll, 3000);
  return () => { stopped = true; clearTimeout(timer); };
}

function nonNull(spec) {
  return spec.anyOf ? spec.anyOf.find((s) => s.type !== "null") || {} : spec;
}

function control(name, spec) {
  const s = nonNull(spec);
  if (s.enum) return select(s.enum, { value: spec.default, name, id: `hp-${name}` });
  if (s.type === "boolean") return select([["", "default"], ["true", "true"], ["false", "false"]], { name, id: `hp-${name}` });
  const input = h("input", { name, id: `hp-${name}` });
  if (s.type === "integer" || s.type === "number") {
    input.type = "number";
    input.step = s.type === "integer" ? "1" : "any";
    if (s.minimum !== undefined) input.min = s.minimum;
    if (s.maximum !== undefined) input.max = s.maximum;
  } else {
    input.type = "text";
  }
  return input;
}

function helpText(spec, methodDefault) {
  const parts = [];
  if (spec.description) parts.push(spec.description);
  if (methodDefault !== undefined) parts.push(`default for this method: ${methodDefault}`);
  else if (spec.default !== undefined && spec.default !== null)
    parts.push(`default: ${Array.isArray(spec.default) ? spec.default.join(", ") : spec.default}`);
  return parts.join("; ");
}

function readValue(name, spec, el) {
  const raw = el.value.trim();
  if (raw === "") return undefined;
  const s = nonNull(spec);
  if (s.type === "integer") return parseInt(raw, 10);
  if (s.type === "number") return parseFloat(raw);
  if (s.type === "boolean") return raw === "true";
  if (s.type === "array") return raw.split(",").map((x) => x.trim()).filter(Boolean);
  return raw;
}

async function jobForm() {
  const [{ schema, oci_defaults: ociDefaults, method_fields: methodFields, aliases }, models, files, clusters] = await Promise.all([
    api("/console/finetune_form"), api("/models"), listAll("/files?purpose=fine-tune"),
    listAll("/dedicated_ai_clusters?type=FINE_TUNING")]);
  const usable = files.filter((f) => f.status === "processed");
  const fileOptions = usable.map((f) => [f.id, `${f.filename} (${f.id})`]);
  const base = select(models.data.filter((m) => m.kind === "base").map((m) => m.id), { name: "model", id: "job-model", required: true });
  const train = select(fileOptions, { name: "training_file", id: "job-training-file", required: true });
  const valid = select([["", "none: split the training file 80:20"], ...fileOptions], { name: "validation_file", id: "job-validation-file" });
  const suffix = h("input", { name: "suffix", id: "job-suffix", type: "text", placeholder: "e.g. support-bot" });
  const cluster = select([["", "none: this machine, unmetered"],
    ...clusters.filter((c) => c.lifecycle_state === "ACTIVE").map((c) => [c.id, `${c.name} (${c.unit_count} units)`])],
  { name: "dedicated_ai_cluster_id", id: "job-cluster" });
  const props = Object.entries(schema.properties).filter(([name]) => !aliases.includes(name));
  const controls = {};
  const helps = {};
  const wrappers = {};
  const hp = props.map(([name, spec]) => {
    controls[name] = control(name, spec);
    wrappers[name] = field(spec.title || name, controls[name], helpText(spec));
    helps[name] = wrappers[name].querySelector(".help");
    return wrappers[name];
  });
  const method = controls.training_method;
  const defaultsMode = controls.defaults;
  // a field only some methods read is shown (and sent) for those methods alone; defaults "oci" shows OCI's values
  const relevant = (name) => !methodFields[name] || methodFields[name].includes(method.value);
  const showDefaults = () => {
    const oci = defaultsMode && defaultsMode.value === "oci";
    for (const [name] of props) {
      wrappers[name].hidden = !relevant(name);
      if (controls[name].tagName === "SELECT") continue;
      const value = oci ? (ociDefaults[method.value] || {})[name] : undefined;
      const spec = schema.properties[name];
      const auto = !oci && spec.default === null && /default/.test(spec.description || "");
      controls[name].placeholder = value !== undefined ? String(value) : auto ? "auto" : "";
      if (helps[name]) helps[name].textContent = helpText(spec, value);
    }
  };
  method.addEventListener("change", showDefaults);
  if (defaultsMode) defaultsMode.addEventListener("change", showDefaults);
  showDefaults();
  const slot = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "fields", "aria-label": "New fine-tuning job" },
    field("Base model", base), field("Training file", train, usable.length ? null : "Upload a valid fine-tune file first."),
    field("Validation file", valid), field("Suffix", suffix, "names the custom model ft:{base}:{suffix}:{job}"),
    field("Fine-tuning cluster", cluster, "its units are metered in unit-hours"),
    ...hp,
    h("div", { class: "actions" }, h("button", { class: "primary", type: "submit" }, "Create job"), slot));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const hyperparameters = {};
    for (const [name, spec] of props) {
      if (!relevant(name)) continue;
      const v = readValue(name, spec, controls[name]);
      if (v !== undefined) hyperparameters[name] = v;
    }
    const body = { model: base.value, training_file: train.value,
      method: { type: "supervised", supervised: { hyperparameters } } };
    if (valid.value) body.validation_file = valid.value;
    if (suffix.value.trim()) body.suffix = suffix.value.trim();
    if (cluster.value) body.dedicated_ai_cluster_id = cluster.value;
    try {
      const job = await api("/fine_tuning/jobs", { method: "POST", body });
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) {
      showFormError(form, slot, err);
    }
  });
  return h("section", { class: "card" }, h("h2", {}, "New job"), form);
}
