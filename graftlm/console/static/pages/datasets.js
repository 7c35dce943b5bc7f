// Datasets: upload (drag and drop, progress), the file list, and a file's validation report.
import { api, listAll, uploadFile } from "../api.js";
import { alertBox, badge, clear, field, fmt, h, kv, select, table } from "../ui.js";

export async function render(root, ctx) {
  const list = h("div");
  const detail = h("section", { class: "card", id: "file-detail", "aria-live": "polite", hidden: true });
  let timer = null;
  let stopped = false;

  async function refresh() {
    const files = await listAll("/files");
    clear(list, table([
      { label: "File", value: (f) => h("button", { type: "button", class: "linkish", onclick: () => show(f.id) }, f.filename) },
      { label: "Id", value: (f) => h("code", {}, f.id) },
      { label: "Purpose", value: (f) => f.purpose },
      { label: "Size", num: true, value: (f) => fmt.bytes(f.bytes) },
      { label: "Status", value: (f) => badge(f.status) },
      { label: "Uploaded", value: (f) => fmt.time(f.created_at) },
    ], files, { empty: "No files yet." }));
    return files;
  }

  async function show(fileId, model) {
    detail.hidden = false;
    clear(detail, h("p", { class: "muted" }, "Loading the report…"));
    try {
      let data = await api(`/console/files/${encodeURIComponent(fileId)}/report${model ? `?model=${encodeURIComponent(model)}` : ""}`);
      // validation runs in the background after an upload: wait for it
      const waited = data.file.status === "uploaded";
      while (!stopped && data.file.status === "uploaded") {
        await new Promise((r) => setTimeout(r, 500));
        data = await api(`/console/files/${encodeURIComponent(fileId)}/report`);
      }
      if (waited && !stopped) await refresh();
      if (!stopped) renderReport(detail, data, show);
    } catch (err) {
      clear(detail, alertBox(err));
    }
  }

  const sections = [h("h1", {}, "Datasets")];
  if (ctx.canWrite) sections.push(uploadCard(async (record) => { await refresh(); await show(record.id); }));
  sections.push(h("section", { class: "card" }, h("h2", {}, "Files"), list), detail);
  root.append(...sections);
  await refresh();
  const poll = async () => {  // statuses move from uploaded to processed/error in the background
    if (stopped) return;
    try { await refresh(); } catch { /* shown on the next successful refresh */ }
    timer = setTimeout(poll, 5000);
  };
  timer = setTimeout(poll, 5000);
  return () => { stopped = true; clearTimeout(timer); };
}

function uploadCard(onUploaded) {
  const input = h("input", { type: "file", id: "upload-input", accept: ".jsonl,.gz,.json,.txt" });
  const purpose = select([["fine-tune", "fine-tune (validated)"], ["rag", "rag"], ["evals", "evals"]], { name: "purpose", id: "upload-purpose" });
  const policy = select([["", "project's policy"], ["warn", "warn: store, report personal data"],
    ["redact", "redact: store a copy with placeholders"], ["reject", "reject: refuse a file with personal data"]],
    { name: "data_policy", id: "upload-data-policy" });
  const progress = h("progress", { max: "100", value: "0", "aria-label": "Upload progress", hidden: true });
  const status = h("div", { "aria-live": "polite" });
  const zone = h("div", { class: "dropzone", tabindex: "0", role: "button", id: "dropzone",
    "aria-label": "Drop a JSONL file here, or press Enter to choose one" },
    "Drop a JSONL file here, or ", h("strong", {}, "choose one"), ".");

  async function send(file) {
    progress.hidden = false;
    progress.value = 0;
    clear(status, `Uploading ${file.name}…`);
    try {
      const record = await uploadFile(file, purpose.value, (p) => { progress.value = Math.round(p * 100); },
        purpose.value === "fine-tune" ? policy.value : "");
      const redacted = Object.entries((record.sensitive_data || {}).redacted_by_kind || {});
      clear(status, h("span", { class: "ok" }, `Uploaded ${file.name} as ${record.id}` + (redacted.length
        ? `; personal data replaced by placeholders: ${redacted.map(([k, n]) => `${n} ${k}`).join(", ")}.` : ".")));
      await onUploaded(record);
    } catch (err) {
      clear(status, alertBox(err));
    }
  }

  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]);
  });
  input.addEventListener("change", () => { if (input.files.length) send(input.files[0]); input.value = ""; });
  return h("section", { class: "card" }, h("h2", {}, "Upload"),
    h("div", { class: "row" }, field("Purpose", purpose), field("Data policy", policy), field("File", input)),
    zone, progress, status);
}

function renderReport(el, { file, report, model }, reshow) {
  const parts = [h("h2", {}, `${file.filename} `, badge(file.status)),
    kv([["Id", h("code", {}, file.id)], ["Size", fmt.bytes(file.bytes)], ["Purpose", file.purpose],
        ["Format", report ? report.format : null]])];
  if (!report) {
    parts.push(h("p", { class: "muted" }, file.status_details || "This file has no validation report (only fine-tune files are validated)."));
    clear(el, parts);
    return;
  }
  const errors = report.errors || [];
  parts.push(h("h3", {}, report.valid ? "Valid" : `${report.error_count} problem${report.error_count === 1 ? "" : "s"}`));
  if (errors.length) {
    parts.push(table([
      { label: "Line", num: true, value: (e) => (e.line ? e.line : "file") },
      { label: "Field", value: (e) => (e.field ? h("code", {}, e.field) : "—") },
      { label: "Reason", value: (e) => e.message },
    ], errors, { caption: errors.length < report.error_count ? `first ${errors.length} of ${report.error_count}` : null }));
  }
  const findings = report.findings || [];
  const found = report.finding_count || findings.length;
  if (findings.length) {
    parts.push(h("h3", {}, `Personal data found (${found})`), table([
      { label: "Line", num: true, value: (f) => f.line || "—" },
      { label: "Field", value: (f) => h("code", {}, f.field || "—") },
      { label: "Kind", value: (f) => f.kind },
    ], findings, { caption: findings.length < found ? `first ${findings.length} of ${found}` : null }));
  }
  const s = report.stats || {};
  parts.push(h("h3", {}, "Statistics"), kv([
    ["Lines", fmt.int(s.lines)], ["Examples", fmt.int(s.examples)], ["Invalid lines", fmt.int(s.invalid_lines)],
    ["Exact duplicates", fmt.int(s.duplicates)], ["Epochs (estimate)", s.epochs],
  ]));
  const t = s.tokens;
  if (t) {
    parts.push(h("h3", {}, `Tokens under ${model || "the model"}`), kv([
      ["Per example min / mean / p95 / max", `${t.min} / ${fmt.num(t.mean, 1)} / ${t.p95} / ${t.max}`],
      ["Total", fmt.int(t.total)], ["Trainable (loss) tokens", fmt.int(t.trainable_total)],
      ["Over the context length", fmt.int(t.over_context_length)],
      ["Estimated training tokens", fmt.int(s.estimated_training_tokens)],
    ]));
  }
  if (file.purpose === "fine-tune") parts.push(tokenForm(file.id, model, reshow));
  clear(el, parts);
}

function tokenForm(fileId, model, reshow) {
  const holder = h("div", { class: "row" }, h("span", { class: "muted" }, "Loading models…"));
  api("/models").then(({ data }) => {
    const bases = data.filter((m) => m.kind === "base").map((m) => m.id);
    if (!bases.length) { clear(holder, h("span", { class: "muted" }, "Pull or import a base model to see token statistics.")); return; }
    const pick = select(bases, { value: model || bases[0], name: "model", id: "token-model" });
    clear(holder, field("Token statistics under", pick),
      h("button", { type: "button", onclick: () => reshow(fileId, pick.value) }, "Count tokens"));
  }, (err) => clear(holder, alertBox(err)));
  return holder;
}
