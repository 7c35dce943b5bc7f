// The console's shell: sign-in, navigation and a hash router (#/jobs/ID); pages live in pages/*.js.
import { api, keyStore, setUnauthorizedHandler } from "./api.js";
import { alertBox, clear, field, h } from "./ui.js";
import * as datasets from "./pages/datasets.js";
import * as jobs from "./pages/jobs.js";
import * as job from "./pages/job.js";
import * as models from "./pages/models.js";
import * as clusters from "./pages/clusters.js";
import * as playground from "./pages/playground.js";
import * as evals from "./pages/evals.js";

const routes = [
  [/^#\/datasets$/, datasets], [/^#\/jobs$/, jobs], [/^#\/jobs\/([^/]+)$/, job], [/^#\/models$/, models],
  [/^#\/models\/(.+)$/, models], [/^#\/clusters$/, clusters], [/^#\/playground$/, playground], [/^#\/evals$/, evals],
];
const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const signoutButton = document.getElementById("signout");
let session = null;     // {key: {id, name, role}, role, can_write}
let cleanup = null;     // the current page's stop function (polling timers)

function signOut(reason) {
  keyStore.clear();
  session = null;
  nav.hidden = true;
  signoutButton.hidden = true;
  who.textContent = "";
  renderSignIn(reason);
}

function renderSignIn(reason) {
  if (cleanup) { cleanup(); cleanup = null; }
  const input = h("input", { type: "password", name: "key", autocomplete: "off", required: true, spellcheck: "false" });
  const slot = h("div");
  const form = h("form", { class: "card signin", "aria-labelledby": "signin-title",
    onsubmit: async (e) => {
      e.preventDefault();
      keyStore.set(input.value.trim());
      try {
        await start();
      } catch (err) {
        keyStore.clear();
        clear(slot, alertBox(err));
      }
    } },
    h("h1", { id: "signin-title" }, "Sign in to graftlm"),
    h("p", { class: "muted" }, "Paste an API key (graft keys create, or GRAFT_HOME/admin.key). It stays in this browser tab only."),
    field("API key", input),
    reason ? h("div", { role: "alert" }, reason) : null, slot,
    h("p", {}, h("button", { class: "primary", type: "submit" }, "Sign in")));
  clear(main, form);
  input.focus();
}

async function start() {
  session = await api("/console/whoami");
  nav.hidden = false;
  signoutButton.hidden = false;
  who.textContent = `${session.key.name} · ${session.role}${session.can_write ? "" : " (read-only)"}`;
  if (!location.hash || location.hash === "#/" || location.hash === "#/signin") location.hash = "#/datasets";
  else route();
}

function route() {
  if (!session) return;
  if (cleanup) { cleanup(); cleanup = null; }
  const hash = location.hash;
  for (const a of nav.querySelectorAll("a")) {
    const active = hash === a.getAttribute("href") || hash.startsWith(a.getAttribute("href") + "/");
    if (active) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  for (const [pattern, page] of routes) {
    const m = hash.match(pattern);
    if (!m) continue;
    clear(main);
    const ctx = { session, canWrite: session.can_write, params: m.slice(1).map(decodeURIComponent) };
    Promise.resolve(page.render(main, ctx)).then((stop) => { cleanup = stop || null; }, (err) => main.append(alertBox(err)));
    return;
  }
  location.hash = "#/datasets";
}

setUnauthorizedHandler((err) => signOut(`The key was refused: ${err.message}. Sign in again.`));
signoutButton.addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);
if (keyStore.get()) start().catch(() => signOut("The saved key was refused. Sign in again."));
else renderSignIn();
