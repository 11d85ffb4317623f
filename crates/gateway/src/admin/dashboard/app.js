// The gate402 dashboard: everything it shows and changes goes through the
// admin API (/admin/api), with the cookie a login link set. Text from the
// API is only ever set as text, never parsed as HTML.
"use strict";

const REFRESH_MS = 5000;
const $ = (selector) => document.querySelector(selector);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function status(text, error = false) {
  const node = $("#status");
  node.textContent = text;
  node.className = error ? "error" : "";
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const response = await fetch("/admin/api" + path, {
    credentials: "same-origin",
    ...options,
    headers: { "x-gate402-admin": "1", "content-type": "application/json", ...(options.headers || {}) },
  });
  if (response.status === 401) throw new Unauthorized();
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

const sats = (msat) => (msat == null ? "–" : Math.floor(msat / 1000).toLocaleString("en-US"));
const when = (unix) => new Date(unix * 1000).toISOString().replace("T", " ").slice(0, 19);

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function renderOverview(revenue, node) {
  const total = revenue.total;
  $("#revenue-total").textContent = total.revenue_sats.toLocaleString("en-US");
  $("#refunded-total").textContent = total.refunded_sats.toLocaleString("en-US");
  $("#payments-total").textContent = total.payments.toLocaleString("en-US");
  $("#challenges-total").textContent = total.challenges.toLocaleString("en-US");
  $("#conversion-total").textContent =
    total.conversion == null ? "–" : (100 * total.conversion).toFixed(1) + " %";
  const liquidity = node.liquidity || {};
  $("#inbound").textContent = liquidity.unlimited ? "unlimited" : sats(liquidity.inbound_msat);
  $("#inbound-unit").textContent = liquidity.unlimited ? "test money" : "sat";
  const warning = $("#low-inbound-warning");
  warning.hidden = !node.low_inbound;
  warning.textContent = node.low_inbound
    ? `Inbound liquidity is below ${node.low_inbound_sats.toLocaleString("en-US")} sat: open or buy inbound capacity, or payments will fail.`
    : "";
}

function renderChart(revenue) {
  const svg = $("#revenue-chart");
  const ns = "http://www.w3.org/2000/svg";
  const perHour = new Map();
  for (let start = revenue.since; start < revenue.until; start += 3600) perHour.set(start, 0);
  for (const bucket of revenue.buckets) {
    perHour.set(bucket.start, (perHour.get(bucket.start) || 0) + bucket.revenue_msat);
  }
  const hours = [...perHour.entries()].sort((a, b) => a[0] - b[0]);
  const max = Math.max(1, ...hours.map(([, msat]) => msat));
  const width = 720 / Math.max(1, hours.length);
  const bars = hours.map(([start, msat], i) => {
    const height = msat === 0 ? 0 : Math.max(2, (140 * msat) / max);
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", String(i * width + 1));
    rect.setAttribute("y", String(145 - height));
    rect.setAttribute("width", String(Math.max(1, width - 2)));
    rect.setAttribute("height", String(height));
    rect.setAttribute("data-start", String(start));
    rect.setAttribute("data-sats", String(Math.floor(msat / 1000)));
    const title = document.createElementNS(ns, "title");
    title.textContent = `${when(start)}: ${sats(msat)} sat`;
    rect.append(title);
    return rect;
  });
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", "2");
  label.setAttribute("y", "158");
  label.textContent = `max ${sats(max)} sat / hour`;
  svg.replaceChildren(...bars, label);
}

async function change(path, options, done) {
  try {
    await api(path, options);
    status(done);
    await refresh();
  } catch (error) {
    if (error instanceof Unauthorized) return signIn();
    status(error.message, true);
  }
}

function renderServices(services) {
  const tbody = $("#services tbody");
  if (tbody.contains(document.activeElement) && document.activeElement.tagName === "INPUT") return;
  fill(
    tbody,
    services.map((service) => {
      const price = el("input", { class: "price", type: "number", min: "1", value: String(service.price_sats), "aria-label": `price of ${service.name}` });
      const save = el("button", { class: "save", onclick: () => {
        const value = Number(price.value);
        if (!Number.isInteger(value) || value < 1) return status("a price is a whole number of sats, at least 1", true);
        change(`/services/${encodeURIComponent(service.name)}`, { method: "PATCH", body: JSON.stringify({ price_sats: value }) },
          `${service.name}: price set to ${value} sat`);
      } }, "Save");
      const disabled = service.state === "disabled";
      const toggle = el("button", { class: "plain toggle", onclick: () =>
        change(`/services/${encodeURIComponent(service.name)}/${disabled ? "enable" : "disable"}`, { method: "POST" },
          `${service.name} ${disabled ? "enabled" : "disabled"}`) }, disabled ? "Enable" : "Disable");
      const counts = service.last_24h || {};
      const free = service.auth === "off";
      return el("tr", { "data-service": service.name },
        el("td", {}, service.name),
        el("td", { class: "hash" }, (service.methods.length ? service.methods.join(",") + " " : "") + service.path),
        el("td", {}, free ? "free" : service.sells),
        el("td", { class: "state" }, service.state, " ", toggle),
        el("td", { class: "num challenges" }, counts.challenges ?? 0),
        el("td", { class: "num payments" }, counts.payments ?? 0),
        el("td", { class: "num revenue" }, counts.revenue_sats ?? 0),
        free ? el("td", { class: "muted" }, "free") : el("td", {}, price, " ", save));
    }),
  );
}

function renderPayments(payments) {
  fill(
    $("#payments tbody"),
    payments.map((p) =>
      el("tr", { "data-payment-hash": p.payment_hash },
        el("td", {}, when(p.first_served_at)),
        el("td", {}, p.service),
        el("td", {}, p.scheme),
        el("td", { class: "num" }, p.amount_sats),
        el("td", { class: "num" }, p.served),
        el("td", { class: "hash" }, p.payment_hash.slice(0, 16) + "…"),
        el("td", {}, el("button", { class: "plain", onclick: () =>
          change(`/tokens/${p.payment_hash}/revoke`, { method: "POST" }, `revoked ${p.payment_hash.slice(0, 16)}…`) }, "Revoke")))),
  );
}

function renderNode(node) {
  const rows = [["Backend", node.backend], ["Network", node.network], ["Node id", node.pubkey]];
  const liquidity = node.liquidity || {};
  if (liquidity.unlimited) rows.push(["Funds", "unlimited test money (sandbox)"]);
  else {
    rows.push(["Outbound", `${sats(liquidity.outbound_msat)} sat`]);
    rows.push(["Inbound", `${sats(liquidity.inbound_msat)} sat`]);
    if (liquidity.onchain) rows.push(["On chain", `${liquidity.onchain.total_sat.toLocaleString("en-US")} sat`]);
  }
  for (const [call, error] of Object.entries(node.errors || {})) rows.push([call, error]);
  $("#node").replaceChildren(...rows.flatMap(([term, value]) => [el("dt", {}, term), el("dd", { class: "hash" }, value ?? "–")]));
  $("#node-summary").textContent = node.backend ? `${node.backend} · ${node.network}` : "";
  fill(
    $("#channels tbody"),
    (liquidity.channels || []).map((c) =>
      el("tr", {},
        el("td", { class: "hash" }, c.peer_node_id.slice(0, 20) + "…"),
        el("td", { class: "num" }, c.capacity_sat.toLocaleString("en-US")),
        el("td", { class: "num" }, sats(c.outbound_msat)),
        el("td", { class: "num" }, sats(c.inbound_msat)),
        el("td", {}, c.usable ? "yes" : "no"))),
  );
}

function renderLog(entries) {
  fill(
    $("#log tbody"),
    entries.map((e) => el("tr", {}, el("td", {}, when(e.at)), el("td", {}, e.who), el("td", {}, e.action), el("td", { class: "hash" }, e.target))),
  );
}

function signIn() {
  $("#login").hidden = false;
  status("signed out", true);
}

async function refresh() {
  try {
    const [services, revenue, payments, node, log] = await Promise.all([
      api("/services"),
      api("/revenue?by=hour"),
      api("/payments?limit=20"),
      api("/node"),
      api("/log?limit=10"),
    ]);
    $("#login").hidden = true;
    renderOverview(revenue, node);
    renderChart(revenue);
    renderServices(services.services);
    renderPayments(payments.payments);
    renderNode(node);
    renderLog(log.entries);
    document.body.dataset.loaded = String(Date.now());
  } catch (error) {
    if (error instanceof Unauthorized) return signIn();
    status(error.message, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#revoke-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("#revoke-token").value.trim();
    if (token) change(`/tokens/${encodeURIComponent(token)}/revoke`, { method: "POST" }, "token revoked");
  });
  refresh();
  setInterval(refresh, REFRESH_MS);
});
