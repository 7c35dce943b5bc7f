// Small DOM helpers: elements are built with textContent (never innerHTML), so data cannot become markup.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el, ...children) { el.replaceChildren(); return append(el, children); }

export function table(columns, rows, { caption, empty = "Nothing here yet." } = {}) {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h("table", {},
    caption ? h("caption", { class: "muted" }, caption) : null,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : null }, c.value(r)))))));
}

export function badge(state) { return h("span", { class: `badge ${state || ""}` }, state || "—"); }

export function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.filter(([, v]) => v !== undefined).map(([k, v]) =>
    [h("dt", {}, k), h("dd", {}, v === null || v === "" ? "—" : v)]));
}

export function alertBox(error) {
  return h("div", { role: "alert" }, error.status ? `${error.message} (HTTP ${error.status})` : String(error.message || error));
}

export function field(label, control, help) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  const helpId = help ? `${id}-help` : null;
  if (helpId) control.setAttribute("aria-describedby", helpId);
  return h("div", { class: "field" }, h("label", { for: id }, label), control,
    help ? h("div", { class: "help", id: helpId }, help) : null);
}

export function select(options, { value, name, required, id } = {}) {
  const el = h("select", { name, required, id });
  for (const o of options) {
    const [v, label] = Array.isArray(o) ? o : [o, o];
    el.append(h("option", { value: v, selected: v === value }, label));
  }
  return el;
}

// Show a form error next to the field the server named in `param`.
export function showFormError(form, slot, error) {
  form.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
  const leaf = error.param ? error.param.split(".").pop() : null;
  const bad = leaf && form.querySelector(`[name="${CSS.escape(leaf)}"]`);
  if (bad) { bad.setAttribute("aria-invalid", "true"); bad.focus(); }
  clear(slot, alertBox(error));
}

export const fmt = {
  time: (t) => (t ? new Date(t * 1000).toLocaleString() : "—"),
  bytes: (n) => (n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`),
  num: (x, d = 4) => (x === null || x === undefined ? "—" : typeof x === "number" ? +x.toFixed(d) + "" : String(x)),
  int: (x) => (x === null || x === undefined ? "—" : Number(x).toLocaleString("en-US")),
};

export function link(href, text) { return h("a", { href }, text); }
