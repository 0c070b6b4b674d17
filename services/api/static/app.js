// The Orquesta dashboard. State is loaded once over REST, then kept current by the event feed
// (/ws/events): no polling. Events only change plain objects; the DOM is updated once per animation
// frame for what changed, and the table holds at most MAX_ROWS rows, so a busy tenant (1,000 executions a
// minute, ~100 events a second) costs a handful of cell updates per frame.
"use strict";

const MAX_ROWS = 200;
const MAX_KNOWN = 5000;
const WINDOW_MIN = 15;
const MINUTE = 60000;
const STATUSES = ["queued", "running", "retrying", "completed", "failed", "cancelled"];
const FINISHED = new Set(["completed", "failed", "cancelled"]);
const RETRYABLE = new Set(["failed", "cancelled"]);
const CANCELLABLE = new Set(["queued", "running", "retrying"]);
const KEY_STORE = "orq.key";
const STATS_REFRESH_MS = 5000;
const PROJECTION_LAG_MS = 1000;
const FRAME_MS = 250;
const QUEUES_REFRESH_MS = 2000;
const TRIGGERS_REFRESH_MS = 1000;
const LOWEST_PRIORITY = 10;
const PAGE = 100;
const ROBOTS_REFRESH_MS = 1000;
const ROBOTS_POLL_MS = 5000;
const DEPTH_LOG_MAX = 20000;
const HISTORY_PAGE = 500;
const HISTORY_PAGES = 10; // pages of events read at once for the History tab; "More" reads the next ten
// The events that change what GET /api/robots shows (DESIGN §10): the list is re-read on them, and every few
// seconds anyway (a robot that goes silent turns offline without an event).
const ROBOT_EVENTS = new Set(["step.offered", "step.claimed", "step.completed", "step.failed"]);
// A step's templates, as the engine reads them (shared/templates.py): "{{ params.invoice.number }}".
const PLACEHOLDER = /\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}/g;
// Destructive commands ask first (window.confirm); the question names what is lost.
const CONFIRM = {
  cancel: (id) => `Cancel execution ${short(id)}? Its running step is stopped.`,
  "dlq-purge": (id) => `Purge execution ${short(id)} from the dead-letter queue? It can no longer be retried.`,
  "trigger-delete": (id) => `Delete trigger ${short(id)}? It will not fire again.`,
};

const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "on") for (const [name, fn] of Object.entries(v)) node.addEventListener(name, fn);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

const ms = (iso) => (iso ? Date.parse(iso) : null);
const short = (id) => (id ? id.slice(0, 8) : "");

function fmtDuration(d) {
  if (d === null || d === undefined || Number.isNaN(d)) return "–";
  if (d < 1000) return `${Math.round(d)} ms`;
  if (d < 60000) return `${(d / 1000).toFixed(1)} s`;
  const m = Math.floor(d / 60000);
  return `${m}m ${String(Math.floor((d % 60000) / 1000)).padStart(2, "0")}s`;
}

function fmtTime(t) {
  return t ? new Date(t).toLocaleTimeString([], { hour12: false }) : "";
}

// --- state ---------------------------------------------------------------------------------------------------

const state = {
  key: null,
  tenant: null,
  execs: new Map(), // id -> row (plain object)
  counts: Object.fromEntries([...STATUSES, "dead_lettered"].map((s) => [s, 0])),
  buckets: new Map(), // minute index -> {completed, failed}
  figures: { avg: null, p95: null },
  depth: {},
  depthLog: [], // [{id, priority, n}] queued-by-priority changes made by events, for re-reads of /api/stats
  dlq: new Map(),
  filter: "", // status
  workflowFilter: "",
  triggerFilter: "",
  search: "",
  nextCursor: null,
  rowCap: MAX_ROWS, // grows with each "More" page
  triggers: [],
  triggersDeleted: new Set(), // deleted from this page; the projection may still list them for a moment
  queueSelected: null,
  itemStatus: "",
  runWorkflowId: null,
  tab: "overview", // of the detail pane: "overview" (steps and logs) or "history"
  selected: null,
  detail: null,
  feed: null,
  detailFeed: null,
  queues: null,
  workflows: [],
  workflowNames: new Map(),
  runRefs: null, // Promise of the params the workflow being run references
  item: null, // {queueId, id} of the work-queue item shown
  robots: null, // GET /api/robots items, or null when this server has no robots
  api: new Set(), // "GET /api/robots", … : the operations /openapi.json lists (views of newer endpoints ask first)
  generation: 0,
};
window.orq = state; // for the curious, in the browser console

// --- REST ----------------------------------------------------------------------------------------------------

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  if (r.status !== 204) {
    try { data = await r.json(); } catch { data = null; }
  }
  if (!r.ok) {
    const err = new Error((data && data.error && data.error.message) || `HTTP ${r.status}`);
    err.status = r.status;
    throw err;
  }
  return data;
}

// Calls ``fn`` at most once per ``waitMs``, and never sooner than ``minDelayMs`` after the first request.
function debounce(fn, waitMs, minDelayMs = 0) {
  let timer = null;
  let last = 0;
  return () => {
    if (timer) return;
    const wait = Math.max(minDelayMs, last + waitMs - Date.now());
    timer = setTimeout(() => { timer = null; last = Date.now(); fn(); }, wait);
  };
}

// --- rows ----------------------------------------------------------------------------------------------------

function rowFromRest(x) {
  return {
    id: x.id,
    workflow_id: x.workflow_id,
    status: x.status,
    priority: x.priority,
    trigger_type: x.trigger_type || null,
    steps_total: x.steps_total,
    done: x.steps_completed || 0, // completed steps only: a failed step is not done
    current: null,
    progress: x.progress || 0,
    queued_at: ms(x.queued_at),
    started_at: ms(x.started_at),
    completed_at: ms(x.completed_at),
    duration_ms: x.duration_ms,
    attempt: x.attempt || 1,
    error_message: x.error_message,
    dead_lettered: !!x.dead_lettered,
    parent_execution_id: x.parent_execution_id || null,
  };
}

function blankRow(id, ev) {
  return {
    id, workflow_id: "", status: "queued", priority: null, trigger_type: null, steps_total: 0, done: 0, current: null, progress: 0,
    queued_at: ev.ts, started_at: null, completed_at: null, duration_ms: null, attempt: 1, error_message: null,
    dead_lettered: false, partial: true, parent_execution_id: null,
  };
}

function remember(row) {
  state.execs.set(row.id, row);
  if (state.execs.size > MAX_KNOWN) evict();
}

function evict() {
  const visible = new Set(view.ids);
  const finished = [...state.execs.values()]
    .filter((r) => FINISHED.has(r.status) && !visible.has(r.id) && r.id !== state.selected)
    .sort((a, b) => a.queued_at - b.queued_at);
  for (const r of finished.slice(0, state.execs.size - MAX_KNOWN + 500)) state.execs.delete(r.id);
}

// The status an execution had before ``ev`` when the page never saw it (queued before the snapshot).
function inferPrevious(ev) {
  const d = ev.data || {};
  switch (ev.type) {
    case "execution.queued": return null;
    case "execution.started": return d.attempt > 1 ? "retrying" : "queued";
    case "execution.priority_changed": return "queued";
    case "execution.requeued": return d.reason === "dlq_retry" ? "failed" : "failed";
    case "execution.cancelled": return "queued";
    default: return "running";
  }
}

function move(from, to) {
  if (from === to) return;
  if (from && from in state.counts) state.counts[from] = Math.max(0, state.counts[from] - 1);
  if (to && to in state.counts) state.counts[to] += 1;
  view.countersDirty = true;
}

function bucket(ts) {
  const m = Math.floor(ts / MINUTE);
  let b = state.buckets.get(m);
  if (!b) state.buckets.set(m, (b = { completed: 0, failed: 0 }));
  view.chartsDirty = true;
  return b;
}

function setDeadLettered(row, value) {
  if (row.dead_lettered === value) return;
  row.dead_lettered = value;
  state.counts.dead_lettered = Math.max(0, state.counts.dead_lettered + (value ? 1 : -1));
  view.countersDirty = true;
}

function applyExecutionEvent(ev) {
  const d = ev.data || {};
  const id = ev.aggregate_id;
  let row = state.execs.get(id);
  const known = row !== undefined;
  if (!row) {
    row = blankRow(id, ev);
    remember(row);
    view.structureDirty = true;
    if (ev.type !== "execution.queued") fillLater(id);
  }
  const before = known ? row.status : inferPrevious(ev);
  const priorityBefore = row.priority;
  switch (ev.type) {
    case "execution.queued":
      Object.assign(row, {
        workflow_id: d.workflow_id, priority: d.priority, status: "queued", queued_at: ev.ts,
        trigger_type: d.trigger_type || "api",
        steps_total: (d.steps || []).length, partial: false,
        parent_execution_id: d.parent_execution_id || null,
      });
      break;
    case "execution.started":
      row.status = "running";
      row.started_at = row.started_at || ev.ts;
      row.attempt = d.attempt;
      row.current = d.from_step || 0;
      // An attempt resumes after the steps it keeps (all of them completed, but those let pass on error).
      passedSteps(row, (j) => j < (d.from_step || 0));
      row.done = (d.from_step || 0) - row.passed.size;
      row.report = null;
      break;
    case "execution.recovered":
      if (!known) row.status = "running";
      break;
    case "step.started":
      row.current = d.step_index;
      row.report = null;
      if (row.steps_total <= d.step_index) row.steps_total = d.step_index + 1;
      break;
    case "step.completed": {
      // Completed steps only: the steps before this one, less those that failed and were let pass.
      const before = [...passedSteps(row)].filter((j) => j < d.step_index).length;
      row.done = Math.max(row.done, d.step_index + 1 - before);
      row.report = null;
      break;
    }
    case "step.failed":
      if (d.continued) passedSteps(row).add(d.step_index);
      row.report = null;
      break;
    case "execution.progress":
      row.report = { step: d.step_index, percent: d.percent }; // the running step's own progress
      break;
    case "execution.retrying":
      row.status = "retrying";
      row.error_message = d.error;
      break;
    case "execution.completed": {
      // Running time of the last attempt series (the executor's figure counts from the first start ever).
      const series = row.started_at ? ev.ts - row.started_at : null;
      Object.assign(row, { status: "completed", completed_at: ev.ts, progress: 100, done: row.steps_total,
                           duration_ms: series === null ? d.duration_ms : Math.min(d.duration_ms || series, series),
                           error_message: null });
      bucket(ev.ts).completed += 1;
      break;
    }
    case "execution.failed":
      Object.assign(row, { status: "failed", completed_at: ev.ts, error_message: d.error });
      row.duration_ms = row.started_at ? ev.ts - row.started_at : null;
      bucket(ev.ts).failed += 1;
      break;
    case "execution.dead_lettered":
      if (!FINISHED.has(row.status)) Object.assign(row, { status: "failed", completed_at: ev.ts, error_message: d.error || row.error_message });
      setDeadLettered(row, true);
      state.dlq.set(id, { id, workflow_id: row.workflow_id, error_message: d.error || row.error_message, at: ev.ts });
      view.dlqDirty = true;
      break;
    case "execution.dlq_purged":
      if (state.dlq.delete(id)) view.dlqDirty = true;
      setDeadLettered(row, false);
      break;
    case "execution.cancelled":
      Object.assign(row, { status: "cancelled", completed_at: ev.ts, duration_ms: row.started_at ? ev.ts - row.started_at : null });
      break;
    case "execution.priority_changed":
      row.priority = d.priority;
      statsChanged();
      break;
    case "execution.requeued":
      // A new attempt series: its first start is the new started_at (time in the DLQ is not running time).
      Object.assign(row, { status: "queued", attempt: 1, priority: d.priority, started_at: null, completed_at: null,
                           duration_ms: null, progress: 0, error_message: null });
      if (d.reason === "dlq_retry" || row.dead_lettered) setDeadLettered(row, false);
      if (state.dlq.delete(id)) view.dlqDirty = true;
      break;
    default:
      break;
  }
  move(before, row.status);
  moveDepth(ev, before, priorityBefore, row);
  if (before !== row.status) {
    statsChanged();
    if (state.filter) view.structureDirty = true;
  }
  view.dirty.add(id);
  schedule();
}

// Queued by priority, kept by the events as the counters are: a run entering "queued" adds one at its priority,
// one leaving it (or changing priority while queued) takes one away. /api/stats gave the base; each change is
// also logged with its event id, so a later re-read of /api/stats keeps the changes its snapshot (as_of) lacks.
function moveDepth(ev, before, priorityBefore, row) {
  const changes = [];
  if (before === "queued" && priorityBefore !== null && priorityBefore !== undefined) changes.push([priorityBefore, -1]);
  if (row.status === "queued" && row.priority !== null && row.priority !== undefined) changes.push([row.priority, 1]);
  if (changes.length === 2 && changes[0][0] === changes[1][0]) return;
  for (const [priority, n] of changes) {
    addDepth(priority, n);
    state.depthLog.push({ id: ev.id, priority, n });
  }
  if (state.depthLog.length > DEPTH_LOG_MAX) state.depthLog.splice(0, state.depthLog.length - DEPTH_LOG_MAX);
  if (changes.length) { view.depthDirty = true; schedule(); }
}

function addDepth(priority, n) {
  const key = String(priority);
  state.depth[key] = Math.max(0, (state.depth[key] || 0) + n);
}

// Stream ids ("1795854599478-0") in log order: milliseconds, then sequence.
function idAfter(a, b) {
  const [am, as] = String(a).split("-").map(Number);
  const [bm, bs] = String(b).split("-").map(Number);
  return am > bm || (am === bm && (as || 0) > (bs || 0));
}

// Rows first seen through a later event lack their workflow and step count: fetch them, a few at a time.
const filling = new Set();
function fillLater(id) {
  if (filling.size >= 5 || filling.has(id)) return;
  filling.add(id);
  const generation = state.generation;
  api("GET", `/api/executions/${encodeURIComponent(id)}`)
    .then((x) => {
      const row = state.execs.get(id);
      if (!row || generation !== state.generation) return;
      Object.assign(row, { workflow_id: x.workflow_id, steps_total: x.steps_total, queued_at: ms(x.queued_at),
                           trigger_type: x.trigger_type || row.trigger_type,
                           priority: row.priority ?? x.priority, partial: false });
      view.dirty.add(id);
      view.structureDirty = true;
      schedule();
    })
    .catch(() => {})
    .finally(() => filling.delete(id));
}

function onEvent(ev) {
  const type = ev.type || "";
  if (type.startsWith("execution.") || type.startsWith("step.")) {
    applyExecutionEvent(ev);
    if (state.selected === ev.aggregate_id) view.detailDirty = true;
  } else if (type.startsWith("queue")) {
    reread(() => { refreshQueues(); if (state.queueSelected) refreshItems(); if (state.item) refreshItem(); });
  } else if (type.startsWith("trigger.")) {
    reread(refreshTriggers);
  } else if (type.startsWith("workflow.")) {
    refreshWorkflows();
  }
  if (ROBOT_EVENTS.has(type) || type.startsWith("robot.")) refreshRobots();
}

// Triggers and queues are read from the SQL projection, which applies an event a moment after the feed shows
// it: read soon after the event, and once more a few seconds later in case the projector was behind.
const LATE_REREAD_MS = 4000;
function reread(fn) {
  fn();
  setTimeout(fn, LATE_REREAD_MS);
}

// --- rendering -----------------------------------------------------------------------------------------------

const view = {
  ids: [],
  rows: new Map(), // id -> <tr>
  dirty: new Set(),
  structureDirty: true,
  countersDirty: true,
  chartsDirty: true,
  dlqDirty: true,
  detailDirty: true,
  depthDirty: true,
  frame: 0,
  lastRender: 0,
};

// One render per animation frame at most, and at most every FRAME_MS: under a busy feed, painting (not
// JavaScript) is what costs, so the page repaints a few times a second rather than sixty.
function schedule() {
  if (view.frame) return;
  const wait = view.lastRender + FRAME_MS - performance.now();
  view.frame = wait > 0 ? setTimeout(() => requestAnimationFrame(render), wait) : requestAnimationFrame(render);
}

function render() {
  view.frame = 0;
  view.lastRender = performance.now();
  if (view.structureDirty) renderStructure();
  for (const id of view.dirty) {
    const tr = view.rows.get(id);
    if (tr) renderRow(tr, state.execs.get(id));
  }
  view.dirty.clear();
  if (view.countersDirty) renderCounters();
  if (view.depthDirty) renderDepth();
  if (view.dlqDirty) renderDlq();
  if (view.detailDirty) renderDetail();
}

function sortKey(r) {
  return r.queued_at || 0;
}

function renderStructure() {
  view.structureDirty = false;
  const rows = [...state.execs.values()].filter(shown);
  rows.sort((a, b) => sortKey(b) - sortKey(a) || (a.id < b.id ? 1 : -1));
  const ids = rows.slice(0, state.rowCap).map((r) => r.id);
  const keep = new Set(ids);
  for (const [id, tr] of view.rows) {
    if (!keep.has(id)) { tr.remove(); view.rows.delete(id); }
  }
  const tbody = $("#executions tbody");
  let cursor = tbody.firstChild;
  for (const id of ids) {
    let tr = view.rows.get(id);
    if (!tr) {
      tr = newRow(id);
      view.rows.set(id, tr);
      renderRow(tr, state.execs.get(id));
    }
    if (tr !== cursor) tbody.insertBefore(tr, cursor);
    else cursor = cursor.nextSibling;
  }
  view.ids = ids;
  put($("#rows-note"), "textContent", rows.length > state.rowCap ? `newest ${state.rowCap} of ${rows.length} shown` : "");
}

// The table's filters: status, workflow and trigger (also asked of the API where it can filter), id prefix.
function shown(r) {
  if (state.filter && r.status !== state.filter) return false;
  if (state.workflowFilter && r.workflow_id !== state.workflowFilter) return false;
  if (state.triggerFilter && r.trigger_type !== state.triggerFilter) return false;
  if (state.search && !r.id.startsWith(state.search)) return false;
  return true;
}

function newRow(id) {
  const tr = el("tr", { dataset: { id }, on: { click: () => select(id) } });
  tr.append(
    el("td", { className: "id" }, el("code", { textContent: short(id), title: id })),
    el("td", { className: "workflow" }),
    el("td", {}, el("span", { className: "badge status" })),
    el("td", { className: "priority" }),
    el("td", {}, el("div", { className: "progress" }, el("i"))),
    el("td", { className: "steps" }),
    el("td", { className: "duration" }),
    el("td", { className: "queued" }),
    el("td", { className: "row-actions" }),
  );
  if (id === state.selected) tr.classList.add("selected");
  return tr;
}

// Steps of the current attempt that failed and were let pass (on_error: continue): not done, yet passed.
function passedSteps(row, keep) {
  if (!row.passed) row.passed = new Set();
  if (keep) for (const j of [...row.passed]) if (!keep(j)) row.passed.delete(j);
  return row.passed;
}

// Completed steps only (a failed step adds nothing), plus the running step's share of its own progress report.
function progressOf(r) {
  if (r.status === "completed") return 100;
  if (!r.steps_total) return r.progress || 0;
  const report = r.report && r.status === "running" && r.report.step === r.current ? r.report.percent || 0 : 0;
  return Math.min(100, (100 * Math.min(r.done, r.steps_total) + Math.min(100, report)) / r.steps_total);
}

function durationOf(r) {
  if (r.duration_ms !== null && r.duration_ms !== undefined) return r.duration_ms;
  if (r.status === "running" && r.started_at) return Date.now() - r.started_at;
  return null;
}

// Writes a cell only when its text changes: untouched cells cost no style or layout work.
function put(node, key, value) {
  if (node[key] !== value) node[key] = value;
}

function renderRow(tr, r) {
  if (!r) return;
  const cells = tr.children;
  put(cells[1], "textContent", state.workflowNames.get(r.workflow_id) || short(r.workflow_id));
  put(cells[1], "title", r.workflow_id || "");
  const badge = cells[2].firstChild;
  put(badge, "textContent", r.status);
  put(badge, "className", `badge status ${r.status}`);
  put(cells[3], "textContent", String(r.priority ?? ""));
  const bar = cells[4].firstChild;
  put(bar, "className", `progress ${r.status === "completed" ? "done" : r.status === "failed" ? "bad" : ""}`);
  const width = `${Math.round(progressOf(r))}%`;
  if (bar.firstChild.style.width !== width) bar.firstChild.style.width = width;
  put(cells[5], "textContent", r.steps_total ? `${Math.min(r.done, r.steps_total)}/${r.steps_total}` : "");
  put(cells[6], "textContent", fmtDuration(durationOf(r)));
  if (tr.dataset.queued !== String(r.queued_at)) {
    tr.dataset.queued = String(r.queued_at);
    cells[7].textContent = fmtTime(r.queued_at);
  }
  const actions = cells[8];
  const want = RETRYABLE.has(r.status) ? "retry" : CANCELLABLE.has(r.status) ? "cancel" : "";
  if (actions.dataset.kind !== want) {
    actions.dataset.kind = want;
    actions.replaceChildren();
    if (want) {
      actions.append(el("button", {
        type: "button", className: `row-btn ${want}`, textContent: want === "retry" ? "Retry" : "Cancel",
        on: { click: (e) => { e.stopPropagation(); command(r.id, want); } },
      }));
    }
  }
}

function renderCounters() {
  view.countersDirty = false;
  for (const [status, n] of Object.entries(state.counts)) {
    const node = $(`[data-counter="${status}"] b`);
    if (node) put(node, "textContent", n.toLocaleString("en-US"));
  }
}

function windowBuckets() {
  const now = Math.floor(Date.now() / MINUTE);
  const out = [];
  for (let m = now - WINDOW_MIN + 1; m <= now; m++) {
    const b = state.buckets.get(m) || { completed: 0, failed: 0 };
    out.push({ start: m * MINUTE, completed: b.completed, failed: b.failed });
  }
  return out;
}

function renderCharts() {
  const buckets = windowBuckets();
  Charts.throughput($("#chart-throughput"), buckets);
  Charts.errorRate($("#chart-errors"), buckets);
  const finished = buckets.reduce((n, b) => n + b.completed + b.failed, 0);
  const failed = buckets.reduce((n, b) => n + b.failed, 0);
  $('[data-figure="throughput"] b').textContent = (finished / WINDOW_MIN).toFixed(1);
  $('[data-figure="error_rate"] b').textContent = finished ? `${((100 * failed) / finished).toFixed(1)}%` : "–";
  $('[data-figure="avg"] b').textContent = fmtDuration(state.figures.avg);
  $('[data-figure="p95"] b').textContent = fmtDuration(state.figures.p95);
}

function renderDepth() {
  view.depthDirty = false;
  const max = Math.max(1, ...Object.values(state.depth));
  const levels = Object.entries(state.depth).sort((a, b) => Number(a[0]) - Number(b[0]));
  $("#depth").replaceChildren(...levels.map(([p, n]) => el("div", { className: "bar-row", dataset: { priority: p } },
    el("span", { textContent: p }), el("i", { style: `width:${(150 * n) / max}px` }), el("span", { className: "n", textContent: n }))));
}

function renderDlq() {
  view.dlqDirty = false;
  const tbody = $("#dlq tbody");
  const entries = [...state.dlq.values()].sort((a, b) => (b.at || 0) - (a.at || 0)).slice(0, MAX_ROWS);
  tbody.replaceChildren(...entries.map((x) => el("tr", { dataset: { id: x.id }, on: { click: () => select(x.id) } },
    el("td", {}, el("code", { textContent: short(x.id), title: x.id })),
    el("td", { textContent: state.workflowNames.get(x.workflow_id) || short(x.workflow_id), title: x.workflow_id || "" }),
    el("td", { className: "err", textContent: x.error_message || "", title: x.error_message || "" }),
    el("td", { textContent: fmtTime(x.at) }),
    el("td", {},
      el("button", { type: "button", className: "row-btn dlq-retry", textContent: "Retry",
                     on: { click: (e) => { e.stopPropagation(); command(x.id, "dlq-retry"); } } }),
      " ",
      el("button", { type: "button", className: "row-btn dlq-purge", textContent: "Purge",
                     on: { click: (e) => { e.stopPropagation(); command(x.id, "dlq-purge"); } } })),
  )));
  $("#dlq-note").textContent = state.dlq.size ? `${state.dlq.size} execution(s)` : "empty";
}

// --- detail pane ---------------------------------------------------------------------------------------------

async function select(id) {
  if (state.detailFeed) state.detailFeed.stop();
  state.detailFeed = null;
  for (const tr of document.querySelectorAll("#executions tr.selected")) tr.classList.remove("selected");
  const tr = view.rows.get(id);
  if (tr) tr.classList.add("selected");
  state.selected = id;
  const detail = { id, steps: new Map(), logIds: new Set(), logs: [], parent: null, children: [], history: newHistory() };
  state.detail = detail;
  $("#detail").hidden = false;
  $("#detail-message").textContent = "";
  resetHistoryView();
  if (state.tab === "history") loadHistory(detail);
  view.detailDirty = true;
  schedule();
  let since = null;
  try {
    const x = await api("GET", `/api/executions/${encodeURIComponent(id)}`);
    if (state.detail !== detail) return;
    if (!state.execs.has(id)) { remember(rowFromRest(x)); view.structureDirty = true; }
    detail.parent = x.parent_execution_id || null;
    // Sub-workflows started by this run, where the API lists them (ids or {id, …}); the feed adds the rest.
    detail.children = [...(x.children || []), ...(x.child_execution_ids || [])].map((c) => (typeof c === "string" ? c : c.id));
    for (const s of x.steps) {
      detail.steps.set(s.step_index, { action: s.action, label: s.label, status: s.status, duration_ms: s.duration_ms,
                                       output: s.output_data, error: s.error_message });
    }
    since = ms(x.queued_at);
  } catch (e) {
    if (e.status !== 404) $("#detail-message").textContent = e.message;
  }
  if (state.detail !== detail) return;
  const row = state.execs.get(id);
  since = since || (row && row.queued_at) || Date.now() - MINUTE;
  // Replays this execution's own events (steps and logs) from just before it was queued, then goes live.
  state.detailFeed = new Feed({
    token: state.key, since: String(Math.max(0, since - 1000)), params: { execution_id: id },
    onEvent: (ev) => detailEvent(detail, ev),
  }).start();
  view.detailDirty = true;
  schedule();
}

function detailEvent(detail, ev) {
  if (state.detail !== detail) return;
  historyEvent(detail, ev);
  const d = ev.data || {};
  const step = (i) => {
    if (!detail.steps.has(i)) detail.steps.set(i, { action: d.action || "", label: d.label || null, status: "pending" });
    return detail.steps.get(i);
  };
  switch (ev.type) {
    case "execution.queued":
      (d.steps || []).forEach((s, i) => {
        if (!detail.steps.has(i)) detail.steps.set(i, { action: s.action, label: s.label || null, status: "pending" });
      });
      break;
    case "execution.started":
      log(detail, ev, `attempt ${d.attempt} started on ${d.executor}` + (d.from_step ? ` from step ${d.from_step}` : ""));
      break;
    case "step.started":
      Object.assign(step(d.step_index), { status: "running", duration_ms: null, output: null, error: null });
      detail.current = d.step_index;
      break;
    case "step.completed":
      Object.assign(step(d.step_index), { status: "completed", duration_ms: d.duration_ms, output: d.output });
      break;
    case "step.failed":
      Object.assign(step(d.step_index), { status: "failed", duration_ms: d.duration_ms, error: d.error });
      log(detail, ev, `step ${d.step_index} failed: ${d.error}`, "error");
      break;
    case "execution.log":
      log(detail, ev, `[step ${d.step_index}] ${d.message}`, d.level);
      break;
    case "execution.progress":
      log(detail, ev, `progress ${Math.round(d.percent)}%` + (d.message ? ` ${d.message}` : ""));
      break;
    case "execution.retrying":
      log(detail, ev, `attempt ${d.failed_attempt} failed; retry in ${fmtDuration(d.delay_ms)}: ${d.error}`, "warning");
      break;
    case "execution.requeued":
      for (const s of detail.steps.values()) if (s.status !== "completed") s.status = "pending";
      log(detail, ev, `queued again (${d.reason})`);
      break;
    case "execution.completed":
      detail.current = null;
      log(detail, ev, "completed");
      break;
    case "execution.failed":
      detail.current = null;
      log(detail, ev, `failed: ${d.error}`, "error");
      break;
    case "execution.cancelled":
      // The step that was running never finishes: closed as cancelled, as the projection closes it.
      for (const s of detail.steps.values()) if (s.status === "running") s.status = "cancelled";
      detail.current = null;
      log(detail, ev, "cancelled");
      break;
    default:
      break;
  }
  view.detailDirty = true;
  schedule();
}

function log(detail, ev, text, level = "info") {
  if (detail.logIds.has(ev.id)) return;
  detail.logIds.add(ev.id);
  detail.logs.push(`${fmtTime(ev.ts)} ${level === "info" ? "" : level.toUpperCase() + " "}${text}`);
  if (detail.logs.length > 500) detail.logs.splice(0, detail.logs.length - 500);
}

function renderDetail() {
  view.detailDirty = false;
  const detail = state.detail;
  if (!detail) { $("#detail").hidden = true; return; }
  const r = state.execs.get(detail.id) || blankRow(detail.id, { ts: null });
  $("#detail-id").textContent = short(detail.id);
  $("#detail-id").title = detail.id;
  const badge = $("#detail-status");
  badge.textContent = r.status;
  badge.className = `badge ${r.status}`;
  $("#detail-workflow").textContent = state.workflowNames.get(r.workflow_id) || r.workflow_id || "";
  $("#detail-workflow").title = r.workflow_id || "";
  $("#detail-priority").textContent = r.priority ?? "";
  $("#detail-attempt").textContent = r.attempt ?? "";
  $("#detail-duration").textContent = fmtDuration(durationOf(r));
  $("#detail-error").textContent = r.error_message || "";
  renderFamily(detail, r);
  $("#btn-retry").disabled = !RETRYABLE.has(r.status);
  $("#btn-cancel").disabled = !CANCELLABLE.has(r.status);
  const queued = r.status === "queued";
  $("#btn-priority").disabled = !queued;
  $("#priority-select").disabled = !queued;
  if (document.activeElement !== $("#priority-select") && r.priority) $("#priority-select").value = String(r.priority);
  const current = r.status === "running" ? detail.current ?? r.current : null;
  const items = [...detail.steps.entries()].sort((a, b) => a[0] - b[0]).map(([i, s]) => {
    const li = el("li", { dataset: { step: String(i) }, className: i === current ? "current" : "" },
      el("span", { className: `badge step-status ${s.status}`, textContent: s.status }), " ",
      el("span", { className: "step-name", textContent: s.label || s.action }),
      el("span", { className: "step-out", textContent: s.duration_ms !== null && s.duration_ms !== undefined ? fmtDuration(s.duration_ms) : "" }));
    if (s.error) li.append(el("div", { className: "error", textContent: s.error }));
    return li;
  });
  $("#detail-steps").replaceChildren(...items);
  const logs = $("#detail-logs");
  const text = detail.logs.join("\n");
  if (logs.textContent !== text) {
    const atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
    logs.textContent = text;
    if (atEnd) logs.scrollTop = logs.scrollHeight;
  }
}

function closeDetail() {
  if (state.detailFeed) state.detailFeed.stop();
  state.detailFeed = null;
  state.detail = null;
  state.selected = null;
  resetHistoryView();
  for (const tr of document.querySelectorAll("#executions tr.selected")) tr.classList.remove("selected");
  view.detailDirty = true;
  schedule();
}

// Parent and child executions (sub-workflows, chained runs): links both ways. The parent comes from the run
// itself; the children from the API where it lists them, and from the feed (execution.queued names its parent).
function renderFamily(detail, r) {
  const parent = detail.parent || r.parent_execution_id;
  const children = new Set(detail.children);
  for (const x of state.execs.values()) if (x.parent_execution_id === detail.id) children.add(x.id);
  const link = (id) => el("a", { href: "#", className: "exec-link", textContent: short(id), title: id, dataset: { id },
                                 on: { click: (e) => { e.preventDefault(); select(id); } } });
  const key = `${parent}|${[...children].join(",")}`;
  const parentNode = $("#detail-parent");
  if (parentNode.dataset.key === key) return;
  parentNode.dataset.key = key;
  parentNode.replaceChildren(...(parent ? [link(parent)] : []));
  const list = [...children].sort();
  $("#detail-children").replaceChildren(...list.flatMap((id, i) => (i ? [" ", link(id)] : [link(id)])));
  const [parentDt, childrenDt] = document.querySelectorAll("#detail .facts dt.family");
  parentDt.hidden = parentNode.hidden = !parent;
  childrenDt.hidden = $("#detail-children").hidden = !list.length;
}

// --- execution history (DESIGN §11): the events as a timeline, and the execution as of any of them ---------

function newHistory() {
  return { events: [], ids: new Set(), cursor: null, loaded: false, loading: false, pending: [], picked: null, request: 0 };
}

function showTab(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll("#detail .tab")) b.classList.toggle("active", b.dataset.tab === tab);
  $("#pane-overview").hidden = tab !== "overview";
  $("#pane-history").hidden = tab !== "history";
  if (tab === "history" && state.detail) loadHistory(state.detail);
}

function resetHistoryView() {
  $("#history-list").replaceChildren();
  $("#history-note").textContent = "";
  $("#history-more").hidden = true;
  $("#as-of").hidden = true;
  const slider = $("#history-slider");
  slider.max = "0";
  slider.value = "0";
  slider.disabled = true;
}

// GET /api/executions/{id}/events, page after page (up to HISTORY_PAGES at once; "More" reads on).
async function loadHistory(detail, more = false) {
  const h = detail.history;
  if (h.loading || (h.loaded && !more)) return;
  h.loading = true;
  $("#history-note").textContent = "loading…";
  try {
    for (let page = 0; page < HISTORY_PAGES; page++) {
      const q = `?limit=${HISTORY_PAGE}` + (h.cursor ? `&cursor=${encodeURIComponent(h.cursor)}` : "");
      const body = await api("GET", `/api/executions/${encodeURIComponent(detail.id)}/events${q}`);
      if (state.detail !== detail) return;
      for (const ev of body.items) addHistory(h, ev);
      h.cursor = body.next_cursor || null;
      if (!h.cursor) break;
    }
    h.loaded = true;
    // What the feed delivered while the pages were read, and they lacked.
    if (!h.cursor) for (const ev of h.pending) appendLive(h, ev);
    h.pending = [];
  } catch (e) {
    if (state.detail === detail) $("#history-note").textContent = `events: ${e.status ? `${e.status}: ` : ""}${e.message}`;
    return;
  } finally {
    h.loading = false;
  }
  renderHistory(detail);
}

function addHistory(h, ev) {
  if (h.ids.has(ev.id)) return false;
  h.ids.add(ev.id);
  h.events.push(ev);
  return true;
}

// Live events of the execution shown join its timeline once the history has been read to its end.
function historyEvent(detail, ev) {
  const h = detail.history;
  if (h.loading) { h.pending.push(ev); return; }
  if (!h.loaded || h.cursor) return;
  if (appendLive(h, ev)) renderHistory(detail);
}

function appendLive(h, ev) {
  const last = h.events[h.events.length - 1];
  if (last && !idAfter(ev.id, last.id)) return false;
  return addHistory(h, ev);
}

function describe(ev) {
  const d = ev.data || {};
  switch (ev.type) {
    case "execution.queued": return `priority ${d.priority}, ${(d.steps || []).length} step(s), by ${d.trigger_type || "api"}`;
    case "execution.started": return `attempt ${d.attempt}` + (d.from_step ? ` from step ${d.from_step}` : "") + (d.executor ? ` on ${d.executor}` : "");
    case "step.started": return `step ${d.step_index} ${d.label || d.action || ""}`;
    case "step.completed": return `step ${d.step_index} in ${fmtDuration(d.duration_ms)}`;
    case "step.failed": return `step ${d.step_index}: ${d.error}`;
    case "execution.log": return `[step ${d.step_index}] ${d.message}`;
    case "execution.progress": return `step ${d.step_index} ${Math.round(d.percent)}%` + (d.message ? ` ${d.message}` : "");
    case "execution.retrying": return `attempt ${d.failed_attempt} failed; retry in ${fmtDuration(d.delay_ms)}`;
    case "execution.completed": return `in ${fmtDuration(d.duration_ms)}`;
    case "execution.failed": case "execution.dead_lettered": return d.error || "";
    case "execution.priority_changed": return `priority ${d.priority}`;
    case "execution.requeued": return d.reason || "";
    default: {
      const text = JSON.stringify(d);
      return text === "{}" ? "" : text.slice(0, 120);
    }
  }
}

function fmtClock(t) {
  if (!t) return "";
  return `${fmtTime(t)}.${String(new Date(t).getMilliseconds()).padStart(3, "0")}`;
}

function renderHistory(detail) {
  if (state.detail !== detail) return;
  const h = detail.history;
  const list = $("#history-list");
  const have = list.children.length;
  // Events only ever append: write the new ones.
  list.append(...h.events.slice(have).map((ev, k) => el("li", {
    dataset: { id: ev.id, index: String(have + k), type: ev.type }, title: ev.id,
    on: { click: () => pickHistory(detail, have + k) },
  }, el("time", { textContent: fmtClock(ev.ts) }), " ",
     el("span", { className: `ev-type ${ev.type.split(".")[0]}`, textContent: ev.type }), " ",
     el("span", { className: "ev-text", textContent: describe(ev) }))));
  const slider = $("#history-slider");
  slider.max = String(Math.max(0, h.events.length - 1));
  slider.disabled = h.events.length === 0;
  if (h.picked === null) slider.value = slider.max;
  $("#history-note").textContent = h.events.length
    ? `${h.events.length}${h.cursor ? "+" : ""} event(s): pick one (or move the slider) to see the execution as it stood then`
    : "no events";
  $("#history-more").hidden = !h.cursor;
}

// The execution as of event ``index``: GET /api/executions/{id}?as_of=<its stream id>, folded by the server.
let pickTimer = null;
function pickHistory(detail, index, { wait = 0 } = {}) {
  const h = detail.history;
  const ev = h.events[index];
  if (!ev) return;
  h.picked = index;
  $("#history-slider").value = String(index);
  for (const li of document.querySelectorAll("#history-list li.picked")) li.classList.remove("picked");
  const li = $(`#history-list li[data-index="${index}"]`);
  if (li) { li.classList.add("picked"); li.scrollIntoView({ block: "nearest" }); }
  clearTimeout(pickTimer);
  pickTimer = setTimeout(() => showAsOf(detail, index), wait);
}

async function showAsOf(detail, index) {
  const h = detail.history;
  const ev = h.events[index];
  const request = ++h.request;
  $("#as-of").hidden = false;
  $("#as-of-title").textContent = `event ${index + 1} of ${h.events.length}: ${ev.type}, ${fmtClock(ev.ts)}`;
  $("#as-of-message").textContent = "";
  let x;
  try {
    x = await api("GET", `/api/executions/${encodeURIComponent(detail.id)}?as_of=${encodeURIComponent(ev.id)}`);
  } catch (e) {
    if (state.detail === detail && request === h.request) {
      $("#as-of-message").textContent = e.status === 404 ? "the execution did not exist yet" : `${e.status || ""} ${e.message}`;
    }
    return;
  }
  if (state.detail !== detail || request !== h.request) return;
  const badge = $("#as-of-status");
  badge.textContent = x.status;
  badge.className = `badge ${x.status}`;
  $("#as-of-attempt").textContent = x.attempt ?? x.retry_count ?? "";
  $("#as-of-progress").textContent = `${x.steps_completed ?? 0} of ${x.steps_total ?? 0} completed` +
    (x.steps_failed ? `, ${x.steps_failed} failed` : "");
  $("#as-of-error").textContent = x.error_message || "";
  $("#as-of-error").hidden = $("#as-of-error").previousElementSibling.hidden = !x.error_message;
  $("#as-of-steps").replaceChildren(...(x.steps || []).map((step) => {
    const item = el("li", { dataset: { step: String(step.step_index) } },
      el("span", { className: `badge step-status ${step.status}`, textContent: step.status }), " ",
      el("span", { className: "step-name", textContent: step.label || step.action }));
    if (step.error_message) item.append(el("div", { className: "error", textContent: step.error_message }));
    return item;
  }));
}

// --- commands ------------------------------------------------------------------------------------------------

async function command(id, kind, arg) {
  if (CONFIRM[kind] && !window.confirm(CONFIRM[kind](id))) return;
  const enc = encodeURIComponent(id);
  const calls = {
    retry: () => api("POST", `/api/executions/${enc}/retry`),
    cancel: () => api("POST", `/api/executions/${enc}/cancel`),
    priority: () => api("PATCH", `/api/executions/${enc}`, { priority: arg }),
    "dlq-retry": () => api("POST", `/api/dlq/${enc}/retry`),
    "dlq-purge": () => api("DELETE", `/api/dlq/${enc}`),
  };
  $("#detail-message").textContent = "";
  try {
    await calls[kind]();
  } catch (e) {
    // The outcome arrives as events; only a refusal needs showing.
    const where = state.selected === id ? $("#detail-message") : null;
    if (where) where.textContent = `${kind}: ${e.message}`;
    else alert(`${kind} ${short(id)}: ${e.message}`);
  }
}

// --- loading ---------------------------------------------------------------------------------------------------

function applyStats(stats, { counts }) {
  if (counts) {
    for (const k of Object.keys(state.counts)) state.counts[k] = stats.counts[k] || 0;
    state.buckets.clear();
    for (const b of stats.throughput) {
      state.buckets.set(Math.floor(ms(b.minute) / MINUTE), { completed: b.completed, failed: b.failed });
    }
  }
  state.figures = { avg: stats.avg_duration_ms, p95: stats.p95_duration_ms };
  // The snapshot, plus what the feed changed after it (the events after as_of it does not include yet).
  state.depth = { ...stats.depth_by_priority };
  if (counts || !stats.as_of) state.depthLog = [];
  else state.depthLog = state.depthLog.filter((c) => idAfter(c.id, stats.as_of));
  for (const c of state.depthLog) addDepth(c.priority, c.n);
  view.depthDirty = true;
  view.countersDirty = true;
  view.chartsDirty = true;
  schedule();
}

// Durations and depth by priority come from the projection: re-read when runs change status (at most every
// few seconds, and a moment after the change so the projector has applied it). Counts stay with the feed.
const statsChanged = debounce(async () => {
  try { applyStats(await api("GET", "/api/stats"), { counts: false }); } catch { /* next change retries */ }
}, STATS_REFRESH_MS, PROJECTION_LAG_MS);

function listUrl(cursor) {
  const q = new URLSearchParams({ limit: String(PAGE) });
  if (state.filter) q.set("status", state.filter);
  if (state.workflowFilter) q.set("workflow_id", state.workflowFilter);
  if (cursor) q.set("cursor", cursor);
  return `/api/executions?${q}`;
}

// The newest page for the current filters, or (``more``) the page after the last one loaded (keyset cursor).
// The API filters by status and workflow; the trigger filter and the id search apply to the rows loaded.
async function loadRows(more = false) {
  const generation = state.generation;
  const page = await api("GET", listUrl(more ? state.nextCursor : null));
  if (generation !== state.generation) return;
  if (more) state.rowCap += page.items.length;
  for (const x of page.items) {
    if (!state.execs.has(x.id)) remember(rowFromRest(x));
  }
  state.nextCursor = page.next_cursor || null;
  $("#more").hidden = !state.nextCursor;
  view.structureDirty = true;
  schedule();
}

function filtersChanged() {
  state.nextCursor = null;
  view.structureDirty = true;
  schedule();
  loadRows().catch((e) => { $("#search-message").textContent = e.message; });
}

// A full or partial id: rows loaded are filtered by prefix; a full id not loaded is fetched and opened.
async function searchId(value) {
  state.search = value.trim();
  $("#search-message").textContent = "";
  view.structureDirty = true;
  schedule();
  if (state.search.length < 16 || state.execs.has(state.search)) {
    if (state.execs.has(state.search)) select(state.search);
    return;
  }
  try {
    const x = await api("GET", `/api/executions/${encodeURIComponent(state.search)}`);
    if (!state.execs.has(x.id)) remember(rowFromRest(x));
    view.structureDirty = true;
    schedule();
    select(x.id);
  } catch (e) {
    $("#search-message").textContent = e.status === 404 ? `no execution ${state.search}` : e.message;
  }
}

const refreshQueues = debounce(async () => {
  let page;
  try {
    page = await api("GET", "/api/queues?limit=100");
  } catch {
    $("#queues").hidden = true; // not available on this server (or not for this key)
    state.queues = null;
    return;
  }
  const items = (page && page.items) || [];
  const stats = await Promise.all(items.map((q) => api("GET", `/api/queues/${encodeURIComponent(q.id)}/stats`).catch(() => null)));
  state.queues = items.map((q, i) => ({ ...q, stats: stats[i] }));
  const tbody = $("#queues tbody");
  tbody.replaceChildren(...state.queues.map((q) => {
    const s = q.stats || {};
    const cell = (v) => el("td", { textContent: v === undefined || v === null ? "–" : String(v) });
    return el("tr", { dataset: { id: q.id }, className: q.id === state.queueSelected ? "selected" : "",
                      on: { click: () => selectQueue(q.id) } },
      el("td", { className: "name", textContent: q.name || short(q.id) }), cell(s.new),
      cell(s.in_progress), cell(s.completed), cell(s.failed), cell(s.abandoned), cell(s.retried),
      el("td", { textContent: fmtDuration(s.avg_processing_ms) }), cell(s.sla_breaches));
  }));
  $("#queues").hidden = false;
  if (state.queueSelected && !state.queues.some((q) => q.id === state.queueSelected)) selectQueue(null);
}, QUEUES_REFRESH_MS, PROJECTION_LAG_MS);

// --- work-queue items ----------------------------------------------------------------------------------------

function selectQueue(id) {
  state.queueSelected = id;
  for (const tr of document.querySelectorAll("#queues > .table-wrap tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.id === id);
  }
  $("#queue-items").hidden = !id;
  if (state.item && state.item.queueId !== id) closeItem();
  if (!id) return;
  const q = (state.queues || []).find((x) => x.id === id);
  $("#queue-items-name").textContent = q ? q.name : short(id);
  $("#queue-items tbody").replaceChildren();
  loadItems();
}

async function loadItems() {
  const id = state.queueSelected;
  if (!id) return;
  const q = new URLSearchParams({ limit: String(PAGE) });
  if (state.itemStatus) q.set("status", state.itemStatus);
  let page;
  try {
    page = await api("GET", `/api/queues/${encodeURIComponent(id)}/items?${q}`);
  } catch (e) {
    $("#queue-items-note").textContent = e.message;
    return;
  }
  if (id !== state.queueSelected) return;
  const cell = (v, className = "") => el("td", { className, textContent: v === undefined || v === null ? "" : String(v) });
  $("#queue-items tbody").replaceChildren(...page.items.map((it) => {
    const exec = it.execution_id
      ? el("td", {}, el("a", { href: "#", textContent: short(it.execution_id), title: it.execution_id,
                               on: { click: (e) => { e.preventDefault(); e.stopPropagation(); select(it.execution_id); } } }))
      : cell("");
    const err = it.error ? `${it.error.kind}: ${it.error.message}` : "";
    const picked = state.item && state.item.id === it.id ? "selected" : "";
    return el("tr", { dataset: { id: it.id }, className: picked, on: { click: () => openItem(id, it.id) } },
      el("td", {}, el("code", { textContent: short(it.id), title: it.id })),
      cell(it.reference), el("td", {}, el("span", { className: `badge item-status ${it.status}`, textContent: it.status })),
      cell(it.priority), cell(it.retry_count), exec, cell(fmtTime(ms(it.created_at))),
      cell(it.processing_ms === null ? "" : fmtDuration(it.processing_ms)),
      el("td", { className: "err error", textContent: err, title: err }));
  }));
  $("#queue-items-note").textContent = `${page.items.length}${page.next_cursor ? "+" : ""} item(s)`;
}

const refreshItems = debounce(loadItems, QUEUES_REFRESH_MS, PROJECTION_LAG_MS);

// --- work-queue item detail: its facts, the executions that processed it, its history ------------------------

function openItem(queueId, itemId) {
  state.item = { queueId, id: itemId };
  for (const tr of document.querySelectorAll("#queue-items tbody tr")) tr.classList.toggle("selected", tr.dataset.id === itemId);
  $("#item-detail").hidden = false;
  $("#item-detail-id").textContent = short(itemId);
  $("#item-detail-id").title = itemId;
  $("#item-detail-message").textContent = "";
  loadItem();
}

function closeItem() {
  state.item = null;
  $("#item-detail").hidden = true;
  for (const tr of document.querySelectorAll("#queue-items tbody tr.selected")) tr.classList.remove("selected");
}

// "execution <id>" in a history entry's detail (queue_item.started says which run took the item).
const EXECUTION_IN_DETAIL = /\bexecution ([0-9A-Za-z_-]{8,})/;
const executionOf = (change) => change.execution_id || ((EXECUTION_IN_DETAIL.exec(change.detail || "") || [])[1]) || null;

// The executions that processed an item: the list the API gives (execution_ids, or executions as ids or
// {id, …}), those its history names, and the item's own execution_id, oldest first.
function itemExecutions(it) {
  const ids = [];
  const add = (x) => {
    const id = typeof x === "string" ? x : x && (x.id || x.execution_id);
    if (id && !ids.includes(id)) ids.push(id);
  };
  for (const x of it.execution_ids || []) add(x);
  for (const x of it.executions || []) add(x);
  for (const change of it.history || []) add(executionOf(change));
  add(it.execution_id);
  return ids;
}

function execLink(id) {
  return el("a", { href: "#", className: "exec-link", textContent: short(id), title: id, dataset: { id },
                   on: { click: (e) => { e.preventDefault(); e.stopPropagation(); select(id); $("#detail").scrollIntoView({ block: "nearest" }); } } });
}

function itemLink(queueId, id) {
  return el("a", { href: "#", className: "item-link", textContent: short(id), title: id, dataset: { id },
                   on: { click: (e) => { e.preventDefault(); openItem(queueId, id); } } });
}

async function loadItem() {
  const picked = state.item;
  if (!picked) return;
  let it;
  try {
    it = await api("GET", `/api/queues/${encodeURIComponent(picked.queueId)}/items/${encodeURIComponent(picked.id)}`);
  } catch (e) {
    if (state.item === picked) $("#item-detail-message").textContent = `${e.status ? `${e.status}: ` : ""}${e.message}`;
    return;
  }
  if (state.item !== picked) return;
  const badge = $("#item-detail-status");
  badge.textContent = it.status;
  badge.className = `badge item-status ${it.status}`;
  const json = (v) => el("pre", { className: "json", textContent: JSON.stringify(v, null, 2) });
  const facts = [
    ["reference", it.reference], ["priority", it.priority], ["retries", it.retry_count],
    ["retry of", it.retry_of && itemLink(picked.queueId, it.retry_of)],
    ["retried as", it.retry_id && itemLink(picked.queueId, it.retry_id)],
    ["processed by", it.processed_by], ["progress", it.progress],
    ["created", it.created_at && new Date(ms(it.created_at)).toLocaleString([], { hour12: false })],
    ["deadline", it.deadline && new Date(ms(it.deadline)).toLocaleString([], { hour12: false })],
    ["defer until", it.defer_until && new Date(ms(it.defer_until)).toLocaleString([], { hour12: false })],
    ["processing", it.processing_ms !== null && it.processing_ms !== undefined ? fmtDuration(it.processing_ms) : null],
    ["error", it.error && `${it.error.kind}: ${it.error.message}`],
    ["data", json(it.data)],
    ["result", it.result !== null && it.result !== undefined ? json(it.result) : null],
  ].filter(([, v]) => v !== null && v !== undefined && v !== "");
  $("#item-facts").replaceChildren(...facts.flatMap(([k, v]) => [
    el("dt", { textContent: k }), el("dd", { className: k === "error" ? "error" : "", dataset: { fact: k } }, v instanceof Node ? v : String(v))]));
  const runs = itemExecutions(it);
  $("#item-executions").replaceChildren(...(runs.length ? runs.map((id) => {
    const row = state.execs.get(id);
    return el("li", { dataset: { id } }, execLink(id), ...(row ? [" ", el("span", { className: `badge ${row.status}`, textContent: row.status })] : []));
  }) : [el("li", { className: "muted", textContent: "none yet" })]));
  $("#item-history").replaceChildren(...(it.history || []).map((c) => el("li", { dataset: { event: c.event } },
    el("time", { textContent: c.at ? new Date(ms(c.at)).toLocaleString([], { hour12: false }) : "" }), " ",
    el("span", { className: "ev-type", textContent: c.event }), " ",
    el("span", { className: `badge item-status ${c.status}`, textContent: c.status }),
    c.processed_by ? ` by ${c.processed_by}` : "",
    ...changeDetail(c))));
}

// A change's detail, its execution id (if it names one) as a link; or the link alone when only a field has it.
function changeDetail(c) {
  const run = executionOf(c);
  const text = c.detail || "";
  const at = run ? text.indexOf(run) : -1;
  if (at >= 0) {
    return [el("span", { className: "muted", textContent: ` ${text.slice(0, at)}` }), execLink(run),
            el("span", { className: "muted", textContent: text.slice(at + run.length) })];
  }
  return [text ? el("span", { className: "muted", textContent: ` ${text}` }) : "", run ? " " : "", run ? execLink(run) : ""];
}

const refreshItem = debounce(loadItem, QUEUES_REFRESH_MS, PROJECTION_LAG_MS);

// --- triggers --------------------------------------------------------------------------------------------------

function whenOf(t) {
  const c = t.config || {};
  if (t.trigger_type === "schedule") return `${c.cron || ""} ${c.timezone || "UTC"}`;
  if (t.trigger_type === "webhook") return t.webhook_url || "";
  if (t.trigger_type === "email") return t.email_address || "";
  if (t.trigger_type === "file_watcher") return c.glob || c.folder || "";
  return "";
}

function fmtFire(iso) {
  // "2026-11-30T18:00:00+01:00" -> "11-30 18:00:00 +01:00": the trigger's own zone, as the API gives it.
  const m = /^\d{4}-(\d\d-\d\d)T(\d\d:\d\d(?::\d\d)?)(?:\.\d+)?(Z|[+-]\d\d:\d\d)?/.exec(iso || "");
  return m ? `${m[1]} ${m[2]}${m[3] && m[3] !== "Z" ? ` ${m[3]}` : m[3] ? " UTC" : ""}` : iso;
}

const refreshTriggers = debounce(async () => {
  let page;
  try {
    page = await api("GET", `/api/triggers?limit=${PAGE}`);
  } catch {
    $("#triggers").hidden = true;
    return;
  }
  // The projection may lag a save this page just made: keep the newer copy of each trigger.
  const held = new Map(state.triggers.map((t) => [t.id, t]));
  state.triggers = page.items.filter((t) => !state.triggersDeleted.has(t.id)).map((t) => {
    const h = held.get(t.id);
    return h && (ms(h.updated_at) || 0) > (ms(t.updated_at) || 0) ? h : t;
  });
  renderTriggers(page.next_cursor);
}, TRIGGERS_REFRESH_MS, PROJECTION_LAG_MS);

function renderTriggers(more) {
  const cell = (v, className = "") => el("td", { className, textContent: v === undefined || v === null ? "" : String(v) });
  $("#triggers tbody").replaceChildren(...state.triggers.map((t) => {
    const fires = t.next_fire_times || [];
    const when = whenOf(t);
    return el("tr", { dataset: { id: t.id }, className: t.enabled ? "" : "disabled" },
      el("td", {}, el("code", { textContent: short(t.id), title: t.id })),
      el("td", { textContent: state.workflowNames.get(t.workflow_id) || short(t.workflow_id), title: t.workflow_id }),
      cell(t.trigger_type),
      el("td", { className: "when", textContent: when, title: when }),
      el("td", { className: "fires", title: fires.join("\n") },
         ...(t.trigger_type === "schedule" && !fires.length ? ["–"] : fires.map((f) => el("div", { textContent: fmtFire(f) })))),
      cell(t.last_triggered_at ? new Date(ms(t.last_triggered_at)).toLocaleString([], { hour12: false }) : "never", "last"),
      cell(t.trigger_count, "count"),
      el("td", {}, el("button", { type: "button", className: `row-btn toggle ${t.enabled ? "on" : "off"}`,
                                  textContent: t.enabled ? "Disable" : "Enable", title: t.enabled ? "enabled" : "disabled",
                                  on: { click: () => setTriggerEnabled(t, !t.enabled) } }),
         " ", el("span", { className: "enabled muted", textContent: t.enabled ? "on" : "off" })),
      el("td", {}, el("button", { type: "button", className: "row-btn trigger-delete", textContent: "Delete",
                                  on: { click: () => deleteTrigger(t) } })));
  }));
  $("#triggers-note").textContent = `${state.triggers.length}${more ? "+" : ""} trigger(s)`;
  $("#triggers").hidden = false;
}

// PUT replaces the whole trigger: send back what the API gave, with ``enabled`` changed.
async function setTriggerEnabled(t, enabled) {
  $("#triggers-message").textContent = "";
  try {
    const body = { workflow_id: t.workflow_id, trigger_type: t.trigger_type, config: t.config, enabled };
    const saved = await api("PUT", `/api/triggers/${encodeURIComponent(t.id)}`, body);
    state.triggers = state.triggers.map((x) => (x.id === saved.id ? saved : x));
    renderTriggers();
  } catch (e) {
    $("#triggers-message").textContent = `${short(t.id)}: ${e.message}`;
  }
}

async function deleteTrigger(t) {
  if (!window.confirm(CONFIRM["trigger-delete"](t.id))) return;
  $("#triggers-message").textContent = "";
  try {
    await api("DELETE", `/api/triggers/${encodeURIComponent(t.id)}`);
    state.triggersDeleted.add(t.id);
    state.triggers = state.triggers.filter((x) => x.id !== t.id);
    renderTriggers();
  } catch (e) {
    $("#triggers-message").textContent = `${short(t.id)}: ${e.message}`;
  }
}

// A person pressed Run: the execution is recorded as a manual run (trigger_type "manual"), not a program's ("api").
// A workflow whose steps reference params cannot run without them: Run opens the params editor instead.
function runWorkflow(id) {
  const w = state.workflows.find((x) => x.id === id);
  if (w && paramRefs(w.steps).size) { openRun(id); return Promise.resolve(); }
  return api("POST", `/api/workflows/${encodeURIComponent(id)}/execute`, { trigger_type: "manual" })
    .catch((e) => alert(e.message));
}

// --- run with params -------------------------------------------------------------------------------------------

function openRun(id) {
  state.runWorkflowId = id;
  $("#run-name").textContent = state.workflowNames.get(id) || short(id);
  $("#run-error").textContent = "";
  $("#run-result").textContent = "";
  $("#run-needs").textContent = "";
  $("#run-form").hidden = false;
  $("#run-params").focus();
  // The definition as saved now (GET /api/workflows/{id}), not the list's copy: what the run will pin.
  const refs = api("GET", `/api/workflows/${encodeURIComponent(id)}`)
    .then((w) => [...paramRefs(w.steps)].sort())
    .catch(() => []);
  state.runRefs = refs;
  refs.then((list) => { if (state.runRefs === refs) checkRunParams(); return list; });
}

// Every "params.…" path a workflow's steps reference, as the engine resolves them ("invoice", "customer.id").
function paramRefs(value, out = new Set()) {
  if (typeof value === "string") {
    for (const m of value.matchAll(PLACEHOLDER)) {
      const parts = m[1].split(".");
      if (parts[0] === "params" && parts.length > 1) out.add(parts.slice(1).join("."));
    }
  } else if (Array.isArray(value)) {
    for (const v of value) paramRefs(v, out);
  } else if (value && typeof value === "object") {
    for (const v of Object.values(value)) paramRefs(v, out);
  }
  return out;
}

// Whether ``path`` ("customer.id", "lines.0") resolves in ``params``, by the engine's lookup rules.
function hasPath(params, path) {
  let v = params;
  for (const part of path.split(".")) {
    if (Array.isArray(v) && /^\d+$/.test(part) && Number(part) < v.length) v = v[Number(part)];
    else if (v && typeof v === "object" && !Array.isArray(v) && Object.prototype.hasOwnProperty.call(v, part)) v = v[part];
    else return false;
  }
  return true;
}

// While typing: which referenced params the editor's object lacks (nothing is flagged while it is not JSON).
async function checkRunParams() {
  const refs = state.runRefs ? await state.runRefs : [];
  const needs = $("#run-needs");
  if (!refs.length) { needs.textContent = "This workflow references no params."; needs.className = "muted"; return []; }
  let missing = [];
  try { missing = refs.filter((path) => !hasPath(readParams(), path)); } catch { /* shown on submit */ }
  needs.replaceChildren(`References ${refs.map((r) => `params.${r}`).join(", ")}`,
    ...(missing.length ? ["; ", el("b", { className: "missing", textContent: `missing: ${missing.join(", ")}` })] : ["."]));
  needs.className = missing.length ? "error" : "muted";
  return missing;
}

// The params must be a JSON object: checked here before anything is sent; the API's refusal (422: a missing
// reference, a priority outside the plan) is shown as it says it.
function readParams() {
  const text = $("#run-params").value.trim() || "{}";
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new Error(`params: not valid JSON (${e.message})`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error("params: must be a JSON object {…}");
  return value;
}

// A person pressed Run: the execution is recorded as a manual run (trigger_type "manual"), not a program's ("api").
async function submitRun() {
  const id = state.runWorkflowId;
  $("#run-error").textContent = "";
  $("#run-result").textContent = "";
  let params;
  try { params = readParams(); } catch (e) { $("#run-error").textContent = e.message; return; }
  // A run without a param its steps reference would fail on that step, retry, and end in the DLQ: refuse here.
  const refs = state.runRefs ? await state.runRefs : [];
  if (id !== state.runWorkflowId) return;
  const missing = refs.filter((path) => !hasPath(params, path));
  if (missing.length) {
    await checkRunParams();
    $("#run-error").textContent = `params: missing ${missing.join(", ")} (referenced by the workflow's steps as ` +
      `${missing.map((m) => `{{ params.${m} }}`).join(", ")})`;
    return;
  }
  const body = { trigger_type: "manual", params };
  const priority = $("#run-priority").value;
  if (priority) body.priority = Number(priority);
  try {
    const r = await api("POST", `/api/workflows/${encodeURIComponent(id)}/execute`, body);
    $("#run-result").textContent = `queued ${short(r.execution_id)}`;
    $("#run-result").title = r.execution_id;
  } catch (e) {
    $("#run-error").textContent = e.status ? `${e.status}: ${e.message}` : e.message;
  }
}

const refreshWorkflows = debounce(async () => {
  let page;
  try { page = await api("GET", "/api/workflows?limit=50"); } catch { return; }
  state.workflows = page.items;
  for (const w of page.items) state.workflowNames.set(w.id, w.name);
  for (const id of view.rows.keys()) view.dirty.add(id);
  view.dlqDirty = true;
  schedule();
  $("#workflow-list").replaceChildren(...page.items.map((w) => el("li", {},
    el("span", { textContent: `${w.name} ` }),
    el("button", { type: "button", className: "row-btn run", textContent: "Run", dataset: { id: w.id },
                   title: "run now, without params", on: { click: () => runWorkflow(w.id) } }), " ",
    el("button", { type: "button", className: "row-btn run-params", textContent: "Run with…", dataset: { id: w.id },
                   title: "choose params and priority", on: { click: () => openRun(w.id) } }))));
  const filter = $("#workflow-filter");
  const chosen = filter.value;
  filter.replaceChildren(el("option", { value: "", textContent: "all" }),
    ...page.items.map((w) => el("option", { value: w.id, textContent: w.name })));
  filter.value = chosen;
  if (state.triggers.length) renderTriggers();
  $("#workflows").hidden = page.items.length === 0;
}, 1000);

// --- robots (DESIGN §10) ----------------------------------------------------------------------------------------

function fmtAgo(t) {
  if (!t) return "never";
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return new Date(t).toLocaleString([], { hour12: false });
}

// current_task: the task id the robot holds ("<execution id>.<n>": a task id names its execution), or an object
// {task_id, execution_id, step_index, action, label}: shown as the step it runs and a link to its execution.
function taskCell(task) {
  if (!task) return el("td", { className: "task muted", textContent: "–" });
  if (typeof task !== "object") {
    const id = String(task);
    const execution = id.includes(".") ? id.slice(0, id.lastIndexOf(".")) : null;
    const row = execution && state.execs.get(execution);
    task = { task_id: id, execution_id: execution, step_index: row && row.status === "running" ? row.current : null };
  }
  const what = [task.label || task.action, task.step_index !== undefined && task.step_index !== null ? `step ${task.step_index}` : ""]
    .filter(Boolean).join(", ");
  const cell = el("td", { className: "task", title: task.task_id || "" }, what);
  if (task.execution_id) cell.append(" of ", execLink(task.execution_id));
  return cell;
}

const refreshRobots = debounce(async () => {
  if (!state.api.has("GET /api/robots") || !state.key) return;
  let page;
  try {
    page = await api("GET", "/api/robots");
  } catch {
    return; // the next event or tick tries again
  }
  state.robots = page.items || [];
  renderRobots(page.next_cursor);
}, ROBOTS_REFRESH_MS);

function renderRobots(more) {
  if (!state.robots) return;
  $("#robots tbody").replaceChildren(...state.robots.map((r) => el("tr", { dataset: { id: r.id }, className: r.status },
    el("td", { className: "name", title: r.id }, r.name || short(r.id)),
    el("td", { className: "pool", textContent: r.pool || "" }),
    el("td", {}, el("span", { className: `badge robot-status ${r.status}`, textContent: r.status })),
    el("td", { className: "seen", textContent: fmtAgo(ms(r.last_seen_at)), title: r.last_seen_at || "" }),
    taskCell(r.current_task))));
  const counts = {};
  for (const r of state.robots) counts[r.status] = (counts[r.status] || 0) + 1;
  $("#robots-note").textContent = state.robots.length
    ? `${state.robots.length}${more ? "+" : ""} robot(s): ` + Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(", ")
    : "none registered (POST /api/robots)";
  $("#robots").hidden = false;
}

// Views of endpoints another release may lack (robots, history) ask /openapi.json first rather than a 404.
async function loadOperations() {
  try {
    const r = await fetch("/openapi.json");
    const doc = await r.json();
    state.api = new Set(Object.entries(doc.paths || {}).flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`)));
  } catch {
    state.api = new Set();
  }
  $("#tab-history").hidden = !state.api.has("GET /api/executions/{id}/events");
  if (!state.api.has("GET /api/robots")) $("#robots").hidden = true;
}

async function loadAll() {
  const generation = ++state.generation;
  if (state.feed) state.feed.stop();
  state.feed = null;
  state.execs.clear();
  state.dlq.clear();
  view.dirty.clear();
  view.structureDirty = true;
  view.dlqDirty = true;
  const stats = await api("GET", "/api/stats");
  const [, dlq] = await Promise.all([loadRows(), api("GET", "/api/dlq?limit=100")]);
  if (generation !== state.generation) return;
  applyStats(stats, { counts: true });
  for (const x of dlq.items) {
    state.dlq.set(x.id, { id: x.id, workflow_id: x.workflow_id, error_message: x.error_message, at: ms(x.dead_lettered_at) });
  }
  // Every event after the snapshot the counts were read at, exactly once, then live.
  state.feed = new Feed({
    token: state.key,
    since: stats.as_of || "0",
    onEvent,
    onState: showConnection,
    onFatal: (code, reason) => signOut(reason || `feed refused (${code})`),
    onGone: () => loadAll(),
  }).start();
  refreshQueues();
  refreshWorkflows();
  refreshTriggers();
  loadOperations().then(refreshRobots);
  schedule();
}

function showConnection(s) {
  const node = $("#conn");
  node.className = `conn ${s}`;
  node.textContent = s === "on" ? "live" : s === "retry" ? "reconnecting" : "offline";
}

// --- sign in / out -------------------------------------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  try {
    state.tenant = await api("GET", "/api/tenants/me");
  } catch (e) {
    state.key = null;
    showLogin(e.status === 401 || e.status === 403 ? "This key was refused." : `Cannot reach the API: ${e.message}`);
    return;
  }
  localStorage.setItem(KEY_STORE, key);
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#sign-out").hidden = false;
  $("#tenant-name").textContent = `${state.tenant.name} · ${state.tenant.plan}`;
  priorityOptions(state.tenant.limits);
  try {
    await loadAll();
  } catch (e) {
    showLogin(`Loading failed: ${e.message}`);
  }
}

function signOut(message = "") {
  localStorage.removeItem(KEY_STORE);
  if (state.feed) state.feed.stop();
  closeDetail();
  state.feed = null;
  state.key = null;
  showLogin(message);
}

function showLogin(message = "") {
  $("#app").hidden = true;
  $("#sign-out").hidden = true;
  $("#login").hidden = false;
  $("#tenant-name").textContent = "";
  $("#login-error").textContent = message;
  showConnection("off");
}

// Only the priorities the tenant's plan allows (GET /api/tenants/me: limits.min_priority to 10).
function priorityOptions(limits) {
  const low = Math.max(1, Math.min(LOWEST_PRIORITY, (limits && limits.min_priority) || 1));
  const options = () => {
    const out = [];
    for (let p = low; p <= LOWEST_PRIORITY; p++) out.push(el("option", { value: String(p), textContent: String(p) }));
    return out;
  };
  $("#priority-select").replaceChildren(...options());
  const fallback = limits && limits.default_priority ? ` (${limits.default_priority})` : "";
  $("#run-priority").replaceChildren(el("option", { value: "", textContent: `plan default${fallback}` }), ...options());
}

function init() {
  priorityOptions(null);
  $("#login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("#key-input").value.trim());
  });
  $("#sign-out").addEventListener("click", () => signOut());
  $("#detail-close").addEventListener("click", closeDetail);
  $("#btn-retry").addEventListener("click", () => state.selected && command(state.selected, "retry"));
  $("#btn-cancel").addEventListener("click", () => state.selected && command(state.selected, "cancel"));
  $("#btn-priority").addEventListener("click", () => {
    if (state.selected) command(state.selected, "priority", Number($("#priority-select").value));
  });
  $("#status-filter").addEventListener("change", (e) => { state.filter = e.target.value; filtersChanged(); });
  $("#workflow-filter").addEventListener("change", (e) => { state.workflowFilter = e.target.value; filtersChanged(); });
  $("#trigger-filter").addEventListener("change", (e) => {
    state.triggerFilter = e.target.value;
    view.structureDirty = true;
    schedule();
  });
  $("#search-id").addEventListener("input", (e) => {
    state.search = e.target.value.trim();
    $("#search-message").textContent = "";
    view.structureDirty = true;
    schedule();
  });
  $("#search-form").addEventListener("submit", (e) => { e.preventDefault(); searchId($("#search-id").value); });
  $("#more").addEventListener("click", () => loadRows(true).catch((e) => { $("#search-message").textContent = e.message; }));
  $("#item-status").addEventListener("change", (e) => { state.itemStatus = e.target.value; loadItems(); });
  $("#run-form").addEventListener("submit", (e) => { e.preventDefault(); submitRun(); });
  $("#run-close").addEventListener("click", () => { $("#run-form").hidden = true; state.runWorkflowId = null; state.runRefs = null; });
  $("#run-params").addEventListener("input", () => { if (state.runRefs) checkRunParams(); });
  $("#item-detail-close").addEventListener("click", closeItem);
  for (const b of document.querySelectorAll("#detail .tab")) b.addEventListener("click", () => showTab(b.dataset.tab));
  const slider = $("#history-slider");
  slider.addEventListener("input", () => state.detail && pickHistory(state.detail, Number(slider.value), { wait: 150 }));
  $("#history-more").addEventListener("click", () => state.detail && loadHistory(state.detail, true));
  // Robots go offline without an event (they just stop calling): re-read every few seconds while shown.
  setInterval(() => { if (!document.hidden && state.key) refreshRobots(); }, ROBOTS_POLL_MS);
  // Running rows show a live duration; charts roll over each minute.
  setInterval(() => {
    for (const id of view.ids) {
      const r = state.execs.get(id);
      if (r && r.status === "running") view.dirty.add(id);
    }
    if (state.detail) view.detailDirty = true;
    renderCharts();
    schedule();
  }, 1000);
  const key = localStorage.getItem(KEY_STORE);
  if (key) signIn(key);
  else showLogin();
}

document.addEventListener("DOMContentLoaded", init);
