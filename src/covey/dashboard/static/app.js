// covey dashboard: a read-only view of the runs in a folder.
// Views (by URL hash): #/ the runs, #/run/ID one run live, #/compare/ID,ID,... runs overlaid.
"use strict";

const main = document.getElementById("main");
const live = document.getElementById("live");
let stream = null;
let listTimer = null;

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => (
    { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// plotly.js reads a subset of HTML (bold, links, line breaks) in trace names and titles and
// decodes &amp; &lt; &gt;: names written by runs and clients are passed through this first.
function plain(value) {
  return String(value ?? "").replace(/[&<>]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" }[c]));
}

// The API sends a NaN or infinite number (JSON has none) as one of these strings.
const NON_FINITE = { NaN: "nan", Infinity: "inf", "-Infinity": "-inf" };

function num(value, digits = 4) {
  if (typeof value === "number") return value.toFixed(digits);
  return typeof value === "string" && Object.hasOwn(NON_FINITE, value) ? NON_FINITE[value] : "–";
}

function when(value) {
  if (value === null || value === undefined || value === "") return "–";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return isNaN(date) ? esc(value) : date.toLocaleString();
}

function seconds(value) {
  const text = num(value, 3);
  return text === "–" ? text : text + " s";
}

function bytes(value) {
  if (typeof value !== "number") return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (value >= 1000 && i < units.length - 1) { value /= 1000; i += 1; }
  return value.toFixed(i ? 1 : 0) + " " + units[i];
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(url + ": HTTP " + response.status);
  return response.json();
}

// ---- metrics of a round record (as written in history.json) ----

// Metric names that meet the round's own loss: read as history.metric reads them, a metric
// named loss as loss_metric (loss_metric as loss_metric_metric), as the trackers log them.
const OWN_LOSS = /^loss(_metric)*$/;

function readAs(name, source) {
  return source !== "fit" && OWN_LOSS.test(name) ? name + "_metric" : name;
}

// As sent: a number, a NaN or infinity as a string (see NON_FINITE), or anything else.
function field(record, source, name) {
  if (name === "loss" && source !== "fit") return record[source + "_loss"];
  const stored = source !== "fit" && OWN_LOSS.test(name) ? name.slice(0, -"_metric".length) : name;
  return (record[source + "_metrics"] || {})[stored];
}

// A number to plot, else null (a NaN or infinity has no point on a chart).
function metric(record, source, name) {
  const value = field(record, source, name);
  return typeof value === "number" ? value : null;
}

const SOURCES = [["central", "test"], ["evaluate", "federated"], ["fit", "train"]];

// Every plottable series of a run: [{key, source, name, label}], loss first.
function seriesOf(rounds) {
  const seen = new Map();
  for (const r of rounds) {
    for (const [source, label] of SOURCES) {
      if (source !== "fit" && typeof r[source + "_loss"] === "number") {
        seen.set(source + ":loss", { source, name: "loss", label: label + " loss" });
      }
      for (const [stored, value] of Object.entries(r[source + "_metrics"] || {})) {
        const name = readAs(stored, source);
        if (typeof value === "number") {
          const shown = source === "fit" && name.startsWith("train_") ? name.slice(6) : name;
          seen.set(source + ":" + name, { source, name, label: label + " " + shown });
        }
      }
    }
  }
  return [...seen.entries()].map(([key, s]) => ({ key, ...s }));
}

function privacyOf(record) {
  const p = record.privacy;
  return p && typeof p === "object" ? p : null;
}

function bytesOf(record) {
  const out = {};
  for (const [key, value] of Object.entries(record)) {
    if (key.includes("bytes") && typeof value === "number") out[key] = value;
  }
  if (record.bytes && typeof record.bytes === "object") {
    for (const [key, value] of Object.entries(record.bytes)) {
      if (typeof value === "number") out["bytes " + key] = value;
    }
  }
  return out;
}

// ---- charts ----

// What a run's numbers count: "update" in an asynchronous (FedBuff) run, else "round" (the
// API's step). Cap(...) starts a title with it.
function stepOf(run) {
  return run && run.step === "update" ? "update" : "round";
}

function cap(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

const LAYOUT = {
  margin: { l: 55, r: 15, t: 34, b: 75 },
  legend: { orientation: "h", y: -0.32 },
  xaxis: { title: { text: "round" }, rangemode: "tozero" },
  paper_bgcolor: "#fff",
  plot_bgcolor: "#fff",
};

function plot(id, title, traces, extra = {}, step = "round") {
  const element = document.getElementById(id);
  if (!element) return;
  const xaxis = { ...LAYOUT.xaxis, title: { text: plain(step) } };
  Plotly.react(element, traces, { ...LAYOUT, xaxis, title: { text: plain(title), font: { size: 14 }, x: 0.01, xanchor: "left" }, ...extra },
    { displaylogo: false, responsive: true, displayModeBar: "hover" });
}

// Past this many points a line is drawn without its markers, and bars as lines: a long run's
// charts (thousands of rounds, redrawn at each new round) would take seconds to draw.
const MARKED = 500;

// How a per-round series is drawn: bars (or lines with markers) for a short run, plain lines
// for a long one.
function drawn(n, bars) {
  if (n > MARKED) return { type: "scatter", mode: "lines" };
  return bars ? { type: "bar" } : { type: "scatter", mode: "lines+markers" };
}

function line(rounds, s) {
  const x = [], y = [];
  for (const r of rounds) {
    const v = metric(r, s.source, s.name);
    if (v !== null) { x.push(r.round); y.push(v); }
  }
  return { x, y, name: plain(s.label), ...drawn(x.length, false) };
}

// How many clients a round had: a chart point counts them (n_fit, ...), a whole round lists them.
function count(r, counted, lists) {
  return typeof r[counted] === "number" ? r[counted] : lists.reduce((n, k) => n + (r[k] || []).length, 0);
}

// The charts draw run.chart: a point per round (the whole run thinned, see the API's
// view=first), then the rounds that came live.
function drawRunCharts(run) {
  const rounds = run.chart;
  const step = stepOf(run);
  const all = seriesOf(rounds);
  const losses = all.filter((s) => s.name === "loss" || s.name === "train_loss");
  const others = all.filter((s) => !(s.name === "loss" || s.name === "train_loss"));
  plot("chart-loss", "Loss", losses.map((s) => line(rounds, s)), {}, step);
  plot("chart-metrics", "Metrics", others.map((s) => line(rounds, s)), {}, step);
  const fitRounds = rounds.filter((r) => r.round > 0);
  const x = fitRounds.map((r) => r.round);
  const bars = drawn(x.length, true);
  plot("chart-clients", "Clients per " + step, [
    { x, y: fitRounds.map((r) => count(r, "n_fit", ["fit_participants"])), name: "fit", ...bars },
    { x, y: fitRounds.map((r) => count(r, "n_evaluate", ["evaluate_participants"])), name: "evaluate", ...bars },
    { x, y: fitRounds.map((r) => count(r, "n_failed", ["fit_failures", "evaluate_failures"])),
      name: "failed", ...bars, marker: { color: "#c62828" }, line: { color: "#c62828" } },
  ], { barmode: "group" }, step);
  const stages = ["wait", "fit", "evaluate", "central", "total"]  // wait: a deployed round's, for clients
    .filter((k) => fitRounds.some((r) => (r.durations || {})[k] != null));
  plot("chart-durations", cap(step) + " duration (s)", stages.map((k) => ({
    x, y: fitRounds.map((r) => (r.durations || {})[k] ?? null), name: k, ...drawn(x.length, false),
  })), {}, step);
  const moved = fitRounds.filter((r) => typeof r.bytes_sent === "number" || typeof r.bytes_received === "number");
  if (moved.length) {  // the array bytes of each round, both ways (compression shows here)
    document.getElementById("chart-bytes").style.display = "";
    plot("chart-bytes", "Bytes per " + step + " (MB)", [["bytes_sent", "sent"], ["bytes_received", "received"]].map(([k, name]) => ({
      x: moved.map((r) => r.round), y: moved.map((r) => (typeof r[k] === "number" ? r[k] / 1e6 : null)), name,
      ...drawn(moved.length, true),
    })), { barmode: "group" }, step);
  }
  const privacy = rounds.filter((r) => privacyOf(r));
  if (privacy.length) {
    document.getElementById("chart-privacy").style.display = "";
    const keys = new Set();
    for (const r of privacy) {
      for (const [k, v] of Object.entries(privacyOf(r))) if (typeof v === "number" && k.includes("epsilon")) keys.add(k);
    }
    plot("chart-privacy", "Privacy budget spent", [...keys].map((k) => ({
      x: privacy.map((r) => r.round), y: privacy.map((r) => privacyOf(r)[k]), name: plain(k),
      ...drawn(privacy.length, false),
    })), {}, step);
  }
}

// ---- one run ----

function clientName(run, cid) {
  return run.client_names[String(cid)] ?? "client " + cid;
}

function roundRow(run, r) {
  const names = (ids) => (ids || []).map((c) => esc(clientName(run, c))).join(", ");
  // Attempts given up and run again (serve(round_retries=...)), each with why it fell short.
  const retried = Array.isArray((r.aggregate_info || {}).retried) ? r.aggregate_info.retried : [];
  const failures = [...(r.fit_failures || []), ...(r.evaluate_failures || [])]
    .map((f) => `<div class="fail" title="${esc(f.traceback)}">${esc(clientName(run, f.cid))} (${esc(f.stage)}): ${esc(f.error)}</div>`)
    .concat(retried.map((said) => `<div class="fail">run again: ${esc(said)}</div>`))
    .join("");
  const d = r.durations || {};
  const b = Object.entries(bytesOf(r)).map(([k, v]) => `${esc(k)} ${bytes(v)}`).join("<br>");
  const p = privacyOf(r);
  const shown = (v) => (typeof v === "number" ? v.toPrecision(4) : typeof v === "object" ? JSON.stringify(v) : v);
  const priv = p ? Object.entries(p).map(([k, v]) => `${esc(k)}=${esc(shown(v))}`).join("<br>") : "–";
  return `<tr id="round-${r.round}" data-round="${r.round}">
    <td class="num">${r.round}</td>
    <td class="num">${num(r.central_loss)}</td><td class="num">${num(field(r, "central", "accuracy"))}</td>
    <td class="num">${num(r.evaluate_loss)}</td><td class="num">${num(field(r, "evaluate", "accuracy"))}</td>
    <td title="${names(r.fit_participants)}">${(r.fit_participants || []).length}
      <div class="small">${names(r.fit_participants)}</div></td>
    <td>${failures || "–"}</td>
    <td class="num">${seconds(d.fit)}<br><span class="small">total ${seconds(d.total)}</span></td>
    <td class="num">${b || "–"}</td><td>${priv}</td></tr>`;
}

function clientRow(c) {
  return `<tr data-client="${esc(c.name)}">
    <td><span class="dot ${c.connected ? "on" : ""}"></span>${c.connected ? "connected" : "not connected"}</td>
    <td>${esc(c.name)}</td><td class="num">${esc(c.id ?? "–")}</td><td>${when(c.last_seen)}</td>
    <td>${esc(c.last_event ?? "–")}</td>
    <td class="num">${c.fit_count ?? c.fit_rounds.length}</td><td class="small">${
      (c.fit_count > c.fit_rounds.length ? "…, " : "") + esc(c.fit_rounds.join(", "))}</td></tr>`;
}

function clientsTable(run) {
  if (run.kind !== "deployed") return "";
  const rows = run.clients.map(clientRow).join("");
  return `<h2>Clients</h2><div class="scroll"><table id="clients"><thead><tr><th>state</th><th>name</th>
    <th>id</th><th>last seen</th><th>last event</th><th>fit ${stepOf(run)}s</th><th>which</th></tr></thead>
    <tbody>${rows}</tbody></table></div>`;
}

function facts(run) {
  const step = stepOf(run);
  const best = run.best ? `${esc(run.best.name)} ${num(run.best.value)} (${step} ${run.best.round})` : "–";
  return `<div class="facts" id="facts">
    <span><b>status</b><span class="status-${esc(run.status)}" id="status">${esc(run.status)}</span></span>
    <span><b>kind</b>${esc(run.kind)}</span><span><b>strategy</b>${esc(run.strategy)}</span>
    <span><b>${step}s</b><span id="rounds-done">${esc(run.rounds_done ?? "–")}</span> / ${esc(run.rounds_planned ?? "?")}</span>
    <span><b>best</b>${best}</span><span><b>started</b>${when(run.started)}</span>
    ${run.meta && run.meta.stopped_reason ? `<span><b>stopped early</b>${esc(run.meta.stopped_reason)}</span>` : ""}
    ${run.warning ? `<span class="fail" id="warning"><b>read from run.sqlite</b>${esc(run.warning)}</span>` : ""}</div>`;
}

// The rounds table first shows the newest TABLE_ROWS rounds: a run of 20,000 rounds drew a row
// for each (300,000 elements) and took most of a minute to open. "Show earlier" fetches as many
// again (api/rounds); a live run's new rows push the oldest out, so the table keeps its length.
// The page opens with those rounds only (12 MB for 20,000 rounds sent whole).
const TABLE_ROWS = 200;
const CHART_POINTS = 2000;  // a live run's chart points are thinned past twice as many
let tableFrom = 0;  // the index among the run's rounds of the table's first row
let tableRows = TABLE_ROWS;  // how many rows the table keeps

function earlierButton(run) {
  if (tableFrom <= 0) return "";
  const more = Math.min(TABLE_ROWS, tableFrom);
  return `<button id="earlier">Show ${more} earlier ${stepOf(run)}s</button>
    <span class="small" id="not-shown">${tableFrom} earlier ${stepOf(run)}s not shown in the table</span>`;
}

function drawEarlierButton(run) {
  document.getElementById("earlier-box").innerHTML = earlierButton(run);
  const button = document.getElementById("earlier");
  if (!button) return;
  button.onclick = async () => {
    button.disabled = true;
    const from = Math.max(0, tableFrom - TABLE_ROWS);
    const url = `api/rounds?id=${encodeURIComponent(run.id)}&start=${from}&stop=${tableFrom}`;
    let page;
    try {
      page = await getJSON(url);
    } catch (error) {
      button.disabled = false;
      main.insertAdjacentHTML("afterbegin", `<p class="fail stream-error">${esc(error.message)}</p>`);
      return;
    }
    if (page.start !== from || page.stop !== tableFrom) { button.disabled = false; return; }  // redrawn since
    const html = page.rounds.map((r) => roundRow(run, r)).join("");
    document.querySelector("#rounds tbody").insertAdjacentHTML("afterbegin", html);
    tableRows += tableFrom - from;
    tableFrom = from;
    drawEarlierButton(run);
  };
}

// Add the rows of new rounds to the table, dropping its oldest past the rows it keeps.
function appendRows(run, rounds) {
  const body = document.querySelector("#rounds tbody");
  for (const r of rounds) body.insertAdjacentHTML("beforeend", roundRow(run, r));
  while (body.rows.length > tableRows) { body.rows[0].remove(); tableFrom += 1; }
  drawEarlierButton(run);
}

// A live run's charts are redrawn at most once a second, and for at most a fifth of the time:
// a fast run of thousands of rounds sent rounds faster than the charts were redrawn, and the
// page stopped answering. The first change after a quiet second is drawn at once.
let chartTimer = null;
let chartsDrawnAt = -Infinity;
let chartsCost = 0;

function stopCharts() {
  if (chartTimer) { clearTimeout(chartTimer); chartTimer = null; }
}

function drawChartsNow(run) {
  stopCharts();
  const start = performance.now();
  drawRunCharts(run);
  chartsDrawnAt = performance.now();
  chartsCost = chartsDrawnAt - start;
}

function drawChartsSoon(run) {
  if (chartTimer) return;  // it draws the run as it is then, new rounds included
  const wait = chartsDrawnAt + Math.max(1000, 4 * chartsCost) - performance.now();
  if (wait <= 0) { drawChartsNow(run); return; }
  chartTimer = setTimeout(() => drawChartsNow(run), wait);
}

function renderRun(run) {
  tableRows = TABLE_ROWS;
  tableFrom = run.rounds_from;
  main.innerHTML = `<h1>Run <code>${esc(run.id)}</code></h1><div id="facts-box">${facts(run)}</div>
    <div class="charts"><div class="chart" id="chart-loss"></div><div class="chart" id="chart-metrics"></div>
    <div class="chart" id="chart-clients"></div><div class="chart" id="chart-durations"></div>
    <div class="chart" id="chart-bytes" style="display: none"></div>
    <div class="chart" id="chart-privacy" style="display: none"></div></div>
    <h2>${cap(stepOf(run))}s</h2><p id="earlier-box"></p><div class="scroll"><table id="rounds"><thead><tr><th>${stepOf(run)}</th><th>test loss</th>
    <th>test acc.</th><th>fed. loss</th><th>fed. acc.</th><th>clients</th><th>failures (reason)</th>
    <th>duration</th><th>bytes</th><th>privacy</th></tr></thead><tbody>
    ${run.rounds.map((r) => roundRow(run, r)).join("")}</tbody></table></div>
    <div id="clients-box">${clientsTable(run)}</div>`;
  drawEarlierButton(run);
  drawChartsNow(run);
}

// The clients' table after an update: only the rows that changed are drawn again, by
// their place in it (rows); the whole table when it came whole (rows null: a
// client came or went) or when the page's table does not match the run's clients.
function updateClients(run, rows) {
  const box = document.getElementById("clients-box");
  const body = box.querySelector("#clients tbody");
  const header = box.querySelector("#clients thead th:nth-child(6)");
  const same = body && header && header.textContent === `fit ${stepOf(run)}s`
    && body.rows.length === run.clients.length
    && rows !== null && rows.every(([i]) => Number.isInteger(i) && i >= 0 && i < body.rows.length);
  if (run.kind !== "deployed" || !same) {
    box.innerHTML = clientsTable(run);
    return;
  }
  for (const [i] of rows) {
    const row = body.rows[i];
    const drawn = document.createElement("tbody");
    drawn.innerHTML = clientRow(run.clients[i]);
    row.replaceWith(drawn.firstElementChild);
  }
}

function showRun(id) {
  let run = null;
  main.innerHTML = "<p>Loading…</p>";
  stream = new EventSource("api/stream?id=" + encodeURIComponent(id));
  // A run that cannot be read says so once, above the last rounds read; the message goes
  // as soon as the run reads again (repaired, or written anew), changed or not.
  const clearError = () => { for (const p of main.querySelectorAll(":scope > p.stream-error")) p.remove(); };
  stream.addEventListener("run", (e) => { run = JSON.parse(e.data); renderRun(run); });
  stream.addEventListener("update", (e) => {
    clearError();
    const change = JSON.parse(e.data);
    Object.assign(run, change.summary, { meta: change.meta });
    // An update holds the clients' names only if they changed, and of the clients the whole
    // table (one came or went) or the rows that changed, by their place in it.
    if (change.client_names) run.client_names = change.client_names;
    if (change.clients) run.clients = change.clients;
    const changedRows = change.client_rows || [];
    for (const [i, row] of changedRows) run.clients[i] = row;
    run.rounds.push(...change.new_rounds);
    run.rounds.splice(0, Math.max(0, run.rounds.length - TABLE_ROWS));  // the table has its rows
    run.chart.push(...change.new_rounds);
    if (run.chart.length > 2 * CHART_POINTS) {  // every other point, the newest kept
      run.chart = run.chart.filter((_, i) => i % 2 === 0 || i === run.chart.length - 1);
    }
    document.getElementById("facts-box").innerHTML = facts(run);
    appendRows(run, change.new_rounds);
    updateClients(run, change.clients ? null : changedRows);
    drawChartsSoon(run);
  });
  stream.addEventListener("error", (e) => {
    if (!e.data) return;
    clearError();
    main.insertAdjacentHTML("afterbegin", `<p class="fail stream-error">${esc(JSON.parse(e.data).error)}</p>`);
  });
  stream.addEventListener("ok", clearError);
  stream.onopen = () => { live.textContent = "● live"; };
}

// ---- the list of runs ----

async function showList() {
  const data = await getJSON("api/runs");
  // What the runs' numbers count (an unreadable run's is unknown): one word, or both and per row.
  const steps = [...new Set(data.runs.filter((r) => r.step).map(stepOf))].sort().reverse();
  const mixed = steps.length > 1;
  const rows = data.runs.map((r) => `<tr data-run-id="${esc(r.id)}">
    <td><input type="checkbox" value="${esc(r.id)}"></td>
    <td><a href="#/run/${encodeURIComponent(r.id)}">${esc(r.id)}</a></td>
    <td class="status-${esc(r.status)}" title="${esc(r.error ?? r.warning ?? r.note ?? "")}">${esc(r.status)}
      ${r.warning ? `<div class="small fail">history.json damaged: read from run.sqlite</div>` : ""}</td>
    <td>${esc(r.kind ?? "–")}</td><td>${esc(r.strategy ?? "–")}</td>
    <td class="num">${esc(r.rounds_done ?? "–")} / ${esc(r.rounds_planned ?? "?")}${
      mixed && r.step ? ` <span class="small">${stepOf(r)}s</span>` : ""}</td>
    <td>${r.best ? esc(r.best.name) + " " + num(r.best.value) : "–"}</td>
    <td>${when(r.started)}</td></tr>`).join("");
  main.innerHTML = `<h1>Runs in <code>${esc(data.root)}</code></h1>
    <table id="runs"><thead><tr><th></th><th>run</th><th>status</th><th>kind</th><th>strategy</th>
    <th>${steps.map((step) => step + "s").join(" / ") || "rounds"}</th><th>best</th><th>started</th></tr></thead><tbody>${rows}</tbody></table>
    <p><button id="compare">Compare selected runs</button></p>`;
  document.getElementById("compare").onclick = () => {
    const ids = [...document.querySelectorAll("#runs input:checked")].map((i) => encodeURIComponent(i.value));
    if (ids.length) location.hash = "#/compare/" + ids.join(",");
  };
}

// ---- runs overlaid ----

async function showCompare(ids) {
  const runs = await Promise.all(ids.map((id) => getJSON("api/run?view=first&id=" + encodeURIComponent(id))));
  const series = new Map();
  for (const run of runs) for (const s of seriesOf(run.chart)) series.set(s.key, s);
  const options = [...series.values()].map((s) => `<option value="${esc(s.key)}">${esc(s.label)}</option>`).join("");
  main.innerHTML = `<h1>Compare ${runs.length} runs</h1><p>metric <select id="compare-metric">${options}</select></p>
    <div class="chart" id="chart-compare" style="height: 420px"></div>`;
  const select = document.getElementById("compare-metric");
  const preferred = ["central:accuracy", "evaluate:accuracy", "central:loss"].find((k) => series.has(k));
  if (preferred) select.value = preferred;
  const draw = () => {
    const s = series.get(select.value);
    if (!s) return;
    // Runs of one kind share their unit; synchronous and asynchronous ones overlaid count both.
    const steps = [...new Set(runs.map(stepOf))].sort().reverse();
    plot("chart-compare", s.label, runs.map((run) => ({ ...line(run.chart, s), name: plain(run.id) })), {},
      steps.join(" / "));
  };
  select.onchange = draw;
  draw();
}

// ---- routing ----

async function route() {
  if (stream) { stream.close(); stream = null; }
  if (listTimer) { clearInterval(listTimer); listTimer = null; }
  stopCharts();
  live.textContent = "";
  const hash = location.hash || "#/";
  try {
    if (hash.startsWith("#/run/")) {
      showRun(decodeURIComponent(hash.slice(6)));
    } else if (hash.startsWith("#/compare/")) {
      await showCompare(hash.slice(10).split(",").filter(Boolean).map(decodeURIComponent));
    } else {
      await showList();
      listTimer = setInterval(() => { if (!document.querySelector("#runs input:checked")) showList(); }, 5000);
    }
  } catch (error) {
    main.innerHTML = `<p class="fail">${esc(error.message)}</p>`;
  }
}

window.addEventListener("hashchange", route);
route();
