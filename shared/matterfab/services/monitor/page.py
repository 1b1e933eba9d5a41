"""The status page: one self-contained HTML document (no external scripts, styles or fonts).

The script fetches `/api/status` every 2 s and renders every order's progress (percentage and
bar), every line's stations (live, stopped or departed, last seen, what each flashed in the
last minutes) and every consumer group's lag. Everything from the API is inserted with
`textContent`, never as HTML: a rejected order's id is free text from whoever submitted it.
"""

from __future__ import annotations

REFRESH_MS = 2000

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>matterfab status</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d2330;
         background: #f6f7f9; }
  h1 { font-size: 1.4rem; margin: 0 0 .2rem; }
  h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
  #updated { color: #667; font-size: .9rem; }
  #error { color: #b00020; font-weight: 600; }
  table { border-collapse: collapse; width: 100%; background: #fff; }
  th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #e3e6eb; }
  th { background: #eceff3; font-weight: 600; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .bar { position: relative; width: 14rem; height: .9rem; background: #e3e6eb;
         border-radius: .45rem; overflow: hidden; display: inline-block; vertical-align: middle; }
  .fill { height: 100%; background: #2f7de1; }
  .completed .fill { background: #2e9d57; }
  .failed .fill, .rejected .fill { background: #c9372c; }
  .pct { display: inline-block; width: 3.5rem; text-align: right; margin-left: .5rem;
         font-variant-numeric: tabular-nums; }
  .status { font-weight: 600; }
  .lag-ok { color: #2e9d57; }
  .lag-behind { color: #c77700; font-weight: 600; }
  .empty { color: #667; font-style: italic; }
  .why { color: #c9372c; font-weight: 400; font-size: .85rem; }
  .st-live { color: #2e9d57; font-weight: 600; }
  .st-stopped { color: #667; font-weight: 600; }
  .st-departed, .st-unknown { color: #c9372c; font-weight: 600; }
</style>
</head>
<body>
<h1>matterfab status</h1>
<div id="updated">loading…</div>
<div id="error"></div>
<h2>Orders</h2>
<table id="orders">
  <thead><tr><th>order</th><th>status</th><th>images ready</th><th>progress</th>
    <th>flashed</th><th>bound</th><th>scrapped</th><th>revoked</th><th>updated</th></tr></thead>
  <tbody></tbody>
</table>
<h2>Stations</h2>
<div id="stations-error" class="why"></div>
<table id="stations">
  <thead><tr><th>line</th><th>station</th><th>status</th><th>in group</th><th>last seen</th>
    <th>flashed (5 min)</th><th>failed (5 min)</th><th>latest</th></tr></thead>
  <tbody></tbody>
</table>
<h2>Consumer groups</h2>
<table id="groups">
  <thead><tr><th>group</th><th>topic</th><th>partitions</th><th>committed</th><th>end</th>
    <th>lag</th></tr></thead>
  <tbody></tbody>
</table>
<script>
"use strict";
function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}
function emptyRow(body, columns, text) {
  const tr = body.insertRow();
  const td = cell(tr, text, "empty");
  td.colSpan = columns;
}
function renderOrders(orders) {
  const body = document.querySelector("#orders tbody");
  body.replaceChildren();
  if (!orders.length) { emptyRow(body, 9, "no orders yet"); return; }
  for (const o of orders) {
    const tr = body.insertRow();
    tr.className = "order " + o.status;
    tr.dataset.orderId = o.order_id;
    cell(tr, o.order_id);
    const st = cell(tr, o.status, "status");
    if (o.errors.length) {
      const why = document.createElement("div");
      why.className = "why";
      why.textContent = o.errors.map((e) => e.field + ": " + e.message).join("; ");
      st.appendChild(why);
    }
    cell(tr, o.ready + " / " + o.quantity, "num");
    const td = cell(tr, "");
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = o.percent + "%";
    bar.appendChild(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = o.percent + "%";
    td.append(bar, pct);
    cell(tr, String(o.flashed), "num");
    cell(tr, String(o.bound), "num");
    cell(tr, String(o.scrapped), "num");
    cell(tr, String(o.revoked), "num");
    cell(tr, o.at ? new Date(o.at).toLocaleTimeString() : "");
  }
}
function renderGroups(groups) {
  const body = document.querySelector("#groups tbody");
  body.replaceChildren();
  if (!groups.length) { emptyRow(body, 6, "no consumer groups"); return; }
  for (const g of groups) {
    const topics = new Map();
    for (const p of g.partitions) {
      const t = topics.get(p.topic) || {n: 0, committed: 0, end: 0, lag: 0};
      t.n += 1; t.committed += p.committed || 0; t.end += p.end; t.lag += p.lag;
      topics.set(p.topic, t);
    }
    if (!topics.size) topics.set("", {n: 0, committed: 0, end: 0, lag: 0});
    for (const [topic, t] of topics) {
      const tr = body.insertRow();
      tr.dataset.group = g.group;
      cell(tr, g.group);
      cell(tr, topic);
      cell(tr, String(t.n), "num");
      cell(tr, String(t.committed), "num");
      cell(tr, String(t.end), "num");
      cell(tr, String(t.lag), "num " + (t.lag ? "lag-behind" : "lag-ok"));
    }
  }
}
function renderStations(stations, error) {
  const body = document.querySelector("#stations tbody");
  body.replaceChildren();
  document.getElementById("stations-error").textContent = error ? "stations: " + error : "";
  if (!stations || !stations.length) { emptyRow(body, 8, "no stations seen"); return; }
  for (const s of stations) {
    const tr = body.insertRow();
    tr.dataset.station = s.line + "/" + s.station_id;
    cell(tr, s.line);
    cell(tr, s.station_id);
    cell(tr, s.status, "st-" + s.status);
    cell(tr, s.in_group ? "yes" : "no");
    cell(tr, s.last_seen ? new Date(s.last_seen).toLocaleTimeString() +
      " (" + Math.round(s.seen_ago_s) + " s ago)" : "never");
    cell(tr, String(s.flashed_recent), "num");
    cell(tr, String(s.failed_recent), "num");
    cell(tr, s.recent.slice(0, 5).map((r) => r.device_id + " " + r.status).join(", "));
  }
}
async function refresh() {
  try {
    const res = await fetch("/api/status", {cache: "no-store"});
    if (!res.ok) throw new Error("HTTP " + res.status);
    const s = await res.json();
    renderOrders(s.orders);
    renderGroups(s.groups);
    renderStations(s.stations, s.stations_error);
    document.getElementById("updated").textContent =
      "updated " + new Date().toLocaleTimeString() + " · " + s.orders.length + " orders · " +
      s.events_seen + " events";
    document.getElementById("error").textContent = s.lag_error ? "lag: " + s.lag_error : "";
  } catch (e) {
    document.getElementById("error").textContent = "cannot reach the monitor: " + e.message;
  }
}
refresh();
setInterval(refresh, __REFRESH_MS__);
</script>
</body>
</html>
""".replace("__REFRESH_MS__", str(REFRESH_MS))
