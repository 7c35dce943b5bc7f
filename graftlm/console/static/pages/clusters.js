// Dedicated AI clusters and endpoints: create, capacity used of 50, activate / deactivate, unit-hours and cost.
import { api, listAll } from "../api.js";
import { alertBox, badge, clear, field, fmt, h, select, showFormError, table } from "../ui.js";

export async function render(root, ctx) {
  const clustersEl = h("div", { id: "cluster-list" });
  const endpointsEl = h("div", { id: "endpoint-list" });
  const usageEl = h("div", { id: "usage" });
  const forms = h("div", { class: "grid2" });
  const actionSlot = h("div", { "aria-live": "polite" });
  const price = h("input", { type: "number", min: "0", step: "any", name: "price_per_unit_hour", id: "price", placeholder: "e.g. 6.5" });

  async function refresh() {
    const [clusters, endpoints, models] = await Promise.all([listAll("/dedicated_ai_clusters"), listAll("/endpoints"), api("/models")]);
    const names = Object.fromEntries(clusters.map((c) => [c.id, c.name]));
    clear(clustersEl, table([
      { label: "Cluster", value: (c) => c.name },
      { label: "Id", value: (c) => h("code", {}, c.id) },
      { label: "Type", value: (c) => c.type },
      { label: "Units", num: true, value: (c) => c.unit_count },
      { label: "Base model", value: (c) => c.base_model || "—" },
      { label: "State", value: (c) => badge(c.lifecycle_state) },
      { label: "Endpoints used", num: true, value: (c) => (c.type === "HOSTING" ? `${c.used_endpoint_capacity} of ${c.total_endpoint_capacity}` : "—") },
      { label: "", value: (c) => (ctx.canWrite ? act(`Delete ${c.name}`, "Delete", "danger", () => api(`/dedicated_ai_clusters/${c.id}`, { method: "DELETE" })) : null) },
    ], clusters, { empty: "No clusters yet." }));
    clear(endpointsEl, table([
      { label: "Endpoint", value: (e) => e.name },
      { label: "Model", value: (e) => e.model },
      { label: "Cluster", value: (e) => names[e.dedicated_ai_cluster_id] || e.dedicated_ai_cluster_id },
      { label: "State", value: (e) => badge(e.lifecycle_state) },
      { label: "", value: (e) => (!ctx.canWrite ? null : h("div", { class: "row" },
        e.lifecycle_state === "ACTIVE" ? act(`Deactivate ${e.name}`, "Deactivate", null, () => api(`/endpoints/${e.id}/deactivate`, { method: "POST" })) : null,
        e.lifecycle_state === "INACTIVE" ? act(`Activate ${e.name}`, "Activate", "primary", () => api(`/endpoints/${e.id}/activate`, { method: "POST" })) : null,
        act(`Delete ${e.name}`, "Delete", "danger", () => api(`/endpoints/${e.id}`, { method: "DELETE" })))) },
    ], endpoints, { empty: "No endpoints yet." }));
    if (ctx.canWrite) clear(forms, clusterForm(models.data), endpointForm(models.data, clusters));
    await refreshUsage();
  }

  async function refreshUsage() {
    const p = price.value.trim();
    const u = await api(`/usage${p ? `?price_per_unit_hour=${encodeURIComponent(p)}` : ""}`);
    clear(usageEl, table([
      { label: "Cluster", value: (r) => r.name || r.dedicated_ai_cluster_id },
      { label: "Type", value: (r) => r.type },
      { label: "Units", num: true, value: (r) => r.unit_count },
      { label: "Jobs", num: true, value: (r) => r.jobs },
      { label: "Unit-hours", num: true, value: (r) => fmt.num(r.unit_hours, 2) },
      { label: "Cost", num: true, value: (r) => (u.price_per_unit_hour !== undefined ? (r.unit_hours * u.price_per_unit_hour).toFixed(2) : "—") },
    ], u.data, { empty: "No usage yet." }),
    h("p", {}, h("strong", {}, `Total: ${fmt.num(u.total_unit_hours, 2)} unit-hours`),
      u.cost !== undefined ? ` × ${u.price_per_unit_hour} = ${u.cost.toFixed(2)}` : ""));
  }

  function act(label, text, cls, call) {
    return h("button", { type: "button", class: cls, "aria-label": label, onclick: async (e) => {
      e.target.disabled = true;
      try { await call(); clear(actionSlot); } catch (err) { clear(actionSlot, alertBox(err)); }
      await refresh();
    } }, text);
  }

  function clusterForm(models) {
    const type = select(["HOSTING", "FINE_TUNING"], { name: "type", id: "cluster-type" });
    const units = h("input", { type: "number", min: "1", step: "1", name: "unit_count", id: "cluster-units", placeholder: "HOSTING 1, FINE_TUNING 2" });
    const base = select(models.filter((m) => m.kind === "base").map((m) => m.id), { name: "base_model", id: "cluster-base" });
    const name = h("input", { type: "text", name: "name", id: "cluster-name" });
    const slot = h("div");
    const form = h("form", { class: "fields", "aria-label": "New cluster" }, field("Type", type), field("Units", units),
      field("Base model (hosting)", base), field("Name", name),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Create cluster"), slot));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const body = { type: type.value, name: name.value.trim() || undefined };
      if (units.value) body.unit_count = parseInt(units.value, 10);
      if (type.value === "HOSTING") body.base_model = base.value;
      try { await api("/dedicated_ai_clusters", { method: "POST", body }); await refresh(); }
      catch (err) { showFormError(form, slot, err); }
    });
    return h("section", { class: "card" }, h("h2", {}, "New cluster"), form);
  }

  function endpointForm(models, clusters) {
    const hosting = clusters.filter((c) => c.type === "HOSTING" && c.lifecycle_state === "ACTIVE");
    const model = select(models.map((m) => m.id), { name: "model", id: "endpoint-model" });
    const cluster = select(hosting.map((c) => [c.id, `${c.name} (${c.base_model})`]), { name: "dedicated_ai_cluster_id", id: "endpoint-cluster" });
    const name = h("input", { type: "text", name: "name", id: "endpoint-name" });
    const slot = h("div");
    const form = h("form", { class: "fields", "aria-label": "New endpoint" }, field("Model", model), field("Hosting cluster", cluster),
      field("Name", name, "clients send this as `model`"),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Create endpoint"), slot));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        await api("/endpoints", { method: "POST", body: { model: model.value, dedicated_ai_cluster_id: cluster.value, name: name.value.trim() || undefined } });
        await refresh();
      } catch (err) { showFormError(form, slot, err); }
    });
    return h("section", { class: "card" }, h("h2", {}, "New endpoint"), form);
  }

  price.addEventListener("change", () => refreshUsage().catch((err) => clear(usageEl, alertBox(err))));
  root.append(h("h1", {}, "Clusters and endpoints"), forms, actionSlot,
    h("section", { class: "card" }, h("h2", {}, "Dedicated AI clusters"), clustersEl),
    h("section", { class: "card" }, h("h2", {}, "Endpoints"), endpointsEl),
    h("section", { class: "card" }, h("h2", {}, "Usage"), field("Price per unit-hour", price), usageEl));
  await refresh();
}
