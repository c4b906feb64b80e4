// The live feed: new events from GET /events/stream (Server-Sent Events) added on top of the
// table the server rendered. Text only (textContent): an event's fields are never markup.
"use strict";
(function () {
  const table = document.getElementById("events");
  if (!table) return;
  const body = table.tBodies[0];
  const state = document.getElementById("feed-state");
  const KEEP = 200;
  const seen = new Set(Array.from(body.rows).map((r) => r.dataset.position));
  const params = new URLSearchParams({ pattern: table.dataset.pattern, after: table.dataset.after });
  const source = new EventSource("/events/stream?" + params.toString());

  function cell(row, text, cls) {
    const td = row.insertCell(-1);
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }
  function link(td, href, text) {
    td.textContent = "";
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    td.appendChild(a);
  }
  function show(item) {
    const position = String(item.position);
    if (seen.has(position)) return;
    seen.add(position);
    const ev = item.event || {};
    const row = body.insertRow(0);
    row.dataset.position = position;
    row.className = "fresh";
    const href = "/ui/events/" + encodeURIComponent(position);
    link(cell(row, ""), href, position);
    cell(row, ev.time ? new Date(ev.time).toISOString().slice(11, 19) : "");
    cell(row, ev.type || "", "type");
    cell(row, ev.source || "");
    cell(row, ev.subject || "");
    link(cell(row, "", "mono"), href, ev.id || "");
    while (body.rows.length > KEEP) body.deleteRow(-1);
  }
  source.onopen = function () { state.textContent = "live"; state.className = "state live"; };
  source.onerror = function () { state.textContent = "reconnecting…"; state.className = "state"; };
  source.onmessage = function (msg) {
    try { show(JSON.parse(msg.data)); } catch (e) { /* a line we cannot read: skip it */ }
  };
  source.addEventListener("error", function (msg) {
    if (msg.data) state.textContent = "cut off: " + JSON.parse(msg.data).detail;
  });
})();
