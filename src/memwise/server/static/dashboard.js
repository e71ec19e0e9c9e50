// memwise dashboard: live view of one pool from /api/events (snapshots + pool events), with a
// fallback to polling /api/snapshot while the event stream is down. No dependencies.
"use strict";

(function () {
  const token = new URLSearchParams(location.search).get("token");
  const EVENT_KINDS = ["worker_died", "worker_recycled", "worker_replaced", "task_timed_out",
    "task_failed", "task_retried", "pool_resized", "pool_broken", "pool_shutdown"];
  const HISTORY = 600;          // throughput samples kept (2 min at up to 5 Hz)
  const MEMORY_POINTS = 60;     // private-memory sparkline points per lane
  const MAX_EVENTS = 200;
  const DURATION_WINDOW_S = 30; // the duration chart shows tasks finished in this window

  const $ = (id) => document.getElementById(id);
  const rate = [];              // [time, tasks/s]
  const memory = new Map();     // lane -> [private bytes]
  const histograms = [];        // [time, counts[]] for the recent-duration window
  const restartsSeen = new Map();
  let lastSnapshotAt = 0;
  let pollTimer = null;

  function url(path) {
    return token ? path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : path;
  }

  // ---------------------------------------------------------------- formatting
  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(n < 10 ? 1 : 0)) + " " + units[i];
  }
  function count(n) { return n === null || n === undefined ? "–" : n.toLocaleString("en-US"); }
  function seconds(s) {
    if (s === null || s === undefined) return "";
    if (s < 1) return (s * 1000).toFixed(0) + " ms";
    if (s < 60) return s.toFixed(1) + " s";
    return Math.floor(s / 60) + " m " + Math.floor(s % 60) + " s";
  }
  function clock(t) { return new Date(t * 1000).toLocaleTimeString("en-GB", { hour12: false }); }
  function text(el, value) { if (el.textContent !== value) el.textContent = value; }

  // ---------------------------------------------------------------- canvas helpers
  function canvas2d(id) {
    const c = $(id);
    const ratio = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    if (c.width !== Math.round(w * ratio) || c.height !== Math.round(h * ratio)) {
      c.width = Math.round(w * ratio); c.height = Math.round(h * ratio);
    }
    const g = c.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, w, h);
    g.font = "11px system-ui, sans-serif";
    return { g, w, h };
  }
  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }
  function tick(v) {
    if (v >= 1000) return (v / 1000).toFixed(v % 1000 ? 1 : 0) + "k";
    return v % 1 ? v.toFixed(1) : v.toFixed(0);
  }
  function axis(g, w, h, left, max, fmt) {
    g.strokeStyle = "#253140"; g.fillStyle = "#7d8b99"; g.lineWidth = 1;
    for (let i = 0; i <= 2; i++) {
      const y = Math.round(6 + (h - 26) * (1 - i / 2)) + 0.5;
      g.beginPath(); g.moveTo(left, y); g.lineTo(w, y); g.stroke();
      g.fillText(fmt(max * i / 2), 2, y + 4);
    }
  }

  function drawRate() {
    const { g, w, h } = canvas2d("g-rate");
    const left = 44, top = 6, bottom = h - 20;
    const max = niceMax(Math.max(1, ...rate.map((p) => p[1])));
    axis(g, w, h, left, max, tick);
    if (rate.length < 2) return;
    // The window grows with the history, from 30 s up to 2 min.
    const t1 = rate[rate.length - 1][0];
    const span = Math.min(120, Math.max(30, t1 - rate[0][0]));
    const t0 = t1 - span;
    const x = (t) => left + (w - left) * Math.max(0, (t - t0)) / span;
    const y = (v) => top + (bottom - top) * (1 - v / max);
    g.beginPath();
    rate.forEach((p, i) => (i ? g.lineTo(x(p[0]), y(p[1])) : g.moveTo(x(p[0]), y(p[1]))));
    g.strokeStyle = "#4fb3ff"; g.lineWidth = 2; g.stroke();
    g.lineTo(x(t1), bottom); g.lineTo(x(rate[0][0]), bottom); g.closePath();
    const fill = g.createLinearGradient(0, top, 0, bottom);
    fill.addColorStop(0, "rgba(79,179,255,.35)"); fill.addColorStop(1, "rgba(79,179,255,0)");
    g.fillStyle = fill; g.fill();
    g.fillStyle = "#7d8b99";
    g.fillText(span >= 120 ? "-2 min" : "-" + Math.round(span) + " s", left, h - 4);
    g.fillText("now", w - 22, h - 4);
  }

  function bars(id, labels, values, color, fmt) {
    const { g, w, h } = canvas2d(id);
    const left = 44, top = 6, bottom = h - 20;
    const max = niceMax(Math.max(4, ...values));
    axis(g, w, h, left, max, fmt || tick);
    const n = Math.max(1, values.length), slot = (w - left) / n;
    const barW = Math.max(2, Math.min(28, slot * 0.7));
    values.forEach((v, i) => {
      const bh = (bottom - top) * v / max;
      g.fillStyle = color;
      g.fillRect(left + slot * i + (slot - barW) / 2, bottom - bh, barW, bh);
    });
    g.fillStyle = "#7d8b99";
    const every = Math.ceil(labels.length / Math.max(1, Math.floor((w - left) / 36)));
    labels.forEach((label, i) => {
      if (i % every) return;
      const tw = g.measureText(label).width;
      g.fillText(label, left + slot * i + slot / 2 - tw / 2, h - 4);
    });
  }

  function drawDurations(snap) {
    const d = snap.durations;
    histograms.push([snap.time, d.counts.slice()]);
    while (histograms.length > 2 && histograms[1][0] <= snap.time - DURATION_WINDOW_S) histograms.shift();
    const base = histograms[0];
    let counts = d.counts.map((c, i) => c - (base[1][i] || 0));
    let sub = "last " + DURATION_WINDOW_S + " s";
    if (counts.every((c) => c === 0)) { counts = d.counts; sub = "since start"; }
    text($("g-dur-sub"), sub);
    const labels = d.buckets.map((b) => b === "+Inf" ? ">60s" : b < 1 ? "≤" + b * 1000 + "ms" : "≤" + b + "s");
    bars("g-dur", labels, counts, "#a78bfa");
  }

  function drawQueues(snap) {
    const lanes = snap.workers.filter((w) => w.lane >= 0);
    const labels = ["pool", ...lanes.map((w) => String(w.lane))];
    const values = [Math.max(0, snap.queued - lanes.reduce((s, w) => s + w.queued, 0)), ...lanes.map((w) => w.queued)];
    bars("g-queue", labels, values, "#f5b942");
  }

  // ---------------------------------------------------------------- gauges and cards
  function gauge(id, fraction, hot) {
    const el = $(id);
    el.style.width = (100 * Math.max(0, Math.min(1, fraction))).toFixed(1) + "%";
    el.classList.toggle("hot", !!hot);
  }

  function cards(snap) {
    const live = snap.workers.filter((w) => w.pid !== null);
    const busy = snap.workers.filter((w) => w.state === "busy").length;
    text($("c-workers"), live.length + " / " + snap.max_workers);
    text($("c-workers-sub"), busy + " busy · min " + snap.min_workers);
    text($("c-rate"), snap.throughput >= 100 ? count(Math.round(snap.throughput)) : snap.throughput.toFixed(1));
    text($("c-done"), count(snap.done));
    text($("c-done-sub"), count(snap.submitted) + " submitted");
    text($("c-failed"), count(snap.failed));
    text($("c-failed-sub"), snap.timed_out + " timed out · " + snap.retried + " retried · " + snap.cancelled + " cancelled");
    text($("c-queued"), count(snap.queued));
    text($("c-queued-sub"), snap.in_flight + " in flight");
    text($("c-restarts"), count(snap.restarts));
    const recycles = Object.values(snap.recycles).reduce((a, b) => a + b, 0);
    text($("c-restarts-sub"), recycles + " recycled");
    const state = $("pool-state");
    text(state, snap.state + (snap.broken_reason ? ": " + snap.broken_reason : ""));
    state.className = "pill " + snap.state.split(" ")[0];

    const b = snap.budget;
    if (b) {
      gauge("b-budget", b.in_use / b.limit, b.in_use > 0.9 * b.limit);
      const reserved = $("b-reserved");
      reserved.style.left = (100 * Math.min(1, b.in_use / b.limit)).toFixed(1) + "%";
      reserved.style.width = (100 * Math.min(1, b.reserved / b.limit)).toFixed(1) + "%";
      text($("t-budget"), bytes(b.in_use) + " used + " + bytes(b.reserved) + " reserved of " + bytes(b.limit) + (b.waiting ? " · " + b.waiting + " waiting" : ""));
    } else {
      gauge("b-budget", 0); text($("t-budget"), "no budget");
    }
    const s = snap.shared_memory;
    const total = s.bytes_in_use + s.bytes_free;
    gauge("b-shm", total ? s.bytes_in_use / total : 0);
    text($("t-shm"), bytes(s.bytes_in_use) + " in " + s.slots_in_use + " slots · " + bytes(s.bytes_free) + " warm in " + s.slots_free);
    const privateSum = live.reduce((sum, w) => sum + (w.private || 0), 0);
    // A share of the budget; without one there is no meaningful whole, so only the figure.
    $("b-private").parentNode.style.visibility = b ? "visible" : "hidden";
    gauge("b-private", b ? privateSum / b.limit : 0);
    text($("t-private"), bytes(privateSum) + " in " + live.length + " workers" + (b ? " (of the budget)" : ""));
  }

  // ---------------------------------------------------------------- worker rows (updated in place)
  const CELLS = ["lane", "pid", "state", "key", "task", "running num", "cpu", "private num", "memory", "done num", "restarts num", "recycles"];

  // Rows are keyed by lane; warm spares (lane -1) by their pid, and sort after the lanes.
  function rowKey(w) { return w.lane >= 0 ? String(w.lane) : "spare-" + w.pid; }
  function rowOrder(key) { return key.startsWith("spare-") ? 1e9 + Number(key.slice(6)) : Number(key); }

  function row(key) {
    const body = $("workers").tBodies[0];
    let tr = body.querySelector('tr[data-lane="' + key + '"]');
    if (tr) return tr;
    tr = document.createElement("tr");
    tr.dataset.lane = key;
    for (const name of CELLS) {
      const td = document.createElement("td");
      td.className = name;
      tr.appendChild(td);
    }
    tr.children[2].innerHTML = '<span class="pill"></span>';
    tr.children[6].innerHTML = '<span class="meter"><i></i></span><span></span>';
    tr.children[8].innerHTML = '<svg width="90" height="20" viewBox="0 0 90 20"><polyline fill="none" stroke="#4fb3ff" stroke-width="1.5"/></svg>';
    const rows = Array.from(body.rows);
    const after = rows.find((r) => rowOrder(r.dataset.lane) > rowOrder(key));
    body.insertBefore(tr, after || null);
    return tr;
  }

  function sparkline(polyline, values) {
    if (!values.length) { polyline.setAttribute("points", ""); return; }
    const max = Math.max(...values), min = Math.min(...values);
    const span = max - min || 1;
    const step = 90 / Math.max(1, MEMORY_POINTS - 1);
    const offset = 90 - step * (values.length - 1);
    polyline.setAttribute("points", values.map((v, i) =>
      (offset + i * step).toFixed(1) + "," + (18 - 16 * (v - min) / span).toFixed(1)).join(" "));
  }

  function workers(snap) {
    const seen = new Set();
    for (const w of snap.workers) {
      const key = rowKey(w);
      seen.add(key);
      const tr = row(key);
      const c = tr.children;
      text(c[0], w.lane < 0 ? "spare" : String(w.lane));
      text(c[1], w.pid === null ? "–" : String(w.pid));
      const pill = c[2].firstChild;
      text(pill, w.state); pill.className = "pill " + w.state;
      text(c[3], w.key === null ? "" : w.key);
      text(c[4], w.task ? w.task.function : "");
      text(c[5], w.task ? seconds(w.task.seconds) : "");
      const cpu = w.cpu_percent;
      const meter = c[6].firstChild.firstChild;
      meter.style.width = Math.min(100, cpu || 0).toFixed(0) + "%";
      meter.className = cpu > 90 ? "warn" : "";
      text(c[6].lastChild, cpu === null ? "–" : cpu.toFixed(0) + "%");
      text(c[7], bytes(w.private));
      let series = memory.get(key);
      if (!series) { series = []; memory.set(key, series); }
      if (w.private !== null) { series.push(w.private); if (series.length > MEMORY_POINTS) series.shift(); }
      sparkline(c[8].querySelector("polyline"), series);
      text(c[9], count(w.tasks_done));
      text(c[10], String(w.restarts));
      c[10].classList.toggle("bad", w.restarts > 0);
      const before = restartsSeen.get(key);
      if (before !== undefined && w.restarts > before) {
        tr.classList.remove("flash"); void tr.offsetWidth; tr.classList.add("flash");
      }
      restartsSeen.set(key, w.restarts);
      text(c[11], Object.entries(w.recycles).map(([k, v]) => k + " " + v).join(", "));
    }
    for (const tr of Array.from($("workers").tBodies[0].rows)) {
      if (!seen.has(tr.dataset.lane)) {
        tr.remove();
        memory.delete(tr.dataset.lane);
        restartsSeen.delete(tr.dataset.lane);
      }
    }
  }

  // ---------------------------------------------------------------- pipelines
  function pipelines(snap) {
    const section = $("pipelines");
    const list = snap.pipelines || [];
    section.hidden = list.length === 0;
    if (!list.length) return;
    const body = section.querySelector("tbody");
    const rows = [];
    for (const p of list) {
      for (const s of p.stages) {
        const fill = s.capacity ? Math.min(1, s.depth / s.capacity) : 0;
        rows.push("<tr><td>" + esc(p.name) + "</td><td>" + esc(s.name) + '</td><td class="num">' + s.workers +
          '</td><td><span class="meter"><i style="width:' + (fill * 100).toFixed(0) + '%"' + (fill > 0.9 ? ' class="warn"' : "") +
          "></i></span>" + s.depth + " / " + s.capacity + '</td><td class="num">' + s.rate.toFixed(1) +
          '</td><td><span class="meter"><i style="width:' + Math.min(100, s.busy_percent).toFixed(0) + '%"></i></span>' +
          s.busy_percent.toFixed(0) + '%</td><td class="num">' + count(s.done) + '</td><td class="num">' + count(s.errors) +
          '</td><td class="num">' + count(s.drops) + "</td></tr>");
      }
    }
    const html = rows.join("");
    if (body.innerHTML !== html) body.innerHTML = html;
  }

  function esc(s) {
    return String(s).replace(/[&<>"']/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[ch]));
  }

  // ---------------------------------------------------------------- event log
  function logEvent(e) {
    const list = $("events");
    const empty = list.querySelector(".empty");
    if (empty) empty.remove();
    const li = document.createElement("li");
    li.className = e.kind;
    const parts = [];
    if (e.lane !== undefined) parts.push("lane " + e.lane);
    if (e.pid !== undefined) parts.push("pid " + e.pid);
    if (e.function) parts.push(e.function);
    if (e.task_id !== undefined) parts.push("task " + e.task_id);
    if (e.exitcode !== undefined) parts.push(e.exitcode < 0 ? "signal " + (-e.exitcode) : "exit " + e.exitcode);
    if (e.seconds !== undefined) parts.push(seconds(e.seconds));
    if (e.reason) parts.push(e.reason);
    if (e.dropped !== undefined) parts.push(e.dropped + " events dropped: this page read too slowly");
    for (const [cls, value] of [["t", clock(e.time)], ["k", e.kind.replace(/_/g, " ")], ["d", parts.join(" · ")]]) {
      const span = document.createElement("span");
      span.className = cls; span.textContent = value;
      li.appendChild(span);
    }
    list.insertBefore(li, list.firstChild);
    while (list.children.length > MAX_EVENTS) list.lastChild.remove();
  }

  // ---------------------------------------------------------------- wiring
  function render(snap) {
    lastSnapshotAt = Date.now();
    rate.push([snap.time, snap.throughput]);
    while (rate.length > HISTORY || (rate.length && rate[0][0] < snap.time - 120)) rate.shift();
    // Charts first: they read element sizes, which is free before this frame's DOM writes
    // and forces a layout after them.
    drawRate();
    drawDurations(snap);
    drawQueues(snap);
    cards(snap);
    workers(snap);
    pipelines(snap);
  }

  function live(on) {
    const link = $("link");
    link.classList.toggle("live", on);
    text(link.lastChild, on ? "live" : "reconnecting");
  }

  async function poll() {
    try {
      const response = await fetch(url("api/snapshot"), { cache: "no-store" });
      if (response.ok) render(await response.json());
    } catch (err) {
      live(false);
    }
  }

  function startPolling() {
    if (!pollTimer) pollTimer = setInterval(poll, 500);
  }
  function stopPolling() {
    if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
  }

  function connect() {
    const source = new EventSource(url("api/events?kinds=" + EVENT_KINDS.join(",")));
    source.addEventListener("open", () => { live(true); stopPolling(); });
    source.addEventListener("snapshot", (m) => render(JSON.parse(m.data)));
    source.addEventListener("pool", (m) => logEvent(JSON.parse(m.data)));
    source.addEventListener("lost", (m) => logEvent(Object.assign({ kind: "lost", time: Date.now() / 1000 }, JSON.parse(m.data))));
    source.addEventListener("error", () => { live(false); startPolling(); });
  }

  // Charts follow the window's size.
  window.addEventListener("resize", () => { if (rate.length) drawRate(); });
  poll();
  connect();
  // If snapshots stop arriving on an open stream (e.g. a proxy buffering it), poll instead.
  setInterval(() => { if (Date.now() - lastSnapshotAt > 3000) poll(); }, 1000);
})();
