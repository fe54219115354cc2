// The Lanes dashboard: plain JavaScript over the JSON API, no external assets.
// Every view re-renders from the API every REFRESH_MS; the key lives in sessionStorage.
"use strict";

const REFRESH_MS = 3000;
const KEY = "lanes.key";
const view = document.getElementById("view");

// -- the API --------------------------------------------------------------------------------------

async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY);
  const response = await fetch(path, {
    ...options,
    headers: { "Authorization": `Bearer ${key}`, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    askForKey("That key was refused.");
    throw new Error("unauthorized");
  }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const error = new Error(body?.detail?.message || body?.detail || response.statusText);
    error.status = response.status;
    throw error;
  }
  return body;
}

// -- helpers --------------------------------------------------------------------------------------

function h(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
const badge = (status) => `<span class="status ${h(status)}">${h(status)}</span>`;
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");
const short = (id) => h(String(id).slice(0, 12));
const jobLink = (id) => `<a href="#/jobs/${h(id)}">${short(id)}</a>`;

function table(headers, rows) {
  const head = headers.map((x) => `<th${x.num ? ' class="num"' : ""}>${h(x.label ?? x)}</th>`).join("");
  const body = rows.length ? rows.join("") : `<tr><td colspan="${headers.length}" class="muted">none</td></tr>`;
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

function throughputChart(points) {
  const width = 720, height = 140, pad = 20;
  const max = Math.max(1, ...points.map((p) => p.succeeded + p.failed));
  const step = (width - 2 * pad) / Math.max(1, points.length);
  const bars = points.map((p, i) => {
    const x = pad + i * step;
    const ok = ((height - 2 * pad) * p.succeeded) / max;
    const bad = ((height - 2 * pad) * p.failed) / max;
    return `<rect x="${x}" y="${height - pad - ok}" width="${Math.max(1, step - 2)}" height="${ok}" fill="#32d583"><title>${h(when(p.at))}: ${p.succeeded} succeeded</title></rect>` +
      `<rect x="${x}" y="${height - pad - ok - bad}" width="${Math.max(1, step - 2)}" height="${bad}" fill="#f97066"><title>${h(when(p.at))}: ${p.failed} failed</title></rect>`;
  }).join("");
  return `<svg class="chart" width="${width}" height="${height}" role="img" aria-label="jobs per minute">` +
    `<text x="${pad}" y="14" font-size="11" fill="#667085">max ${max}/min</text>${bars}</svg>`;
}

function percentileChart(queues) {
  // One group per queue: wait p50, wait p95, run p50, run p95, as horizontal bars on one scale.
  const series = [["wait p50", "wait_s", "p50", "#fdb022"], ["wait p95", "wait_s", "p95", "#f79009"],
    ["run p50", "run_s", "p50", "#84adff"], ["run p95", "run_s", "p95", "#2e90fa"]];
  const entries = Object.entries(queues);
  const max = Math.max(0.001, ...entries.flatMap(([, s]) => series.map(([, kind, p]) => s[kind][p] || 0)));
  const row = 14, label = 110, width = 720, height = entries.length * (series.length * row + 12) + 10;
  let y = 6;
  const parts = entries.map(([name, s]) => {
    const group = series.map(([what, kind, p, color]) => {
      const value = s[kind][p];
      const bar = value ? ((width - label - 80) * value) / max : 0;
      const out = `<text x="4" y="${y + 10}" font-size="11" fill="#667085">${h(name)} ${what}</text>` +
        `<rect x="${label}" y="${y + 2}" width="${bar}" height="${row - 4}" fill="${color}"></rect>` +
        `<text x="${label + bar + 4}" y="${y + 10}" font-size="11">${value ?? "–"}</text>`;
      y += row;
      return out;
    }).join("");
    y += 12;
    return group;
  }).join("");
  return `<svg class="chart" width="${width}" height="${height}" role="img" aria-label="wait and run percentiles">${parts}</svg>`;
}

// -- views ----------------------------------------------------------------------------------------

const views = {
  async overview() {
    const [queues, stats] = await Promise.all([api("/api/v1/queues"), api("/api/v1/queues/stats?window_s=3600&bucket_s=60")]);
    const rows = queues.queues.map((q) => {
      const rq = q.rq || {}, sql = q.sql || {};
      return `<tr data-queue="${h(q.name)}"><td>${h(q.name)}${q.paused ? ' <span class="muted">(paused)</span>' : ""}</td>` +
        `<td class="num depth">${q.rq ? rq.queued : (sql.queued ?? "")}</td><td class="num">${q.rq ? rq.started : (sql.started ?? "")}</td>` +
        `<td class="num">${q.rq ? rq.scheduled : (sql.scheduled ?? "")}</td><td class="num">${sql.retrying ?? ""}</td>` +
        `<td class="num">${q.rq ? rq.failed : (sql.failed ?? "")}</td><td class="num">${sql.succeeded ?? ""}</td>` +
        (q.rq ? `<td><button class="${q.paused ? "resume" : "pause"}" data-id="${h(q.name)}">${q.paused ? "Resume" : "Pause"}</button>` +
          (q.name !== "webhooks" ? ` <button class="empty danger" data-id="${h(q.name)}">Empty</button>` : "") + "</td>" : "<td></td>") + "</tr>";
    });
    const times = Object.entries(stats.queues).map(([name, s]) =>
      `<tr><td>${h(name)}</td><td class="num">${s.succeeded}</td><td class="num">${s.failed}</td>` +
      `<td class="num">${s.wait_s.p50 ?? ""}</td><td class="num">${s.wait_s.p95 ?? ""}</td>` +
      `<td class="num">${s.run_s.p50 ?? ""}</td><td class="num">${s.run_s.p95 ?? ""}</td></tr>`);
    const all = Object.values(stats.queues)[0]?.throughput.map((p, i) => ({
      at: p.at,
      succeeded: Object.values(stats.queues).reduce((n, s) => n + s.throughput[i].succeeded, 0),
      failed: Object.values(stats.queues).reduce((n, s) => n + s.throughput[i].failed, 0),
    })) || [];
    return `<div class="cards"><div class="card"><div class="muted">live workers</div><div class="big" id="live-workers">${queues.workers}</div></div>` +
      `<div class="card"><div class="muted">finished, last hour</div><div class="big" id="finished-hour">${Object.values(stats.queues).reduce((n, s) => n + s.succeeded + s.failed, 0)}</div></div></div>` +
      `<h2>Queues</h2>` + table(["queue", { label: "waiting", num: 1 }, { label: "started", num: 1 }, { label: "scheduled", num: 1 },
        { label: "retrying", num: 1 }, { label: "failed", num: 1 }, { label: "succeeded", num: 1 }, ""], rows) +
      `<h2>Throughput, last hour (per minute: succeeded, failed)</h2>${throughputChart(all)}` +
      `<h2>Wait and run times, last hour (seconds)</h2>${percentileChart(stats.queues)}` + table(["queue", { label: "succeeded", num: 1 }, { label: "failed", num: 1 },
        { label: "wait p50", num: 1 }, { label: "wait p95", num: 1 }, { label: "run p50", num: 1 }, { label: "run p95", num: 1 }], times);
  },

  async jobs(_, params) {
    const query = new URLSearchParams({ limit: "25" });
    for (const name of ["status", "task", "priority", "tenant", "cursor"]) if (params.get(name)) query.set(name, params.get(name));
    const page = await api(`/api/v1/jobs?${query}`);
    const rows = page.items.map((j) => `<tr data-job="${h(j.id)}"><td>${jobLink(j.id)}</td><td>${h(j.task)}</td><td>${h(j.queue)}</td>` +
      `<td>${badge(j.status)}</td><td class="num">${j.progress}%</td><td class="num">${j.attempts}</td><td>${h(when(j.created_at))}</td></tr>`);
    const option = (name, values) => `<select name="${name}"><option value="">any ${name}</option>` +
      values.map((v) => `<option${params.get(name) === v ? " selected" : ""}>${v}</option>`).join("") + "</select>";
    const next = page.next_cursor ? (() => { const p = new URLSearchParams(params); p.set("cursor", page.next_cursor); return `<a href="#/jobs?${p}">older →</a>`; })() : "";
    return `<form class="filters" id="job-filters">${option("status", ["scheduled", "queued", "started", "retrying", "succeeded", "failed", "cancelled"])}` +
      option("priority", ["high", "normal", "low"]) + `<input name="task" placeholder="task" value="${h(params.get("task") || "")}">` +
      `<input name="tenant" placeholder="tenant (admins)" value="${h(params.get("tenant") || "")}"><button>Filter</button></form>` +
      table(["job", "task", "queue", "status", { label: "progress", num: 1 }, { label: "attempts", num: 1 }, "created"], rows) + `<p>${next}</p>`;
  },

  async job(id) {
    const [job, deliveries] = await Promise.all([api(`/api/v1/jobs/${encodeURIComponent(id)}`), api(`/api/v1/jobs/${encodeURIComponent(id)}/webhooks`)]);
    const waiting = ["scheduled", "queued", "started", "retrying"].includes(job.status);
    const timeline = [["created", job.created_at], ["enqueued", job.enqueued_at], ["started", job.started_at],
      ["next retry", job.next_retry_at], ["cancelled", job.cancelled_at], ["finished", job.finished_at]]
      .filter(([, at]) => at).map(([what, at]) => `<tr><td>${what}</td><td>${h(when(at))}</td></tr>`);
    const sent = deliveries.map((d) => `<tr><td class="num">${d.attempt}</td><td>${h(d.event)}</td><td>${d.delivered ? "delivered" : h(d.error)}</td>` +
      `<td class="num">${d.status_code ?? ""}</td><td class="num">${d.response_ms ?? ""}</td><td>${h(when(d.delivered_at))}</td></tr>`);
    return `<h2>Job <code>${h(job.id)}</code> ${badge(job.status)}</h2>` +
      `<p>${h(job.task)} on <b>${h(job.queue)}</b>, attempt ${job.attempts} of ${job.max_retries + 1}${job.stage ? `, stage: ${h(job.stage)}` : ""}</p>` +
      `<div class="bar" title="${job.progress}%"><div style="width:${job.progress}%"></div></div> <span id="progress">${job.progress}%</span>` +
      `<p>${waiting ? '<button id="cancel" class="danger">Cancel</button>' : ""} ${["failed", "cancelled"].includes(job.status) ? '<button id="retry">Retry</button>' : ""}` +
      ` ${waiting ? "" : '<button id="delete" class="danger" title="platform admins">Delete</button>'}</p>` +
      `<h2>Params</h2><pre>${h(JSON.stringify(job.params, null, 2))}</pre>` +
      (job.result !== null ? `<h2>Result</h2><pre>${h(JSON.stringify(job.result, null, 2))}</pre>` : "") +
      (job.error ? `<h2>Error</h2><pre class="error">${h(job.error)}</pre>` : "") +
      (job.traceback ? `<h2>Traceback</h2><pre>${h(job.traceback)}</pre>` : "") +
      `<h2>Timeline</h2>${table(["", "when"], timeline)}` +
      `<h2>Webhook deliveries</h2>${table([{ label: "attempt", num: 1 }, "event", "outcome", { label: "status", num: 1 }, { label: "ms", num: 1 }, "when"], sent)}`;
  },

  async failed() {
    const page = await api("/api/v1/jobs?status=failed&limit=200");
    const groups = new Map();
    for (const job of page.items) {
      const key = `${job.task}\u0000${job.error || ""}`;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(job);
    }
    const sections = [...groups.values()].map((jobs) => `<h2>${h(jobs[0].task)}: <span class="error">${h(jobs[0].error)}</span> (${jobs.length})</h2>` +
      table(["job", "failed", "attempts", ""], jobs.map((j) => `<tr data-job="${h(j.id)}"><td>${jobLink(j.id)}</td><td>${h(when(j.finished_at))}</td>` +
        `<td class="num">${j.attempts}</td><td><button class="retry-one" data-id="${h(j.id)}">Retry</button></td></tr>`)));
    return `<p><button id="retry-all" ${page.items.length ? "" : "disabled"}>Retry all failed</button> <span class="muted">newest first</span></p>` +
      (sections.join("") || '<p class="muted">No failed jobs.</p>');
  },

  async workers() {
    let workers;
    try { workers = await api("/api/v1/workers"); } catch (e) { if (e.status === 403) return '<p class="muted">Worker details are for platform admins.</p>'; throw e; }
    return table(["name", "host", "pid", "queues", "state", "current job", { label: "running for (s)", num: 1 }, { label: "done", num: 1 }, { label: "failed", num: 1 }, "last heartbeat"],
      workers.map((w) => `<tr data-worker="${h(w.name)}"><td>${h(w.name)}</td><td>${h(w.hostname)}</td><td class="num">${w.pid}</td><td>${h(w.queues.join(", "))}</td>` +
        `<td>${badge(w.state)}</td><td>${w.current_job ? jobLink(w.current_job) : ""}</td><td class="num">${w.current_job_elapsed_s ?? ""}</td>` +
        `<td class="num">${w.successful_jobs}</td><td class="num">${w.failed_jobs}</td><td>${h(when(w.last_heartbeat_at))}</td></tr>`));
  },

  async schedules() {
    const page = await api("/api/v1/schedules?limit=200");
    return table(["name", "task", "cron", "time zone", "next fire times", "last run", "outcome", "", ""],
      page.items.map((s) => `<tr data-schedule="${h(s.id)}"><td>${h(s.name)}</td><td>${h(s.task)}</td><td><code>${h(s.cron)}</code></td><td>${h(s.timezone)}</td>` +
        `<td>${s.next_fire_times.slice(0, 3).map((t) => h(when(t))).join("<br>")}</td><td>${h(when(s.last_run_at))}</td>` +
        `<td>${s.last_job_id ? `${badge(s.last_job_status)} ${jobLink(s.last_job_id)}` : ""}</td>` +
        `<td><button class="toggle" data-id="${h(s.id)}" data-enabled="${s.enabled}">${s.enabled ? "Disable" : "Enable"}</button></td>` +
        `<td><button class="run-now" data-id="${h(s.id)}">Run now</button></td></tr>`));
  },
};

// -- actions --------------------------------------------------------------------------------------

document.addEventListener("click", async (event) => {
  const target = event.target.closest("button");
  if (!target || target.closest("dialog")) return;
  const id = target.dataset.id;
  const actions = {
    cancel: () => api(`/api/v1/jobs/${encodeURIComponent(route().id)}/cancel`, { method: "POST" }),
    retry: () => api(`/api/v1/jobs/${encodeURIComponent(route().id)}/retry`, { method: "POST" }),
    "retry-all": () => api("/api/v1/jobs/retry", { method: "POST", body: JSON.stringify({ status: "failed" }) }),
    delete: async () => {
      if (!confirm("Delete this job's row and RQ's record of it?")) return;
      await api(`/api/v1/jobs/${encodeURIComponent(route().id)}`, { method: "DELETE" });
      location.hash = "#/jobs";
    },
    forget: async () => { sessionStorage.removeItem(KEY); askForKey(""); },
  };
  const byClass = {
    "retry-one": () => api(`/api/v1/jobs/${encodeURIComponent(id)}/retry`, { method: "POST" }),
    "run-now": () => api(`/api/v1/schedules/${encodeURIComponent(id)}/run`, { method: "POST" }),
    pause: () => api(`/api/v1/queues/${encodeURIComponent(id)}/pause`, { method: "POST" }),
    resume: () => api(`/api/v1/queues/${encodeURIComponent(id)}/resume`, { method: "POST" }),
    empty: async () => { if (confirm(`Cancel every job waiting on ${id}?`)) await api(`/api/v1/queues/${encodeURIComponent(id)}/empty`, { method: "POST" }); },
    toggle: () => api(`/api/v1/schedules/${encodeURIComponent(id)}`, { method: "PATCH", body: JSON.stringify({ enabled: target.dataset.enabled !== "true" }) }),
  };
  const action = actions[target.id] || byClass[[...target.classList].find((c) => byClass[c])];
  if (!action) return;
  event.preventDefault();
  try { await action(); } catch (e) { alert(e.message); }
  render();
});

document.addEventListener("submit", (event) => {
  if (event.target.id !== "job-filters") return;
  event.preventDefault();
  const params = new URLSearchParams([...new FormData(event.target)].filter(([, v]) => v));
  location.hash = `#/jobs?${params}`;
});

// -- routing, key, refresh ------------------------------------------------------------------------

function route() {
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const [page, id] = path.split("/");
  return { page: page || "overview", id, params: new URLSearchParams(query || "") };
}

async function render() {
  const { page, id, params } = route();
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
  if (!sessionStorage.getItem(KEY)) return askForKey("");
  try {
    const html = page === "jobs" && id ? await views.job(id) : await (views[page] || views.overview)(id, params);
    if (document.activeElement?.closest?.("#job-filters")) return; // do not redraw under someone typing
    view.innerHTML = html;
    view.dataset.page = page;
  } catch (e) {
    if (e.message !== "unauthorized") view.innerHTML = `<p class="error">${h(e.message)}</p>`;
  }
}

function askForKey(message) {
  document.getElementById("login-error").textContent = message;
  const dialog = document.getElementById("login");
  if (!dialog.open) dialog.showModal();
}

document.getElementById("login-form").addEventListener("submit", async () => {
  sessionStorage.setItem(KEY, document.getElementById("key").value.trim());
  document.getElementById("key").value = "";
  await render();
});

window.addEventListener("hashchange", render);
render();
setInterval(render, REFRESH_MS);
