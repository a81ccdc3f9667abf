// The DRaaS dashboard. Plain JavaScript, no build step, no dependencies.
//
// Every figure on the page comes from the REST API with the API key the
// operator signs in with (kept in this tab's sessionStorage only). The page
// stays live by following /api/events: fetch() reads the event stream, not
// EventSource, because EventSource cannot send the Authorization header.
// Data is only ever put into the page as text (textContent), never as HTML.
"use strict";

const TOKEN_KEY = "draas.token";
const LINES_BEFORE_CONFIGURATION = 3; // name, platformType, "configuration:"
const EXAMPLE_CONFIGURATION = [
  "sources:",
  "  - kind: mock",
  "    id: counter",
  "    dataType:",
  "      type: counter",
  "    intervalMs: 1000",
  "queries:",
  "  - id: values",
  "    autoStart: true",
  "    queryLanguage: Cypher",
  "    query: MATCH (c:Counter) RETURN c.value AS value",
  "    sources:",
  "      - sourceId: counter",
  "reactions:",
  "  - kind: log",
  "    id: console",
  "    queries: [values]",
  "",
].join("\n");

// === small helpers ===

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const $ = (selector) => document.querySelector(selector);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function badge(state) {
  return el("span", { class: "badge " + (state || ""), "data-state": state || "" }, state || "?");
}

function when(timestamp) {
  if (!timestamp) return "";
  const date = new Date(timestamp);
  return Number.isNaN(date.getTime()) ? String(timestamp) : date.toLocaleString();
}

function clock(timestamp) {
  const date = new Date(timestamp);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleTimeString();
}

function toast(message, bad) {
  const box = $("#toast");
  box.textContent = message;
  box.className = "toast" + (bad ? " bad" : "");
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, bad ? 8000 : 3000);
}

// Runs `fn` at most once per `ms`, the last call winning.
function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

// === the API ===

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || "HTTP " + status);
    this.status = status;
    this.problem = problem || {};
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function authHeaders() {
  const key = token();
  return key ? { Authorization: "Bearer " + key } : {};
}

async function api(method, path, options = {}) {
  const headers = Object.assign({}, authHeaders(), options.headers || {});
  let body;
  if (options.yaml !== undefined) {
    headers["Content-Type"] = "application/yaml";
    body = options.yaml;
  } else if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(options.json);
  }
  const response = await fetch(path, { method, headers, body });
  if (response.status === 401) {
    showLogin("Sign in with an API key.");
    throw new ApiError(401, { detail: "not signed in" });
  }
  const type = response.headers.get("content-type") || "";
  const payload = type.includes("json") ? await response.json().catch(() => null) : await response.text();
  if (!response.ok) throw new ApiError(response.status, typeof payload === "object" ? payload : { detail: payload });
  return { payload, etag: response.headers.get("etag"), pending: response.headers.get("draas-pending") };
}

const get = async (path, headers) => (await api("GET", path, { headers })).payload;
const segment = (text) => encodeURIComponent(text);

// === live events ===

const listeners = new Set();
let streamAbort = null;

function setLive(on) {
  const live = $("#live");
  live.className = "live " + (on ? "on" : "off");
  live.textContent = on ? "live" : "reconnecting";
}

// Follows /api/events for as long as the page is open, reconnecting with
// Last-Event-ID so that nothing published while away is missed. `ready`
// runs once the subscription stands (so a load after it misses nothing).
async function followEvents(ready) {
  let lastEventId = null;
  let announced = false;
  for (;;) {
    streamAbort = new AbortController();
    try {
      const headers = authHeaders();
      if (lastEventId) headers["Last-Event-ID"] = lastEventId;
      const response = await fetch("/api/events", { headers, signal: streamAbort.signal });
      if (response.status === 401) {
        showLogin("Sign in with an API key.");
        return;
      }
      if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
      setLive(true);
      if (!announced) {
        announced = true;
        ready();
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = parseEvent(block);
          if (event.id) lastEventId = event.id;
          if (event.data) deliver(event);
        }
      }
    } catch (error) {
      if (error.name === "AbortError") return;
    }
    setLive(false);
    if (!announced) {
      announced = true;
      ready();
    }
    await sleep(1000);
  }
}

function parseEvent(block) {
  const event = { type: "message", id: null, data: "" };
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event.type = value;
    else if (field === "id") event.id = value;
    else if (field === "data") data.push(value);
  }
  event.data = data.join("\n");
  return event;
}

function deliver(event) {
  let envelope;
  try {
    envelope = JSON.parse(event.data);
  } catch (_) {
    return;
  }
  const body = envelope.event || {};
  for (const listener of listeners) listener(event.type, body, envelope);
}

// === sign-in ===

function showLogin(why) {
  if (streamAbort) streamAbort.abort();
  const main = $("#main");
  main.replaceChildren(
    el("section", { class: "panel login" },
      el("h2", { text: "Sign in" }),
      el("p", { class: "note", text: why }),
      el("p", { class: "note", text: "An API key from `draas keys create --role viewer|operator|admin`. It is kept in this tab only." }),
      el("form", { id: "login-form", onsubmit: (e) => {
        e.preventDefault();
        const key = $("#token").value.trim();
        if (!key) return;
        sessionStorage.setItem(TOKEN_KEY, key);
        location.reload();
      } },
        el("label", { for: "token", text: "API key" }),
        el("input", { id: "token", type: "password", autocomplete: "off", placeholder: "draas_…" }),
        el("p", {}, el("button", { id: "sign-in", class: "primary", type: "submit", text: "Sign in" })))));
  setLive(false);
  $("#live").textContent = "signed out";
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  location.href = "/";
}

// === actions ===

async function act(name, action) {
  try {
    if (action === "delete") {
      if (!confirm("Delete " + name + " and its server?")) return;
      const deleted = await api("DELETE", "/api/server/instances/" + segment(name));
      toast(deleted.pending ? name + ": delete pending: " + deleted.pending : name + " deleted");
      if (location.pathname !== "/") location.href = "/";
      return;
    }
    toast(action + " " + name + "…");
    const done = await api("POST", "/api/server/instances/" + segment(name) + "/" + action);
    if (done.pending) toast(action + " " + name + " pending: " + done.pending);
  } catch (error) {
    if (error.status !== 401) toast(action + " " + name + ": " + error.message, true);
  }
}

function actionButtons(instance) {
  const active = ["Pending", "Starting", "Running", "Degraded", "Stopping"].includes(instance.status.state);
  const button = (action, label, extra) =>
    el("button", { type: "button", "data-action": action, class: extra, onclick: () => act(instance.name, action) }, label);
  return el("span", { class: "actions" },
    active ? button("stop", "Stop") : button("start", "Start", "primary"),
    button("restart", "Restart"),
    button("delete", "Delete", "danger"));
}

// === the instance list (home page) ===

async function home() {
  const main = $("#main");
  main.replaceChildren(
    el("section", { class: "panel" },
      el("h2", { text: "Instances" }),
      el("table", { id: "instances" },
        el("thead", {}, el("tr", {}, ["Name", "Platform", "State", "Desired", "Reason", "Restarts", "Endpoint", ""].map((h) => el("th", { text: h })))),
        el("tbody", {}))),
    el("div", { class: "grid" },
      createForm(),
      el("div", {},
        el("section", { class: "panel" }, el("h2", { text: "Platforms and workers" }), el("div", { id: "platforms" })),
        el("section", { class: "panel" }, el("h2", { text: "Recent changes" }), el("ul", { id: "timeline", class: "timeline" })))));

  const refreshList = debounce(loadInstances, 150);
  const refreshPlatforms = debounce(loadPlatforms, 1000);
  listeners.add((type, body) => {
    if (type === "WorkerHeartbeat") {
      refreshPlatforms();
      return;
    }
    if (type === "InstanceStatusChanged") addChanges([body]);
    refreshList();
  });
  followEvents(() => {
    loadInstances();
    loadPlatforms();
    loadTimeline();
  });
}

async function loadInstances() {
  let list;
  try {
    list = await get("/api/server/instances?limit=1000");
  } catch (error) {
    if (error.status !== 401) toast("instances: " + error.message, true);
    return;
  }
  for (const instance of list.items || []) names.set(instance.id, instance.name);
  renderTimeline();
  const rows = (list.items || []).map((instance) => {
    const runtime = instance.runtime || {};
    return el("tr", { "data-name": instance.name },
      el("td", {}, el("a", { href: "/instances/" + segment(instance.name), text: instance.name })),
      el("td", { text: instance.platformType }),
      el("td", { class: "state" }, badge(instance.status.state)),
      el("td", { text: instance.desiredState }),
      el("td", { text: instance.status.reason || "", title: instance.status.message || "" }),
      el("td", { class: "num", text: instance.status.restartCount || 0 }),
      el("td", { text: runtime.endpoint || "" }),
      el("td", {}, actionButtons(instance)));
  });
  const body = $("#instances tbody");
  if (!body) return;
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 8, class: "empty", text: "No instances yet: create one below." }))]));
}

async function loadPlatforms() {
  let answer;
  try {
    answer = await get("/api/server/platforms");
  } catch (_) {
    return;
  }
  const now = Date.now();
  const rows = [];
  for (const platform of answer.platforms || []) {
    const workers = platform.workers || [];
    if (!workers.length) {
      rows.push(el("tr", { "data-platform": platform.platformType },
        el("td", { text: platform.platformType }), el("td", { colspan: 4, class: "empty", text: "no live worker" })));
    }
    for (const worker of workers) {
      const age = Math.max(0, Math.round((now - new Date(worker.lastHeartbeat).getTime()) / 1000));
      rows.push(el("tr", { "data-platform": platform.platformType },
        el("td", { text: platform.platformType }),
        el("td", { text: worker.workerId, title: worker.scope }),
        el("td", { text: worker.platformVersion || worker.version }),
        el("td", { class: "num", text: worker.instances + (worker.capacity ? " / " + worker.capacity : "") }),
        el("td", { class: "num", text: age + " s ago" })));
    }
  }
  const box = $("#platforms");
  if (!box) return;
  box.replaceChildren(el("table", {},
    el("thead", {}, el("tr", {}, ["Platform", "Worker", "Version", "Instances", "Heartbeat"].map((h) => el("th", { text: h })))),
    el("tbody", {}, rows)));
}

// The timeline: the newest status changes first, names from the list.
const timeline = [];
const seenChanges = new Set();
const names = new Map();

async function loadTimeline() {
  try {
    const head = await get("/api/status/recent-changes?since=18446744073709551615&limit=1");
    const since = Math.max(0, head.cursor - 50);
    const page = await get("/api/status/recent-changes?since=" + since + "&limit=50");
    addChanges(page.changes || []);
  } catch (_) {
    // The list still works without the timeline.
  }
}

function addChanges(changes) {
  for (const change of changes) {
    if (change.cursor && seenChanges.has(change.cursor)) continue;
    if (change.cursor) seenChanges.add(change.cursor);
    timeline.unshift(change);
  }
  timeline.sort((a, b) => (b.cursor || 0) - (a.cursor || 0));
  timeline.splice(100);
  renderTimeline();
}

function renderTimeline() {
  const list = $("#timeline");
  if (!list) return;
  if (!timeline.length) {
    list.replaceChildren(el("li", { class: "empty", text: "Nothing yet." }));
    return;
  }
  list.replaceChildren(...timeline.map((change) => el("li", { "data-instance": change.instanceId },
    el("time", { text: clock(change.timestamp) }),
    el("strong", { text: names.get(change.instanceId) || change.instanceId.slice(0, 8) }), " ",
    change.old ? badge(change.old) : "", change.old ? " → " : "", badge(change.new), " ",
    el("span", { class: "note", text: [change.reason, change.message].filter(Boolean).join(": ") }))));
}

// === the create form ===

function createForm() {
  const editor = codeEditor("create-config", EXAMPLE_CONFIGURATION);
  const form = el("form", { id: "create-form", onsubmit: (e) => { e.preventDefault(); create(editor); } },
    el("div", { class: "row" },
      el("div", {}, el("label", { for: "create-name", text: "Name" }),
        el("input", { id: "create-name", required: true, placeholder: "my-queries", pattern: "[a-z0-9]([a-z0-9-]*[a-z0-9])?", maxlength: 63 })),
      el("div", {}, el("label", { for: "create-platform", text: "Platform" }),
        el("select", { id: "create-platform" }, ["Process", "Docker", "Kubernetes"].map((p) => el("option", { value: p, text: p })))),
      el("div", {}, el("label", {}, el("input", { id: "create-start", type: "checkbox", checked: true }), " start it"))),
    el("label", { for: "create-config", text: "Drasi configuration (YAML: sources, queries, reactions; port and host are chosen if left out)" }),
    editor.node,
    el("ul", { id: "create-problems", class: "problems" }),
    el("p", {}, el("button", { id: "create-submit", class: "primary", type: "submit", text: "Create" })));
  return el("section", { class: "panel" }, el("h2", { text: "New instance" }), form);
}

async function create(editor) {
  const name = $("#create-name").value.trim();
  const platform = $("#create-platform").value;
  const configuration = editor.textarea.value;
  // One YAML document: the instance, its configuration indented under it.
  let document = "name: " + JSON.stringify(name) + "\nplatformType: " + platform + "\n";
  if (configuration.trim()) {
    document += "configuration:\n" + configuration.split("\n").map((line) => (line ? "  " + line : line)).join("\n") + "\n";
  }
  showProblems($("#create-problems"), editor, []);
  const submit = $("#create-submit");
  submit.disabled = true;
  try {
    await api("POST", "/api/server/instances", { yaml: document });
    toast(name + " created");
    if ($("#create-start").checked) await act(name, "start");
    $("#create-name").value = "";
  } catch (error) {
    if (error.status !== 401) showProblems($("#create-problems"), editor, problemsOf(error, LINES_BEFORE_CONFIGURATION));
  } finally {
    submit.disabled = false;
  }
}

// The problems of a refusal, each with the editor line it names (lines of
// the YAML sent, less `offset` lines that precede the editor's text).
function problemsOf(error, offset) {
  const problem = error.problem || {};
  const errors = problem.errors && problem.errors.length ? problem.errors : [{ path: "", message: problem.detail || error.message }];
  return errors.map((e) => {
    const line = e.line ? e.line - offset : null;
    return { line: line && line > 0 ? line : null, path: e.path, message: e.message };
  });
}

// === a YAML editor: a textarea with line numbers that can mark lines ===

function codeEditor(id, text) {
  const gutter = el("pre", { class: "gutter", "aria-hidden": "true" });
  const textarea = el("textarea", { id, spellcheck: "false", autocapitalize: "off", autocomplete: "off" });
  textarea.value = text;
  const editor = { node: el("div", { class: "editor" }, gutter, textarea), textarea, gutter, marked: new Map() };
  const draw = () => {
    const count = textarea.value.split("\n").length;
    const lines = [];
    for (let i = 1; i <= count; i += 1) {
      const message = editor.marked.get(i);
      lines.push(el("span", { class: message ? "error" : "", title: message || "", "data-line": i, text: i }));
    }
    gutter.replaceChildren(...lines);
    gutter.scrollTop = textarea.scrollTop;
  };
  textarea.addEventListener("input", draw);
  textarea.addEventListener("scroll", () => { gutter.scrollTop = textarea.scrollTop; });
  editor.draw = draw;
  draw();
  return editor;
}

function showProblems(list, editor, problems) {
  editor.marked = new Map(problems.filter((p) => p.line).map((p) => [p.line, p.message]));
  editor.draw();
  list.replaceChildren(...problems.map((p) => el("li", { "data-line": p.line || "" },
    p.line ? el("span", { class: "where", text: "line " + p.line, onclick: () => selectLine(editor.textarea, p.line) }) : "",
    p.line ? " " : "",
    p.path ? el("code", { text: p.path }) : "",
    p.path ? ": " : "",
    p.message)));
}

function selectLine(textarea, line) {
  const lines = textarea.value.split("\n");
  const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
  textarea.focus();
  textarea.setSelectionRange(start, start + (lines[line - 1] || "").length);
}

// === one instance ===

// The open instance page's state (the save button reads its ETag).
let currentView = null;

async function instancePage(name) {
  const main = $("#main");
  const editor = codeEditor("config-editor", "");
  main.replaceChildren(
    el("h1", {}, el("span", { id: "instance-name", text: name }), el("span", { id: "state" }), el("span", { id: "instance-actions" })),
    el("div", { class: "grid" },
      el("section", { class: "panel" }, el("h2", { text: "Status" }), el("dl", { id: "status", class: "facts" })),
      el("section", { class: "panel" }, el("h2", { text: "Runtime" }), el("dl", { id: "runtime", class: "facts" }))),
    el("section", { class: "panel" },
      el("h2", { text: "Data plane" }),
      el("p", { id: "data-plane-note", class: "note" }),
      el("table", { id: "data-plane" },
        el("thead", {}, el("tr", {}, ["Instance", "Kind", "Component", "Status", "Bootstrap", "Results", "Changes", "Lag", "Error"].map((h) => el("th", { text: h })))),
        el("tbody", {}))),
    el("section", { class: "panel" },
      el("h2", { text: "Query results" }),
      el("div", { class: "row" }, el("select", { id: "query-select" }), el("span", { id: "results-note", class: "note" })),
      el("table", { id: "results" }, el("thead", {}), el("tbody", {}))),
    el("section", { class: "panel" },
      el("h2", { text: "Configuration" }),
      editor.node,
      el("ul", { id: "config-problems", class: "problems" }),
      el("p", { class: "row" },
        el("button", { id: "config-save", class: "primary", type: "button", text: "Save", onclick: () => saveConfiguration(name, editor) }),
        el("button", { id: "config-reload", type: "button", text: "Reload", onclick: () => loadConfiguration(name, editor) }),
        el("span", { id: "config-note", class: "note" }))),
    el("div", { class: "grid" },
      el("section", { class: "panel" }, el("h2", { text: "Log" }), el("pre", { id: "logs", class: "logs" })),
      el("section", { class: "panel" },
        el("h2", { text: "Restart history and changes" }),
        el("table", { id: "history" },
          el("thead", {}, el("tr", {}, ["Time", "From", "To", "Reason", "Message"].map((h) => el("th", { text: h })))),
          el("tbody", {})))));

  const view = { name, id: null, instance: null, editor, dirty: false, etag: null };
  currentView = view;
  editor.textarea.addEventListener("input", () => { view.dirty = true; });
  const refresh = debounce(() => loadInstance(view), 100);
  listeners.add((type, body) => {
    const id = body.instanceId;
    if (!id || (view.id && id !== view.id)) return;
    if (type === "InstanceDeleted") {
      toast(name + " was deleted", true);
      return;
    }
    refresh();
  });
  $("#query-select").addEventListener("change", () => loadResults(view));
  followEvents(async () => {
    await loadInstance(view);
    await loadConfiguration(name, editor, view);
    pollResults(view);
    pollDataPlane(view);
    pollLogs(view);
  });
}

function facts(target, pairs) {
  target.replaceChildren(...pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { "data-fact": k }, v instanceof Node ? v : String(v))]));
}

async function loadInstance(view) {
  let instance;
  try {
    instance = await get("/api/server/instances/" + segment(view.name));
  } catch (error) {
    if (error.status === 404) {
      $("#state").replaceChildren(badge("Deleted"));
      facts($("#status"), [["State", "this instance does not exist (any more)"]]);
    }
    return;
  }
  view.id = instance.id;
  view.instance = instance;
  const status = instance.status;
  $("#state").replaceChildren(badge(status.state));
  $("#instance-actions").replaceChildren(actionButtons(instance));
  const failure = status.lastFailure;
  const policy = instance.restartPolicy || {};
  facts($("#status"), [
    ["State", status.state],
    ["Desired", instance.desiredState],
    ["Reason", status.reason],
    ["Message", status.message],
    ["Generation", instance.generation + " (running " + status.observedGeneration + ")"],
    ["Restart policy", [policy.policy, policy.maxRestarts !== undefined ? "at most " + policy.maxRestarts : null].filter(Boolean).join(", ")],
    ["Restarts in a row", status.restartCount],
    ["Next retry", status.nextRetryAt ? when(status.nextRetryAt) : null],
    ["Last failure", failure ? [when(failure.at), failure.reason, failure.message].filter(Boolean).join(" — ") : null],
    ["Updated", when(status.updatedAt)],
  ]);
  const runtime = instance.runtime || {};
  const handle = runtime.handle ? Object.entries(runtime.handle).map(([k, v]) => k + "=" + v).join(" ") : null;
  facts($("#runtime"), [
    ["Platform", instance.platformType],
    ["Worker", runtime.workerId],
    ["Scope", runtime.scope],
    ["Handle", handle],
    ["Endpoint", runtime.endpoint],
    ["Started", when(runtime.startedAt)],
    ["Last exit code", runtime.lastExitCode],
    ["Id", instance.id],
  ]);
  fillQueries(view);
  if (!view.dirty && view.etag && view.etag !== '"' + instance.generation + '"') {
    loadConfiguration(view.name, view.editor, view);
  } else if (view.dirty && view.etag && view.etag !== '"' + instance.generation + '"') {
    $("#config-note").textContent = "The configuration changed elsewhere (generation " + instance.generation + "): Reload before saving.";
  }
  loadHistory(view);
}

function fillQueries(view) {
  const select = $("#query-select");
  const configuration = view.instance.configuration || {};
  // Every lib instance's queries (drasi-server's `instances:`), else the top level's.
  const libs = configuration.instances && configuration.instances.length ? configuration.instances : [configuration];
  const queries = [...new Set(libs.flatMap((lib) => (lib.queries || []).map((q) => q.id)))];
  const current = select.value;
  if (Array.from(select.options).map((o) => o.value).join("\n") === queries.join("\n")) return;
  select.replaceChildren(...queries.map((q) => el("option", { value: q, text: q })));
  if (queries.includes(current)) select.value = current;
  if (!queries.length) $("#results-note").textContent = "The configuration has no query.";
}

async function loadResults(view) {
  const query = $("#query-select").value;
  const note = $("#results-note");
  const table = $("#results");
  if (!query || !view.instance) return;
  if (!["Running", "Degraded"].includes(view.instance.status.state)) {
    note.textContent = "The server is " + view.instance.status.state + ": no results.";
    table.tHead.replaceChildren();
    table.tBodies[0].replaceChildren();
    return;
  }
  let answer;
  try {
    answer = await get("/api/server/instances/" + segment(view.name) + "/queries/" + segment(query) + "/results");
  } catch (error) {
    note.textContent = error.message;
    return;
  }
  const rows = answer.rows || [];
  const columns = [];
  for (const row of rows) for (const key of Object.keys(row || {})) if (!columns.includes(key)) columns.push(key);
  table.tHead.replaceChildren(el("tr", {}, columns.map((c) => el("th", { text: c }))));
  table.tBodies[0].replaceChildren(...rows.map((row) => el("tr", {},
    columns.map((c) => el("td", { text: typeof row[c] === "object" ? JSON.stringify(row[c]) : String(row[c] ?? "") })))));
  note.textContent = rows.length + " row" + (rows.length === 1 ? "" : "s") + ", read " + new Date().toLocaleTimeString();
}

// What the worker reads of the server: every component of every lib
// instance, each query's bootstrap and drasi-lib's numbers.
async function loadDataPlane(view) {
  const note = $("#data-plane-note");
  const body = $("#data-plane").tBodies[0];
  if (!view.instance || !["Starting", "Running", "Degraded"].includes(view.instance.status.state)) {
    note.textContent = "The server does not run.";
    body.replaceChildren();
    return;
  }
  let status;
  try {
    status = await get("/api/server/instances/" + segment(view.name) + "/runtime-status");
  } catch (error) {
    note.textContent = error.message;
    return;
  }
  const plane = status.live && status.live.dataPlane;
  if (!plane) {
    note.textContent = "The server did not answer.";
    body.replaceChildren();
    return;
  }
  const rows = [];
  for (const lib of plane.instances || []) {
    for (const [kind, list] of [["source", lib.sources], ["query", lib.queries], ["reaction", lib.reactions]]) {
      for (const c of list || []) {
        const m = c.metrics || {};
        const b = c.bootstrap;
        const bootstrap = b ? b.state + ", " + b.elements + " elements" + (b.durationMs !== undefined ? " in " + b.durationMs + " ms" : "") : "";
        rows.push(el("tr", { "data-component": c.id },
          el("td", { text: lib.id }),
          el("td", { text: kind + (c.kind ? " (" + c.kind + ")" : "") }),
          el("td", { text: c.id }),
          el("td", {}, badge(c.status)),
          el("td", { text: bootstrap }),
          el("td", { class: "results", text: m.resultCount ?? "" }),
          el("td", { text: m.resultsEmitted ?? "" }),
          el("td", { text: m.checkpointLag ?? "" }),
          el("td", { text: c.errorMessage || "" })));
      }
    }
  }
  body.replaceChildren(...rows);
  note.textContent = "Read " + new Date().toLocaleTimeString();
}

async function pollDataPlane(view) {
  for (;;) {
    if (!document.hidden) await loadDataPlane(view);
    await sleep(2000);
  }
}

async function pollResults(view) {
  for (;;) {
    if (!document.hidden) await loadResults(view);
    await sleep(1000);
  }
}

async function pollLogs(view) {
  for (;;) {
    if (!document.hidden && view.instance && view.instance.status.state !== "Created") {
      try {
        const answer = await get("/api/server/instances/" + segment(view.name) + "/logs?tail=200");
        const pre = $("#logs");
        const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.textContent = (answer.lines || []).join("\n");
        if (atBottom) pre.scrollTop = pre.scrollHeight;
      } catch (_) {
        // The next round tries again.
      }
    }
    await sleep(2000);
  }
}

async function loadHistory(view) {
  let page;
  try {
    const head = await get("/api/status/recent-changes?since=18446744073709551615&limit=1");
    page = await get("/api/status/recent-changes?since=" + Math.max(0, head.cursor - 1000) + "&limit=1000");
  } catch (_) {
    return;
  }
  const mine = (page.changes || []).filter((c) => c.instanceId === view.id).reverse().slice(0, 50);
  $("#history tbody").replaceChildren(...mine.map((c) => el("tr", {},
    el("td", { text: when(c.timestamp) }),
    el("td", {}, c.old ? badge(c.old) : ""),
    el("td", {}, badge(c.new)),
    el("td", { text: c.reason || "" }),
    el("td", { text: c.message || "" }))));
}

async function loadConfiguration(name, editor, view) {
  try {
    const { payload, etag } = await api("GET", "/api/configuration/instances/" + segment(name), { headers: { Accept: "application/yaml" } });
    editor.textarea.value = payload;
    if (view) {
      view.etag = etag;
      view.dirty = false;
    }
    showProblems($("#config-problems"), editor, []);
    $("#config-note").textContent = "Generation " + (etag || "?").replace(/"/g, "");
  } catch (error) {
    if (error.status !== 401) $("#config-note").textContent = "cannot read the configuration: " + error.message;
  }
}

async function saveConfiguration(name, editor) {
  const view = currentView;
  const headers = view && view.etag ? { "If-Match": view.etag } : {};
  const button = $("#config-save");
  button.disabled = true;
  try {
    const { etag } = await api("PUT", "/api/configuration/instances/" + segment(name), { yaml: editor.textarea.value, headers });
    if (view) {
      view.etag = etag;
      view.dirty = false;
    }
    showProblems($("#config-problems"), editor, []);
    const note = $("#config-note");
    note.textContent = "Saved: generation " + (etag || "?").replace(/"/g, "") + ". A running server is restarted with it (update strategy: " + ((view && view.instance && view.instance.updateStrategy) || "restart") + ").";
    note.className = "note ok-note";
  } catch (error) {
    if (error.status === 401) return;
    showProblems($("#config-problems"), editor, problemsOf(error, 0));
    $("#config-note").className = "note";
    $("#config-note").textContent = error.problem.code === "STALE_GENERATION"
      ? "Someone changed it meanwhile: Reload, then edit again."
      : "Not saved.";
  } finally {
    button.disabled = false;
  }
}

// === start ===

function start() {
  $("#sign-out").addEventListener("click", signOut);
  $("#sign-out").hidden = !token();
  const match = location.pathname.match(/^\/instances\/([^/]+)$/);
  if (match) {
    const name = decodeURIComponent(match[1]);
    document.title = name + " · DRaaS";
    instancePage(name);
  } else {
    home();
  }
}

document.addEventListener("DOMContentLoaded", start);
