// Playground: chat with any endpoint or model (streamed), optionally side by side with a second one on the same
// prompt, optionally grounded in a knowledge base (answers list their citations).
import { api, listAll, streamEvents } from "../api.js";
import { alertBox, clear, field, h, select } from "../ui.js";

export async function render(root, ctx) {
  const [endpoints, models, kbs] = await Promise.all([
    listAll("/endpoints"), api("/models"), api("/knowledge_bases").catch(() => ({ data: [] }))]);
  const targets = [
    ...endpoints.map((e) => [e.name, `endpoint ${e.name} → ${e.model}${e.lifecycle_state === "ACTIVE" ? "" : ` (${e.lifecycle_state})`}`]),
    ...models.data.map((m) => [m.id, `${m.kind} model ${m.id}`]),
  ];
  root.append(h("h1", {}, "Playground"));
  if (!targets.length) {
    root.append(h("p", { class: "muted" }, "Nothing to chat with yet: pull a base model, or create an endpoint."));
    return;
  }
  const left = select(targets, { name: "model", id: "pg-model" });
  const right = select([["", "— none —"], ...targets], { name: "compare", id: "pg-compare" });
  const kb = select([["", "— none —"], ...kbs.data.map((k) => [k.id, k.name || k.id])], { name: "knowledge_base_id", id: "pg-kb" });
  const system = h("textarea", { name: "system", id: "pg-system", rows: "2", placeholder: "optional system prompt" });
  const maxTokens = h("input", { type: "number", name: "max_tokens", id: "pg-max-tokens", min: "1", value: "64" });
  const temperature = h("input", { type: "number", name: "temperature", id: "pg-temperature", min: "0", max: "2", step: "0.1", value: "0" });
  const prompt = h("textarea", { name: "prompt", id: "pg-prompt", rows: "3", required: true, placeholder: "Ask something" });
  const send = h("button", { type: "submit", class: "primary", disabled: !ctx.canWrite }, "Send");
  const panesEl = h("div", { class: "panes" });
  const panes = [];

  function syncPanes() {
    const wanted = [left.value, right.value].filter(Boolean);
    panes.length = 0;
    clear(panesEl);
    wanted.forEach((model, i) => {
      const pane = { model, history: [], log: h("div", { "aria-live": "polite" }), el: null };
      pane.el = h("section", { class: "pane", "aria-label": `Answers from ${model}`, dataset: { pane: String(i) } },
        h("h2", {}, model), pane.log);
      panes.push(pane);
      panesEl.append(pane.el);
    });
  }
  left.addEventListener("change", syncPanes);
  right.addEventListener("change", syncPanes);
  syncPanes();

  async function ask(pane, text) {
    pane.history.push({ role: "user", content: text });
    const out = h("div", { class: "msg assistant", dataset: { streaming: "true", chunks: "0" } });
    const meta = h("div", { class: "muted" });
    const cites = h("ol", { class: "citations", "aria-label": "Citations" });
    pane.log.append(h("div", { class: "msg user" }, text), out, meta);
    const messages = [...(system.value.trim() ? [{ role: "system", content: system.value.trim() }] : []), ...pane.history];
    const body = { model: pane.model, messages, temperature: parseFloat(temperature.value || "0"),
      stream_options: { include_usage: true } };
    if (maxTokens.value) body.max_tokens = parseInt(maxTokens.value, 10);
    if (kb.value) body.knowledge_base_id = kb.value;
    let text_ = "";
    let finish = null;
    try {
      for await (const chunk of streamEvents("/chat/completions", body)) {
        if (chunk.citations && chunk.citations.length) {
          clear(cites, chunk.citations.map((c) => h("li", { value: String(c.index) }, c.text.slice(0, 240))));
          pane.log.append(h("h3", {}, "Citations"), cites);
        }
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) {
            text_ += choice.delta.content;
            out.textContent = text_;
            out.dataset.chunks = String(Number(out.dataset.chunks) + 1);
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
        if (chunk.usage) meta.textContent = `${chunk.usage.completion_tokens} tokens · finish: ${finish || "—"}`;
      }
      pane.history.push({ role: "assistant", content: text_ });
      if (!meta.textContent) meta.textContent = `finish: ${finish || "—"}`;
    } catch (err) {
      pane.history.pop();
      out.remove();
      pane.log.append(alertBox(err));
    } finally {
      out.dataset.streaming = "false";
    }
  }

  const form = h("form", { "aria-label": "Chat" },
    h("div", { class: "fields form-grid" },
      field("Model or endpoint", left), field("Side by side with", right), field("Knowledge base", kb),
      field("Max tokens", maxTokens), field("Temperature", temperature)),
    field("System prompt", system), field("Message", prompt),
    h("div", { class: "row" }, send, ctx.canWrite ? null : h("span", { class: "muted" }, "Chatting needs an editor key; this key is read-only.")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = prompt.value.trim();
    if (!text) return;
    send.disabled = true;
    prompt.value = "";
    await Promise.all(panes.map((p) => ask(p, text)));
    send.disabled = false;
    prompt.focus();
  });
  prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
  });
  root.append(h("section", { class: "card" }, form), panesEl);
}
