// cocoon-node dashboard: polls /dashboard/data, draws tables with textContent only (worker fields are remote
// input) and three small canvas charts from the differences between polls. No libraries, nothing remote.
"use strict";
const POLL_MS = 1000, POINTS = 90;
const series = { rps: [], ttft: [], tps: [] };
let previous = null;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function short(id) { return id && id.length > 16 ? id.slice(0, 8) + "…" + id.slice(-6) : (id || ""); }
function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) { const td = document.createElement("td"); if (c instanceof Node) td.appendChild(c); else td.textContent = c === null || c === undefined ? "" : String(c); tr.appendChild(td); }
  return tr;
}
function fill(tableId, rows, empty) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren();
  if (!rows.length) { const tr = row([empty]); tr.firstChild.colSpan = 8; tr.className = "muted"; body.appendChild(tr); return; }
  for (const r of rows) body.appendChild(r);
}

function attestationCell(a) {
  const box = document.createElement("div");
  if (a.verified === true) box.appendChild(el("span", "verified", "ok"));
  else if (a.verified === false) box.appendChild(el("span", "REJECTED" + (a.check ? " (" + a.check + ")" : ""), "bad"));
  else box.appendChild(el("span", "not checked", "muted"));
  if (a.reasons && a.reasons.length) {
    const ul = el("ul", null, "reasons");
    for (const r of a.reasons) ul.appendChild(el("li", r));
    box.appendChild(ul);
  }
  return box;
}
function teeCell(w) {
  if (w.dev_insecure) return el("span", "dev-INSECURE", "badge-insecure");
  return el("span", w.tee_kind || "?");
}

function renderTables(d) {
  const n = d.node;
  document.getElementById("node").textContent =
    `${short(n.peer_id)} · ${n.network} · roles: ${n.roles.join(", ") || "relay"} · ${n.connected_peers} peers · up ${Math.round(n.uptime_s)} s`;
  document.getElementById("updated").textContent = "updated " + new Date(d.time * 1000).toLocaleTimeString();
  const insecure = d.workers.filter(w => w.dev_insecure).length;
  const banner = document.getElementById("banner");
  banner.hidden = insecure === 0;
  banner.textContent = insecure ? `${insecure} worker(s) run the dev-INSECURE TEE: their attestation proves NOTHING about hardware or confidentiality. Local development only.` : "";
  document.getElementById("worker-count").textContent = `(${d.workers.length})`;
  fill("workers", d.workers.map(w => {
    const tr = row([el("span", short(w.peer_id), "mono"), w.model + (w.synthetic ? " (synthetic)" : ""),
      `${w.price_prompt} / ${w.price_completion}`, `${w.load} / ${w.max_concurrent}`,
      w.ttft_ms ? `${Math.round(w.ttft_ms)} ms, ${w.tokens_per_second.toFixed(1)} tok/s` : "not used yet",
      w.path, teeCell(w), attestationCell(w.attestation)]);
    tr.className = "worker"; tr.dataset.peer = w.peer_id; return tr;
  }), "no workers seen yet");
  fill("models", d.models.map(m => row([m.id + (m.synthetic ? " (synthetic)" : ""), m.workers, m.verified_workers,
    (m.price_prompt || []).join("–"), (m.price_completion || []).join("–")])), "no models on offer");
  const p = d.payments;
  document.getElementById("pay-summary").textContent = p.enabled
    ? `(${p.chain}; spent ${p.spent} nTON, earned ${p.earned} nTON, wallet ${p.wallet_balance ?? "?"} nTON)` : "(payments off)";
  fill("channels", (p.channels || []).map(c => row([el("span", short(c.address), "mono"), c.role, el("span", short(c.peer), "mono"),
    c.status, c.deposit, c.voucher_cumulative, c.voucher_seqno])), p.enabled ? "no channels yet" : "payments are off on this node");
  const ops = Object.entries(p.onchain_ops || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
  document.getElementById("onchain").textContent = ops ? "on-chain operations: " + ops : "";
  const errors = document.getElementById("errors");
  errors.replaceChildren();
  if (!d.recent_errors.length) errors.appendChild(el("li", "none", "muted"));
  for (const e of d.recent_errors)
    errors.appendChild(el("li", `${new Date(e.time * 1000).toLocaleTimeString()} ${e.status} ${e.endpoint} ${e.model ? "(" + e.model + ") " : ""}${e.message}`));
}

function push(name, value) {
  const s = series[name];
  s.push(value);
  while (s.length > POINTS) s.shift();
  const canvas = document.getElementById("chart-" + name);
  canvas.dataset.points = JSON.stringify(s.map(v => Math.round(v * 1000) / 1000));
  canvas.dataset.last = String(value);
  document.getElementById("v-" + name).textContent = value.toFixed(name === "ttft" ? 3 : 1);
  draw(canvas, s);
}
function draw(canvas, s) {
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  g.clearRect(0, 0, w, h);
  g.strokeStyle = "#dde"; g.strokeRect(0.5, 0.5, w - 1, h - 1);
  const max = Math.max(1e-9, ...s);
  g.fillStyle = "#667"; g.font = "10px sans-serif"; g.fillText(max.toPrecision(3), 4, 11);
  g.strokeStyle = "#2a6fdb"; g.lineWidth = 2; g.beginPath();
  s.forEach((v, i) => { const x = (i / (POINTS - 1)) * (w - 8) + 4, y = h - 4 - (v / max) * (h - 18); if (i) g.lineTo(x, y); else g.moveTo(x, y); });
  g.stroke();
}

function renderCharts(d) {
  const t = d.totals;
  if (previous) {
    const dt = Math.max(1e-3, d.time - previous.time), p = previous.totals;
    push("rps", (t.requests - p.requests) / dt);
    push("tps", (t.completion_tokens - p.completion_tokens) / dt);
    const n = t.ttft_count - p.ttft_count;
    push("ttft", n > 0 ? (t.ttft_sum - p.ttft_sum) / n : 0);
  }
  previous = d;
}

async function poll() {
  try {
    const r = await fetch("/dashboard/data", { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) { location.href = "/dashboard"; return; }
    const d = await r.json();
    renderTables(d);
    renderCharts(d);
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  } catch (err) {
    document.getElementById("updated").textContent = "node unreachable: " + err;
  }
  setTimeout(poll, POLL_MS);
}
poll();
