// Raftstream dashboard: one page, hash routes, a refresh every second from /api/v1/.
"use strict";

const REFRESH_MS = 1000;
const REQUEST_TIMEOUT_MS = 4000;
let lastSuccess = null;
let refreshing = false;

function escapeHtml(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function time(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : "";
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = n, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

function rate(value) {
  return value === null || value === undefined ? "" : `${Math.round(value).toLocaleString()} rec/s`;
}

async function api(path) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  try {
    const response = await fetch(`/api/v1${path}`, { signal: controller.signal, cache: "no-store" });
    const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (!response.ok) throw new ApiError(body.error || `HTTP ${response.status}`, response.status);
    return body;
  } catch (error) {
    if (error instanceof ApiError) throw error;
    throw new ApiError(`coordinator at ${location.host} is unreachable (${error.name === "AbortError" ? "no answer" : error.message})`, 0);
  } finally {
    clearTimeout(timer);
  }
}

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

function table(headers, rows, id) {
  return `<table${id ? ` id="${id}"` : ""}><thead><tr>${headers.map((h) => `<th>${escapeHtml(h)}</th>`).join("")}</tr></thead>` +
    `<tbody>${rows.join("")}</tbody></table>`;
}

async function clusterView() {
  const cluster = await api("/cluster");
  const rows = cluster.members.map((m) => `<tr data-node-id="${m.node_id}" data-state="${escapeHtml(m.state)}">` +
    `<td>${m.node_id}${m.node_id === cluster.served_by ? ' <span class="muted">(serving this page)</span>' : ""}</td>` +
    `<td>${escapeHtml(m.address)}</td><td>${escapeHtml(m.role)}</td><td class="state-${escapeHtml(m.state)}">${escapeHtml(m.state)}</td>` +
    `<td>${m.term || ""}</td><td>${m.last_log_index ?? ""}</td><td>${m.committed_index ?? ""}</td><td>${m.applied_index ?? ""}</td>` +
    `<td>${m.lag ?? ""}</td><td class="muted">${escapeHtml(m.error)}</td></tr>`);
  return `<div class="summary"><div>Leader<b id="leader">${cluster.leader_id ?? "none"}</b></div>` +
    `<div>Term<b id="term">${cluster.term}</b></div><div>Members<b id="member-count">${cluster.members.length}</b></div></div>` +
    `<h2>Members</h2>` +
    table(["Node", "Address", "Role", "State", "Term", "Last log", "Committed", "Applied", "Lag", "Error"], rows, "members");
}

async function executorsView() {
  const listed = await api("/executors");
  const rows = listed.executors.map((e) => `<tr data-executor-id="${escapeHtml(e.executor_id)}">` +
    `<td>${escapeHtml(e.executor_id)}</td><td>${escapeHtml(e.address)}</td><td>${e.used_slots} / ${e.slots}</td>` +
    `<td class="${e.alive ? "" : "dead"}">${e.alive ? (e.connected ? "alive" : "alive (reconnecting)") : "dead"}</td>` +
    `<td>${e.lease_age_ms ?? ""}${e.lease_age_ms !== null && e.lease_age_ms !== undefined ? " ms" : ""}</td>` +
    `<td class="${e.draining ? "draining" : ""}">${e.draining ? "draining" : ""}</td>` +
    `<td>${e.subtasks.map(escapeHtml).join(", ")}</td></tr>`);
  return `<h2>Executors</h2>` + table(["Executor", "Address", "Slots used", "State", "Lease age", "Draining", "Subtasks"], rows, "executors");
}

async function jobsView() {
  const listed = await api("/jobs");
  const rows = listed.jobs.map((j) => `<tr data-job-id="${escapeHtml(j.job_id)}">` +
    `<td><a class="job-link" href="#/jobs/${encodeURIComponent(j.job_id)}">${escapeHtml(j.name)}</a></td>` +
    `<td class="muted">${escapeHtml(j.job_id)}</td><td class="status-${escapeHtml(j.status)}">${escapeHtml(j.status)}</td>` +
    `<td>${j.restart_count}</td><td>${j.last_checkpoint_id ?? ""}</td><td>${j.operators}</td><td>${j.subtasks}</td>` +
    `<td>${j.slots_held}/${j.slots_needed}</td><td>${time(j.submitted_at_ms)}</td></tr>`);
  return `<h2>Jobs</h2>` + table(["Name", "Id", "Status", "Restarts", "Last checkpoint", "Operators", "Subtasks", "Slots held", "Submitted"], rows, "jobs");
}

// Lays the operators out in columns by their distance from a source, and draws the edges.
function graph(operators) {
  const depth = {};
  const byId = Object.fromEntries(operators.map((o) => [o.operator_id, o]));
  const depthOf = (id, seen = new Set()) => {
    if (depth[id] !== undefined) return depth[id];
    if (seen.has(id) || !byId[id]) return 0;
    seen.add(id);
    const inputs = byId[id].inputs;
    depth[id] = inputs.length ? Math.max(...inputs.map((input) => depthOf(input, seen) + 1)) : 0;
    return depth[id];
  };
  operators.forEach((o) => depthOf(o.operator_id));
  const columns = {};
  const position = {};
  const width = 170, height = 58, gapX = 60, gapY = 24;
  for (const o of operators) {
    const column = depth[o.operator_id];
    const row = (columns[column] = (columns[column] ?? -1) + 1);
    position[o.operator_id] = { x: 10 + column * (width + gapX), y: 10 + row * (height + gapY) };
  }
  const maxColumn = Math.max(0, ...Object.keys(columns).map(Number));
  const maxRow = Math.max(0, ...Object.values(columns));
  const edges = operators.flatMap((o) => o.inputs.filter((i) => position[i]).map((input) => {
    const from = position[input], to = position[o.operator_id];
    return `<line x1="${from.x + width}" y1="${from.y + height / 2}" x2="${to.x - 4}" y2="${to.y + height / 2}"></line>`;
  }));
  const nodes = operators.map((o) => {
    const p = position[o.operator_id];
    const throughput = o.chained_to ? `chained to ${o.chained_to}` : rate(o.records_in_per_second);
    return `<g class="operator" data-operator-id="${escapeHtml(o.operator_id)}" data-parallelism="${o.parallelism}">` +
      `<rect class="${o.chained_to ? "chained" : ""}" x="${p.x}" y="${p.y}" width="${width}" height="${height}" rx="6"></rect>` +
      `<text x="${p.x + 8}" y="${p.y + 17}" font-weight="bold">${escapeHtml(o.operator_id)}</text>` +
      `<text x="${p.x + 8}" y="${p.y + 33}">${escapeHtml(o.kind)} × ${o.parallelism}</text>` +
      `<text x="${p.x + 8}" y="${p.y + 49}" class="muted">${escapeHtml(throughput)}</text></g>`;
  });
  const svgWidth = 20 + (maxColumn + 1) * (width + gapX);
  const svgHeight = 20 + (maxRow + 1) * (height + gapY);
  return `<svg id="job-graph" width="${svgWidth}" height="${svgHeight}" xmlns="http://www.w3.org/2000/svg">` +
    `<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto">` +
    `<path d="M0,0 L10,5 L0,10 z" fill="#7a869a"></path></marker></defs>${edges.join("")}${nodes.join("")}</svg>`;
}

async function jobView(jobId) {
  const job = await api(`/jobs/${encodeURIComponent(jobId)}`);
  const subtasks = job.subtasks.map((s) => `<tr><td>${escapeHtml(s.operator_id)}[${s.subtask_index}]</td>` +
    `<td>${escapeHtml(s.executor_id) || '<span class="muted">waiting for a slot</span>'}</td><td>${s.epoch}</td>` +
    `<td class="state-${s.state}">${s.state}</td><td>${s.records_in ?? ""}</td><td>${s.records_out ?? ""}</td>` +
    `<td>${s.busy_ratio === null || s.busy_ratio === undefined ? "" : Math.round(s.busy_ratio * 100) + " %"}</td></tr>`);
  const checkpoints = job.checkpoints.map((c) => `<tr data-checkpoint-id="${c.checkpoint_id}"><td>${c.checkpoint_id}${c.savepoint ? " (savepoint)" : ""}</td>` +
    `<td>${escapeHtml(c.trigger)}</td><td>${c.duration_ms ?? ""}${c.duration_ms !== null && c.duration_ms !== undefined ? " ms" : ""}</td>` +
    `<td>${bytes(c.size_bytes)}</td><td>${time(c.completed_at_ms)}</td></tr>`);
  const history = job.history.slice().reverse().map((e) => `<tr><td>${time(e.at_ms)}</td><td>${escapeHtml(e.what)}</td></tr>`);
  const restarts = job.restarts.slice().reverse().map((e) => `<tr><td>${time(e.at_ms)}</td><td>${escapeHtml(e.what)}</td></tr>`);
  // One row per exported function the job calls (a function without calls yet shows one row).
  const functions = job.functions.flatMap((f) => {
    const head = `<td>${escapeHtml(f.name)}</td><td>${escapeHtml(f.language)}</td><td title="${escapeHtml(f.sha256)}">${escapeHtml(f.sha256.slice(0, 12))}</td>` +
      `<td>${bytes(f.size_bytes)}</td><td>${f.compile_ms === null ? "" : f.compile_ms + " ms" + (f.from_cache ? " (cache)" : "")}</td>`;
    const exports = f.exports.length ? f.exports : [null];
    return exports.map((e) => `<tr data-function="${escapeHtml(f.name)}">${head}` +
      (e === null ? "<td></td><td></td><td></td><td></td>" :
        `<td>${escapeHtml(e.export)}</td><td>${e.calls}</td><td>${e.errors}</td><td>${e.micros_per_call.toFixed(1)} µs</td>`) + "</tr>");
  });
  return `<h2>${escapeHtml(job.name)} <span class="muted">${escapeHtml(job.job_id)}</span></h2>` +
    `<div class="summary"><div>Status<b id="job-status" class="status-${escapeHtml(job.status)}">${escapeHtml(job.status)}</b></div>` +
    `<div>Restarts<b id="job-restarts">${job.restart_count}</b></div>` +
    `<div>Slots held<b id="job-slots">${job.slots_held}/${job.slots_needed}</b></div>` +
    `<div>Last checkpoint<b id="job-last-checkpoint">${job.last_checkpoint_id ?? "none"}</b></div></div>` +
    (job.status_reason ? `<p class="muted">${escapeHtml(job.status_reason)}</p>` : "") +
    `<h2>Graph</h2>${graph(job.operators)}` +
    `<h2>Subtasks</h2>` + table(["Subtask", "Executor", "Epoch", "State", "Records in", "Records out", "Busy"], subtasks, "subtasks") +
    (functions.length ? `<h2>Functions</h2>` + table(["Function", "Language", "SHA-256", "Size", "Compile", "Export", "Calls", "Errors", "Per call"], functions, "functions") : "") +
    `<h2>Checkpoints</h2>` + table(["Id", "Trigger", "Duration", "Size", "Completed"], checkpoints, "checkpoints") +
    `<h2>Restarts</h2>` + table(["At", "Why"], restarts, "restarts") +
    `<h2>History (rescales, moves)</h2>` + table(["At", "What"], history, "history");
}

async function timelineView() {
  const timeline = await api("/timeline");
  const rows = timeline.entries.map((e) => `<tr data-kind="${escapeHtml(e.kind)}"><td>${time(e.at_ms)}</td><td>${escapeHtml(e.kind)}</td>` +
    `<td>${escapeHtml(e.job)}</td><td>${escapeHtml(e.what)}</td></tr>`);
  return `<h2>Timeline <span class="muted">(leader changes, executor deaths and restarts as node ${timeline.served_by} saw them since it started)</span></h2>` +
    table(["At", "Kind", "Job", "What"], rows, "timeline");
}

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "jobs" && parts[1]) return { name: "jobs", render: () => jobView(parts[1]) };
  const views = { cluster: clusterView, executors: executorsView, jobs: jobsView, timeline: timelineView };
  const name = views[parts[0]] ? parts[0] : "cluster";
  return { name, render: views[name] };
}

async function refresh() {
  if (refreshing) return;
  refreshing = true;
  const current = route();
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === current.name));
  const banner = document.getElementById("banner");
  try {
    const html = await current.render();
    if (route().name === current.name) document.getElementById("view").innerHTML = html;
    lastSuccess = Date.now();
    banner.className = "banner ok";
    banner.textContent = `${location.host} · updated ${new Date(lastSuccess).toLocaleTimeString()}`;
    document.body.dataset.loaded = "true";
  } catch (error) {
    banner.className = error.status === 0 || error.status === 503 ? "banner unreachable" : "banner";
    banner.textContent = `${error.message}${lastSuccess ? ` · last update ${new Date(lastSuccess).toLocaleTimeString()}` : ""}`;
    if (error.status === 404) document.getElementById("view").innerHTML = `<p>${escapeHtml(error.message)}</p>`;
  } finally {
    refreshing = false;
  }
}

window.addEventListener("hashchange", refresh);
refresh();
setInterval(refresh, REFRESH_MS);
