// oaigate's spend page: reads the gateway's JSON (/oaigate/...), draws its own SVG, polls for changes.
// The key (when the gateway has [[keys]]) lives in sessionStorage only and goes out as a bearer token.
"use strict";

const KEY = "oaigate.key";
const PALETTE = ["#2563eb", "#e8590c", "#2f9e44", "#ae3ec9", "#0c8599", "#e03131", "#f08c00", "#5c940d"];
const OTHER_COLOR = "#868e96";
const POLL_MS = 1000, REFRESH_MS = 15000, SERIES = 6;
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
const state = { range: "7d", split: "", metric: "cost", before: null, history: [], written: undefined,
                refreshedAt: 0, busy: false, seen: null, status: null, started: false, expanded: new Set() };

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value; else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

async function api(path, params) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
  }
  const key = sessionStorage.getItem(KEY);
  const response = await fetch(url, { headers: key ? { Authorization: "Bearer " + key } : {},
                                       cache: "no-store", credentials: "omit" });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new HttpError(response.status, (body && body.error && body.error.message) || response.statusText);
  return body;
}

// --- formatting -----------------------------------------------------------------------------------

function usd(micros) {
  if (micros === null || micros === undefined) return "unknown";
  const dollars = micros / 1e6;
  if (dollars === 0) return "$0";
  if (Math.abs(dollars) >= 100) return "$" + dollars.toLocaleString("en-US", { maximumFractionDigits: 0 });
  if (Math.abs(dollars) >= 1) return "$" + dollars.toFixed(2);
  if (Math.abs(dollars) >= 0.01) return "$" + dollars.toFixed(4);
  return "$" + dollars.toFixed(6);
}
const count = (n) => (n || 0).toLocaleString("en-US");
function short(n) {
  if (n >= 1e9) return (n / 1e9).toFixed(1) + "B";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (n >= 1e4) return (n / 1e3).toFixed(0) + "k";
  return count(n);
}
function duration(seconds) {
  const s = Math.floor(seconds), d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return d ? `${d} d ${h} h` : h ? `${h} h ${m} min` : m ? `${m} min` : `${s} s`;
}
const ms = (v) => (v === null || v === undefined ? "—" : v >= 1000 ? (v / 1000).toFixed(2) + " s" : Math.round(v) + " ms");
const utc = (iso) => (iso ? iso.replace("T", " ").replace(/\.\d+Z$|Z$/, "") : "—");

function metricOf(row) {
  if (state.metric === "requests") return row.requests;
  if (state.metric === "tokens") return row.prompt_tokens + row.completion_tokens;
  return row.cost_microusd || 0;
}
function metricText(value) {
  return state.metric === "cost" ? usd(value) : short(value);
}

// --- the range ------------------------------------------------------------------------------------

function rangeParams() {
  const params = state.range === "all" ? {} : { since: state.range };
  return { ...params, by: state.range === "24h" ? "hour" : "day" };
}
const RANGE_WORDS = { "24h": "24 h", "7d": "7 days", "30d": "30 days" };

// --- drawing ----------------------------------------------------------------------------------------

function change(now, before, lowerIsBetter) {
  if (before === null || before === undefined) return null;
  if (!before) return now ? "new this period" : "no change";
  const pct = ((now - before) / before) * 100;
  const sign = pct > 0 ? "+" : "";
  return `${sign}${pct.toFixed(Math.abs(pct) < 10 ? 1 : 0)}% vs previous ${RANGE_WORDS[state.range]}`;
}

function drawTotals(spend) {
  const t = spend.total, p = spend.previous;
  const rate = (row) => (row && row.requests ? row.errors / row.requests : 0);
  const cards = [
    { id: "cost", label: "Cost", value: usd(t.cost_microusd), data: t.cost_microusd,
      change: p && change(t.cost_microusd || 0, p.cost_microusd || 0),
      notes: [t.unpriced_requests ? `+ ${count(t.unpriced_requests)} unpriced (cost unknown)` : null,
              t.simulated_microusd ? `simulated, not spent: ${usd(t.simulated_microusd)}` : null] },
    { id: "requests", label: "Requests", value: count(t.requests), data: t.requests, change: p && change(t.requests, p.requests) },
    { id: "tokens-in", label: "Tokens in", value: short(t.prompt_tokens), data: t.prompt_tokens,
      change: p && change(t.prompt_tokens, p.prompt_tokens) },
    { id: "tokens-out", label: "Tokens out", value: short(t.completion_tokens), data: t.completion_tokens,
      change: p && change(t.completion_tokens, p.completion_tokens) },
    { id: "errors", label: "Error rate", value: (rate(t) * 100).toFixed(1) + "%", data: t.errors,
      change: p && p.requests ? `${((rate(t) - rate(p)) * 100 >= 0 ? "+" : "")}${((rate(t) - rate(p)) * 100).toFixed(1)} points vs previous ${RANGE_WORDS[state.range]}` : null },
  ];
  $("totals").replaceChildren(...cards.map((c) => el("div", { class: "total", id: "total-" + c.id, "data-value": c.data ?? "unknown" },
    el("div", { class: "label" }, c.label),
    el("div", { class: "value", title: c.id === "cost" && t.cost_usd ? "$" + t.cost_usd : null }, c.value),
    c.change ? el("div", { class: "change" }, c.change) : null,
    ...(c.notes || []).filter(Boolean).map((n) => el("div", { class: "note" }, n)))));
  $("window").dataset.since = spend.since || "";
  $("window").dataset.until = spend.until;
  $("window").textContent = `${spend.since ? utc(spend.since) : "Since the first request"} → ${utc(spend.until)} UTC` +
    (state.range === "all" ? "" : `; compared with the ${RANGE_WORDS[state.range]} before`);
}

function buckets(spend) {
  const hourly = spend.by === "hour", step = hourly ? 3600e3 : 86400e3;
  const floor = (ms) => ms - (ms % step);
  const first = spend.rows.length ? Date.parse(spend.rows[0][spend.by]) : null;
  let start = spend.since ? floor(Date.parse(spend.since)) : first;
  const end = Date.parse(spend.until);
  if (start === null) start = floor(end);
  const out = [];
  for (let t = start; t < end && out.length < 2000; t += step) out.push(new Date(t).toISOString().replace(".000Z", "Z"));
  return out;
}

function nice(value) {  // the axis top: 1, 2, 2.5 or 5 times a power of ten, at or above value
  if (value <= 0) return 0;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10].map((m) => m * power).find((top) => top >= value);
}

function drawChart(spend) {
  const names = buckets(spend);
  const series = new Map();  // name -> total
  for (const row of spend.rows) {
    const s = state.split ? (row.split ?? "(none)") : "all";
    series.set(s, (series.get(s) || 0) + metricOf(row));
  }
  const ranked = [...series.entries()].sort((a, b) => b[1] - a[1]).map(([s]) => s);
  const shown = ranked.slice(0, SERIES), other = ranked.length > SERIES;
  const color = (s) => (shown.includes(s) ? (state.split ? PALETTE[shown.indexOf(s) % PALETTE.length] : PALETTE[0]) : OTHER_COLOR);
  const seriesOf = (s) => (shown.includes(s) ? s : "other");
  const values = new Map(names.map((b) => [b, new Map()]));
  const exact = new Map(names.map((b) => [b, { cost: 0, requests: 0, unknown: 0 }]));
  for (const row of spend.rows) {
    const b = row[spend.by];
    if (!values.has(b)) { values.set(b, new Map()); exact.set(b, { cost: 0, requests: 0, unknown: 0 }); names.push(b); }
    const s = seriesOf(state.split ? (row.split ?? "(none)") : "all");
    values.get(b).set(s, (values.get(b).get(s) || 0) + metricOf(row));
    const e = exact.get(b);
    e.cost += row.cost_microusd || 0; e.requests += row.requests; e.unknown += row.unpriced_requests;
  }
  const order = [...shown, ...(other ? ["other"] : [])];
  const totals = names.map((b) => order.reduce((sum, s) => sum + (values.get(b).get(s) || 0), 0));
  const max = nice(Math.max(...totals, 0));
  const W = 900, H = 260, L = 64, R = 8, T = 10, B = 28;
  const plotW = W - L - R, plotH = H - T - B, slot = plotW / Math.max(names.length, 1), barW = Math.max(slot * 0.75, 1);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "chart-desc",
                             "data-metric": state.metric, "data-by": spend.by });
  chart.append(svg("desc", { id: "chart-desc" }, `${state.metric} per ${spend.by}, ${names.length} ${spend.by}s`));
  const axis = svg("g", { class: "axis" });
  const ticks = 4;
  for (let i = 0; i <= ticks; i++) {
    const v = (max * i) / ticks, y = T + plotH - (plotH * i) / ticks;
    axis.append(svg("line", { x1: L, x2: W - R, y1: y, y2: y, class: "grid-line" }));
    axis.append(svg("text", { x: L - 6, y: y + 4, "text-anchor": "end" }, max ? metricText(Math.round(v)) : "0"));
  }
  const every = Math.max(1, Math.ceil(names.length / 8));
  names.forEach((b, i) => {
    if (i % every) return;
    const d = new Date(b);
    const label = spend.by === "hour" ? `${String(d.getUTCHours()).padStart(2, "0")}:00`
      : d.toLocaleDateString("en-US", { month: "short", day: "numeric", timeZone: "UTC" });
    axis.append(svg("text", { x: L + slot * i + slot / 2, y: H - 8, "text-anchor": "middle" }, label));
  });
  chart.append(axis);
  const bars = svg("g", { class: "bars" });
  names.forEach((b, i) => {
    const e = exact.get(b);
    const group = svg("g", { class: "point", "data-bucket": b, "data-cost-micro": e.cost, "data-requests": e.requests,
                             "data-unpriced": e.unknown, tabindex: 0 });
    group.append(svg("title", {}, `${utc(b)} UTC: ${usd(e.cost)}${e.unknown ? ` + ${e.unknown} unpriced` : ""}, ${count(e.requests)} requests`));
    let y = T + plotH;
    for (const s of order) {
      const v = values.get(b).get(s) || 0;
      if (!v || !max) continue;
      const h = (v / max) * plotH;
      y -= h;
      group.append(svg("rect", { x: L + slot * i + (slot - barW) / 2, y, width: barW, height: Math.max(h, 0.5),
                                 fill: color(s === "other" ? null : s), "data-series": s, "data-value": v }));
    }
    bars.append(group);
  });
  chart.append(bars);
  if (!spend.rows.length) chart.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "No requests in this range"));
  $("chart").replaceChildren(chart);
  $("legend").replaceChildren(...(state.split ? order.map((s) => el("li", {},
    el("span", { class: "swatch", style: null, "data-color": color(s === "other" ? null : s) }), s)) : []));
  for (const swatch of $("legend").querySelectorAll(".swatch")) swatch.style.background = swatch.dataset.color;
}

function drawBars(target, rows, field) {
  const max = Math.max(...rows.map(metricOf), 0);
  $(target).replaceChildren(...(rows.length ? rows.slice(0, 12).map((row) => {
    const fill = el("div", { class: "fill" });
    fill.style.width = (max ? (metricOf(row) / max) * 100 : 0).toFixed(1) + "%";
    const value = state.metric === "cost"
      ? usd(row.cost_microusd) + (row.unpriced_requests && row.cost_microusd !== null ? ` + ${row.unpriced_requests} unpriced` : "")
      : metricText(metricOf(row));
    return el("li", { "data-name": row[field] ?? "", "data-cost-micro": row.cost_microusd ?? "unknown" },
      el("span", { class: "name", title: row[field] ?? "(none)" }, row[field] ?? "(none)"),
      el("span", { class: "amount" }, value, el("span", { class: "muted" }, ` · ${count(row.requests)} req`)),
      el("div", { class: "track", "aria-hidden": "true" }, fill));
  }) : [el("li", { class: "muted" }, "Nothing in this range")]));
}

function meter(cls, title, state_, share, lines) {
  const fill = el("div", { class: "fill" });
  fill.style.width = Math.min(100, Math.max(0, share * 100)).toFixed(1) + "%";
  return el("div", { class: "meter " + cls, "data-state": cls || "ok" },
    el("div", { class: "head" }, el("strong", {}, title), el("span", { class: "state" }, state_)),
    el("div", { class: "track", role: "meter", "aria-valuemin": 0, "aria-valuemax": 100,
                "aria-valuenow": Math.round(Math.min(share, 1) * 100), "aria-label": title }, fill),
    ...lines.map((l) => el("div", { class: "detail" }, l)));
}

function drawBudgets(limits) {
  const list = limits.budgets || [];
  $("budgets").replaceChildren(...(list.length ? list.map((b) => {
    const byUsd = b.limit_usd !== null;
    const limit = byUsd ? Number(b.limit_usd) : b.limit_tokens;
    const used = byUsd ? Number(b.spent_usd) + Number(b.reserved_usd) : b.spent_tokens + b.reserved_tokens;
    const share = limit ? used / limit : 1;
    const cls = share >= 1 ? "over" : share >= limits.soft_threshold || b.soft_threshold_crossed ? "warn" : "";
    const money = (v) => usd(Math.round(Number(v) * 1e6));
    const head = byUsd ? `${money(b.spent_usd)} of ${money(b.limit_usd)}` : `${count(b.spent_tokens)} of ${count(b.limit_tokens)} tokens`;
    return meter(cls, `${b.scope} · ${b.period}`, cls === "over" ? "exhausted" : cls === "warn" ? `${Math.round(share * 100)}% used` : `${Math.round(share * 100)}%`, share,
      [head + (byUsd ? `, reserved ${money(b.reserved_usd)}, remaining ${money(b.remaining_usd)}` : ""),
       b.resets_at ? `resets ${utc(b.resets_at)} UTC` : "never resets (total)"]);
  }) : [el("p", { class: "muted" }, "No budgets apply.")]));
}

function drawLimits(limits) {
  const list = limits.data || [];
  $("limits").replaceChildren(...(list.length ? list.flatMap((r) => {
    const parts = [];
    const title = r.scope + (r.model && !r.scope.includes("model:") ? ` · ${r.model}` : "");
    if (r.rpm) parts.push(meter(r.requests_used >= r.rpm ? "over" : r.requests_used >= r.rpm * limits.soft_threshold ? "warn" : "",
      `${title} · requests/min`, `${count(r.requests_used)} / ${count(r.rpm)}`, r.requests_used / r.rpm, []));
    if (r.tpm) parts.push(meter(r.tokens_used >= r.tpm ? "over" : r.tokens_used >= r.tpm * limits.soft_threshold ? "warn" : "",
      `${title} · tokens/min`, `${count(r.tokens_used)} / ${count(r.tpm)}`, r.tokens_used / r.tpm, []));
    if (r.concurrent) parts.push(meter(r.in_flight >= r.concurrent ? "over" : "", `${title} · in flight`,
      `${r.in_flight} / ${r.concurrent}`, r.in_flight / r.concurrent, []));
    return parts;
  }) : [el("p", { class: "muted" }, "No rate limits apply.")]));
}

const DETAIL_SKIP = new Set(["cost_usd"]);
function detailRow(row, span) {
  const dl = el("dl", {});
  for (const [name, value] of Object.entries(row)) {
    if (DETAIL_SKIP.has(name)) continue;
    let shown = value === null || value === undefined ? "—" : String(value);
    if (name === "cost_microusd") shown = `${costText(row)} (${value === null ? "unknown" : value + " µ$"})`;
    dl.append(el("dt", {}, name), el("dd", {}, shown));
  }
  return el("tr", { class: "detail" }, el("td", { colspan: span }, dl));
}

function costText(row) {
  if (row.cost_usd === null || row.cost_usd === undefined) return "unknown";
  const text = usd(Math.round(Number(row.cost_usd) * 1e6));
  return row.simulated ? `${text} (simulated)` : text;
}

function drawRequests(page) {
  const body = $("rows");
  const fresh = state.seen;
  state.seen = new Set(page.data.map((r) => r.id));
  const span = 8;
  body.replaceChildren(...(page.data.length ? page.data.map((row) => {
    const bad = row.status < 200 || row.status >= 400;
    const tr = el("tr", { class: "row" + (fresh && !fresh.has(row.id) && !state.before ? " fresh" : ""), tabindex: 0,
                          "aria-expanded": "false", "data-id": row.id, "data-key": row.key_name ?? "",
                          "data-status": row.status, "data-model": row.model_served ?? row.model_requested ?? "",
                          "data-endpoint": row.endpoint },
      el("td", {}, utc(row.started_at)), el("td", {}, row.key_name ?? "—"),
      el("td", {}, row.model_served ?? row.model_requested ?? "—"), el("td", {}, row.endpoint),
      el("td", { class: bad ? "status-bad" : null }, row.status === 0 ? "cut" : row.status, row.error_type ? ` ${row.error_type}` : ""),
      el("td", { class: "num" }, row.prompt_tokens === null ? "—" : `${count(row.prompt_tokens)} / ${count(row.completion_tokens)}`),
      el("td", { class: "num", "data-cost": row.cost_usd ?? "unknown" }, costText(row)),
      el("td", { class: "num" }, ms(row.latency_ms)));
    const toggle = () => {
      const open = tr.getAttribute("aria-expanded") === "true";
      if (open) { tr.nextSibling.remove(); state.expanded.delete(row.id); }
      else { tr.after(detailRow(row, span)); state.expanded.add(row.id); }
      tr.setAttribute("aria-expanded", String(!open));
    };
    if (state.expanded.has(row.id)) queueMicrotask(toggle);  // an update keeps open rows open
    tr.addEventListener("click", toggle);
    tr.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggle(); } });
    return tr;
  }) : [el("tr", {}, el("td", { colspan: span, class: "muted" }, "No requests match."))]));
  $("older").disabled = !page.has_more;
  $("newer").disabled = !state.before;
  $("older").dataset.cursor = page.next_before || "";
  $("page-info").textContent = state.history.length ? `page ${state.history.length + 1}` : "";
}

function fillSelect(id, names) {
  const select = $(id), current = select.value;
  const wanted = [...new Set([...(current ? [current] : []), ...names.filter((n) => n !== null && n !== undefined)])];
  const existing = [...select.options].slice(1).map((o) => o.value);
  if (existing.join("\u0000") === wanted.join("\u0000")) return;
  select.replaceChildren(el("option", { value: "" }, "any"), ...wanted.map((n) => el("option", { value: n }, n)));
  select.value = current;
}

function drawHealth(status) {
  const ledger = status.ledger;
  const items = [
    ["Upstreams", status.upstreams.join(", ")],
    ["Fixture mode", `${status.fixtures.mode} (cassette ${status.fixtures.cassette})`],
    ["Ledger rows written", ledger ? count(ledger.written) : "ledger off"],
    ["Ledger backlog", ledger ? count(ledger.backlog) : "—"],
    ["Ledger rows dropped", ledger ? count(ledger.dropped) + (ledger.write_failures ? `, ${ledger.write_failures} failed writes` : "") : "—"],
    ["Uptime", duration(status.uptime_s)],
    ["Version", status.version],
    ["Viewing as", status.key ? `${status.key}${status.admin ? " (admin: every key)" : " (own requests only)"}` : "everyone (no [[keys]])"],
  ];
  $("health").replaceChildren(...items.map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", { "data-name": k }, v))));
  const who = $("who");
  who.hidden = false;
  who.textContent = status.key ? `${status.key}${status.admin ? " · admin" : ""}` : "open gateway";
  $("forget").hidden = !sessionStorage.getItem(KEY);
}

// --- loading ----------------------------------------------------------------------------------------

function filters() {
  return { key: $("f-key").value, model: $("f-model").value, status: $("f-status").value, endpoint: $("f-endpoint").value };
}

async function loadRequests() {
  const page = await api("/oaigate/requests", { ...filters(), limit: 25, before: state.before });
  drawRequests(page);
}

async function refresh() {
  const range = rangeParams();
  const base = { since: range.since };
  let [spend, byModel, byKey, byEndpoint, limits] = await Promise.all([
    api("/oaigate/spend", { ...range, split: state.split }),
    api("/oaigate/spend", { ...base, by: "model" }), api("/oaigate/spend", { ...base, by: "key" }),
    api("/oaigate/spend", { ...base, by: "endpoint" }), api("/oaigate/limits"),
  ]);
  if (state.range === "all" && spend.rows.length && Date.parse(spend.rows[0].day) >= Date.parse(spend.until) - 2 * 86400e3) {
    spend = await api("/oaigate/spend", { by: "hour", split: state.split });  // two days or less: by hour
  }
  drawTotals(spend);
  drawChart(spend);
  drawBars("by-model", byModel.rows, "model");
  drawBars("by-key", byKey.rows, "key");
  drawBars("by-endpoint", byEndpoint.rows, "endpoint");
  drawBudgets(limits);
  drawLimits(limits);
  fillSelect("f-key", byKey.rows.map((r) => r.key));
  fillSelect("f-model", byModel.rows.map((r) => r.model));
  fillSelect("f-endpoint", byEndpoint.rows.map((r) => r.endpoint));
  await loadRequests();
  document.body.dataset.loaded = String((Number(document.body.dataset.loaded) || 0) + 1);
  $("updated").textContent = "Updated " + new Date().toLocaleTimeString();
}

function showProblem(error) {
  if (error instanceof HttpError && error.status === 401) return showLogin(error.message);
  const p = $("problem");
  p.hidden = false;
  p.textContent = error instanceof HttpError ? `The gateway answered ${error.status}: ${error.message}` : `Cannot reach the gateway (${error.message}).`;
}

function showLogin(message) {
  sessionStorage.removeItem(KEY);
  state.started = false;
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("key-input").value = "";
  $("key-input").focus();
}

async function tick(force) {
  if (state.busy) return;
  state.busy = true;
  try {
    const status = await api("/oaigate/status");
    if (status.key_required) { if (state.started || $("login").hidden) showLogin(""); return; }
    if (!state.started) {
      state.started = true;
      $("login").hidden = true;
      $("main").hidden = false;
    }
    drawHealth(status);
    const written = status.ledger ? status.ledger.written : null;
    if (force || written !== state.written || Date.now() - state.refreshedAt > REFRESH_MS) {
      await refresh();
      state.written = written;
      state.refreshedAt = Date.now();
    }
    $("problem").hidden = true;
  } catch (error) {
    showProblem(error);
  } finally {
    state.busy = false;
  }
}

async function rerun(resetPage) {
  if (resetPage) { state.before = null; state.history = []; state.seen = null; }
  while (state.busy) await new Promise((r) => setTimeout(r, 50));
  await tick(true);
}

function start() {
  for (const radio of document.querySelectorAll("input[name=range]")) {
    radio.addEventListener("change", () => { state.range = radio.value; rerun(false); });
  }
  $("split").addEventListener("change", () => { state.split = $("split").value; rerun(false); });
  $("metric").addEventListener("change", () => { state.metric = $("metric").value; rerun(false); });
  for (const id of ["f-key", "f-model", "f-status", "f-endpoint"]) $(id).addEventListener("change", () => rerun(true));
  $("older").addEventListener("click", () => { state.history.push(state.before); state.before = $("older").dataset.cursor || null; rerun(false); });
  $("newer").addEventListener("click", () => { state.before = null; state.history = []; rerun(false); });
  $("forget").addEventListener("click", () => { showLogin(""); });
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("key-input").value.trim());
    $("key-input").value = "";
    rerun(true);
  });
  tick(true);
  setInterval(() => tick(false), POLL_MS);
}

document.addEventListener("DOMContentLoaded", start);
