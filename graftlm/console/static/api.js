// Talking to the server: the key lives in sessionStorage only (gone when the tab closes) and travels in the
// Authorization header, never in a URL.
const KEY = "graftlm.console.key";

export const keyStore = {
  get: () => sessionStorage.getItem(KEY),
  set: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.param = err.param || null;
    this.code = err.code || null;
  }
}

let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

function headers(extra = {}) {
  return { Authorization: `Bearer ${keyStore.get() || ""}`, ...extra };
}

async function check(r) {
  if (r.ok) return r;
  const body = await r.json().catch(() => null);
  const err = new ApiError(r.status, body);
  if (r.status === 401) onUnauthorized(err);
  throw err;
}

export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, headers: headers(), signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await check(await fetch(`/v1${path}`, init));
  return (r.headers.get("content-type") || "").includes("json") ? r.json() : r;
}

export async function apiBlob(path) {
  const r = await check(await fetch(`/v1${path}`, { headers: headers() }));
  return r.blob();
}

// Every page of a list (`after` = the last id seen), up to `max` items.
export async function listAll(path, max = 1000) {
  const out = [];
  let after = null;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(after ? `${path}${sep}after=${encodeURIComponent(after)}` : path);
    out.push(...page.data);
    if (!page.has_more || !page.data.length || out.length >= max) return out;
    after = page.data[page.data.length - 1].id;
  }
}

// POST a streaming request and yield each Server-Sent Event's JSON until [DONE].
export async function* streamEvents(path, body, signal) {
  const r = await check(await fetch(`/v1${path}`, {
    method: "POST", signal, headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify({ ...body, stream: true }),
  }));
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const obj = JSON.parse(data);
        if (obj.error) throw new ApiError(0, obj);  // the stream had started: the status was already sent
        yield obj;
      }
    }
  }
}

// Multipart upload with progress (fetch cannot report upload progress; XMLHttpRequest can).
export function uploadFile(file, purpose, onProgress, dataPolicy) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/files");
    xhr.setRequestHeader("Authorization", `Bearer ${keyStore.get() || ""}`);
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) { onProgress(1); resolve(xhr.response); return; }
      const err = new ApiError(xhr.status, xhr.response);
      if (xhr.status === 401) onUnauthorized(err);
      reject(err);
    };
    xhr.onerror = () => reject(new ApiError(0, { error: { message: "network error during upload" } }));
    const form = new FormData();
    form.append("purpose", purpose);
    if (dataPolicy) form.append("data_policy", dataPolicy);
    form.append("file", file, file.name);
    xhr.send(form);
  });
}
