// meshlib control plane dashboard: plain JS, no build step. Polls the JSON API every 2 s.
// Everything taken from reports goes through textContent, never innerHTML.
"use strict";

const POLL_MS = 2000;
const SVG_NS = "http://www.w3.org/2000/svg";
let shownVersion = null;
let currentVersion = null;

function token() { return sessionStorage.getItem("meshlib-token") || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = (body && body.error) || response.statusText;
    throw new Error(response.status + ": " + message);
  }
  return body;
}

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) tr.appendChild(cell instanceof Node ? cell : el("td", cell));
  return tr;
}

function num(value, digits = 1) { return el("td", Number(value || 0).toFixed(digits), { class: "num" }); }

function ago(seconds) { return seconds < 1 ? "just now" : seconds.toFixed(0) + " s ago"; }

function when(epoch) { return epoch ? new Date(epoch * 1000).toLocaleString() : ""; }

function setStatus(text, ok) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = "status " + (ok ? "ok" : "bad");
}

function failing(edge) { return edge.error_ratio !== null && edge.error_ratio >= 0.05; }

function ms(value) { return value === null || value === undefined ? "–" : Number(value).toFixed(1); }

function pair(part) { return el("td", ms(part.p50) + " / " + ms(part.p99), { class: "num" }); }

function renderSplit(edges) {
  const body = document.querySelector("#split tbody");
  body.replaceChildren();
  for (const edge of edges) {
    const split = edge.split_ms || {};
    const none = { p50: null, p99: null };
    const deadlines = el("td", String(edge.deadlines_exceeded || 0),
      { class: "num" + (edge.deadlines_exceeded ? " bad-cell" : "") });
    const tr = row([edge.source, edge.destination, pair(split.service || none), pair(split.network || none),
      pair(split.unknown || none), pair(split.meshlib || none), pair(split.waits || none), deadlines]);
    tr.dataset.edge = edge.source + "->" + edge.destination;
    body.appendChild(tr);
  }
}

function renderEdges(edges) {
  const body = document.querySelector("#edges tbody");
  body.replaceChildren();
  const windows = edges.map((edge) => edge.window_s || 0).filter((s) => s > 0);
  document.getElementById("window").textContent = windows.length
    ? Math.max(...windows).toFixed(0) + " s" : "report";
  for (const edge of edges) {
    const shown = edge.error_ratio === null ? "–" : (edge.error_ratio * 100).toFixed(1);
    const ratio = el("td", shown, { class: "num" + (failing(edge) ? " bad-cell" : "") });
    const tr = row([edge.source, edge.destination, num(edge.rps), num(edge.errors_per_s), ratio,
      num(edge.retries_per_s), num(edge.latency_ms.p50), num(edge.latency_ms.p99), num(edge.requests, 0),
      num(edge.budget_refusals, 0)]);
    tr.dataset.edge = edge.source + "->" + edge.destination;
    body.appendChild(tr);
  }
  const endpoints = document.querySelector("#endpoints tbody");
  endpoints.replaceChildren();
  for (const edge of edges) {
    for (const ep of edge.endpoints) {
      const states = Object.entries(ep.breaker).map(([state, n]) => state + " ×" + n).join(", ");
      const open = Object.keys(ep.breaker).some((state) => state !== "closed");
      const tr = row([edge.source + " → " + edge.destination, ep.url,
        el("td", states || "-", { class: open ? "bad-cell" : "" }),
        el("td", ep.ejected ? "by " + ep.ejected : "no", { class: ep.ejected ? "bad-cell" : "" }),
        num(ep.requests, 0), num(ep.errors, 0)]);
      tr.dataset.endpoint = ep.url;
      endpoints.appendChild(tr);
    }
  }
}

function renderInstances(services) {
  const body = document.querySelector("#instances tbody");
  body.replaceChildren();
  for (const service of services) {
    if (service.instances.length === 0) {
      const tr = row([service.name, "(no reports)", "", "", ""]);
      tr.dataset.service = service.name;
      body.appendChild(tr);
    }
    for (const inst of service.instances) {
      const version = el("td", inst.policy_revision || "?", { class: inst.current ? "" : "stale" });
      const tr = row([service.name, inst.instance, inst.zone || "", version, ago(inst.age_s)]);
      tr.dataset.service = service.name;
      body.appendChild(tr);
    }
  }
}

function renderDiscovery(rows) {
  const body = document.querySelector("#discovery tbody");
  body.replaceChildren();
  for (const r of rows) {
    const health = el("td", r.health, { class: r.health === "unhealthy" ? "bad-cell" : "" });
    const use = r.panic ? "yes (panic: all)" : (r.selected ? "yes" : "no");
    const tr = row([r.source + " / " + r.instance, r.destination, r.url, r.zone || "", health, use]);
    tr.dataset.destination = r.destination;
    body.appendChild(tr);
  }
}

function renderRegistry(instances) {
  const body = document.querySelector("#registry tbody");
  body.replaceChildren();
  for (const inst of instances) {
    const tr = row([inst.service, inst.instance, inst.url, inst.zone || "", num(inst.lease_s), num(inst.expires_in_s)]);
    tr.dataset.service = inst.service;
    body.appendChild(tr);
  }
}

function renderGraph(services, edges) {
  const svg = document.getElementById("graph");
  svg.replaceChildren();
  const n = services.length;
  const pos = {};
  services.forEach((service, i) => {
    const angle = (2 * Math.PI * i) / Math.max(n, 1) - Math.PI / 2;
    pos[service.name] = [300 + 230 * Math.cos(angle) * (n > 1 ? 1 : 0), 160 + 120 * Math.sin(angle) * (n > 1 ? 1 : 0)];
  });
  const defs = document.createElementNS(SVG_NS, "defs");
  const marker = document.createElementNS(SVG_NS, "marker");
  for (const [k, v] of Object.entries({ id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" })) marker.setAttribute(k, v);
  const tip = document.createElementNS(SVG_NS, "path");
  tip.setAttribute("d", "M 0 0 L 10 5 L 0 10 z");
  marker.appendChild(tip);
  defs.appendChild(marker);
  svg.appendChild(defs);
  for (const edge of edges) {
    if (edge.source === edge.destination) continue;  // a self-call: in the tables, not drawable
    const [sx, sy] = pos[edge.source] || [0, 0];
    const [dx, dy] = pos[edge.destination] || [0, 0];
    const length = Math.hypot(dx - sx, dy - sy) || 1;
    const [ux, uy] = [(dx - sx) / length, (dy - sy) / length];
    // Shifted to the left of their direction, so a -> b and b -> a (and their labels) stay apart.
    const [px, py] = [uy * 6, -ux * 6];
    const [x1, y1, x2, y2] = [sx + 30 * ux + px, sy + 30 * uy + py, dx - 30 * ux + px, dy - 30 * uy + py];
    const line = document.createElementNS(SVG_NS, "line");
    line.setAttribute("marker-end", "url(#arrow)");
    for (const [k, v] of Object.entries({ x1, y1, x2, y2 })) line.setAttribute(k, v);
    line.setAttribute("class", "edge" + (failing(edge) ? " failing" : ""));
    svg.appendChild(line);
    const label = document.createElementNS(SVG_NS, "text");
    label.setAttribute("x", (x1 + x2) / 2 + px * 1.5);
    label.setAttribute("y", (y1 + y2) / 2 + py * 1.5 + 4);
    const errors = edge.error_ratio === null ? "" : ", " + (edge.error_ratio * 100).toFixed(0) + "% err";
    label.textContent = edge.rps.toFixed(1) + " rps" + errors;
    svg.appendChild(label);
  }
  for (const service of services) {
    const [x, y] = pos[service.name];
    const g = document.createElementNS(SVG_NS, "g");
    g.setAttribute("class", "node" + (service.instances.length ? "" : " silent"));
    const circle = document.createElementNS(SVG_NS, "circle");
    circle.setAttribute("cx", x); circle.setAttribute("cy", y); circle.setAttribute("r", 28);
    const text = document.createElementNS(SVG_NS, "text");
    text.setAttribute("x", x); text.setAttribute("y", y + 4);
    text.textContent = service.name + (service.instances.length ? " ×" + service.instances.length : "");
    g.append(circle, text);
    svg.appendChild(g);
  }
}

function renderDiff(text) {
  const pre = document.getElementById("diff");
  pre.replaceChildren();
  for (const line of text.split("\n")) {
    const span = el("span", line + "\n");
    if (line.startsWith("@@")) span.className = "hunk";
    else if (line.startsWith("+") && !line.startsWith("+++")) span.className = "add";
    else if (line.startsWith("-") && !line.startsWith("---")) span.className = "del";
    pre.appendChild(span);
  }
}

async function showDiff(version) {
  try {
    const diff = await api("/v1/policy/diff?to=" + version);
    document.getElementById("diff-title").textContent = "version " + diff.from + " → " + diff.to;
    renderDiff(diff.diff || "(no changes)");
  } catch (e) { document.getElementById("message").textContent = "diff failed: " + e.message; }
}

async function rollback(version) {
  const message = document.getElementById("message");
  try {
    const result = await api("/v1/policy/rollback", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ version }),
    });
    message.textContent = "rolled back to version " + version + " as version " + result.version;
    await refresh();
  } catch (e) { message.textContent = "rollback failed: " + e.message; }
}

function renderHistory(history) {
  const body = document.querySelector("#history tbody");
  body.replaceChildren();
  for (const v of history.versions) {
    const actions = el("td");
    const diff = el("button", "diff", { type: "button", class: "diff", "data-version": v.version });
    diff.addEventListener("click", () => showDiff(v.version));
    actions.appendChild(diff);
    if (v.version !== history.current) {
      const back = el("button", "roll back to this", { type: "button", class: "rollback", "data-version": v.version });
      back.addEventListener("click", () => rollback(v.version));
      actions.appendChild(back);
    }
    const tr = row([v.version, when(v.when), v.who, v.comment, actions]);
    tr.dataset.version = v.version;
    body.appendChild(tr);
  }
  const fileError = document.getElementById("file-error");
  fileError.hidden = !history.file_error;
  fileError.textContent = history.file_error ? "policy file on disk is invalid (not in force):\n" + history.file_error : "";
}

async function showPolicy(version) {
  const v = await api("/v1/policy/history/" + version);
  document.getElementById("policy-text").textContent = v.text;
  document.getElementById("policy-version").textContent = "version " + v.version + " (" + v.hash.slice(0, 19) + ")";
  shownVersion = version;
}

async function refresh() {
  try {
    const [mesh, history] = await Promise.all([api("/v1/mesh"), api("/v1/policy/history?limit=20")]);
    renderGraph(mesh.services, mesh.edges);
    renderEdges(mesh.edges);
    renderSplit(mesh.edges);
    renderInstances(mesh.services);
    renderDiscovery(mesh.discovery || []);
    renderRegistry(mesh.registry || []);
    renderHistory(history);
    currentVersion = history.current;
    if (currentVersion !== null && currentVersion !== shownVersion) {
      await showPolicy(currentVersion);
      await showDiff(currentVersion);
    }
    setStatus("live · " + mesh.instances + " instances · " + new Date().toLocaleTimeString(), true);
  } catch (e) {
    setStatus(e.message, false);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token").value = token();
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("meshlib-token", document.getElementById("token").value);
    refresh();
  });
  refresh();
  setInterval(refresh, POLL_MS);
});
