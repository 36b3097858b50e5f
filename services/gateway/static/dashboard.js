// shoploop dashboard: reads only the gateway's public API (/v1/overview, /v1/channels, /v1/products/matrix,
// /v1/health) with the key typed above, and draws plain SVG and tables. No library, no build step.
"use strict";

const $ = (selector) => document.querySelector(selector);
const KPI_CARDS = [
  ["gmv", "GMV", "money"], ["net_gmv", "Net GMV", "money"], ["orders", "Orders", "count"],
  ["buyers", "Buyers", "count"], ["uv", "Visitors (UV)", "count"], ["pv", "Page views", "count"],
  ["conversion_rate", "Conversion", "ratio"], ["aov", "Average order", "money"],
  ["revenue_per_buyer", "Revenue per buyer", "money"], ["uv_value", "UV value", "money"],
  ["repurchase_rate", "Repurchase rate", "ratio"], ["inquiry_rate", "Inquiry rate", "ratio"],
  ["inquiry_conversion", "Inquiry conversion", "ratio"], ["median_response_seconds", "Median response", "seconds"],
  ["return_rate", "Return rate", "ratio"], ["refunds", "Refunds", "money"], ["avg_rating", "Average rating", "rating"],
  ["negative_share", "Negative reviews", "ratio"],
];
// A rise of these is bad news: their change is coloured the other way.
const LOWER_IS_BETTER = new Set(["refunds", "return_rate", "median_response_seconds", "negative_share"]);
const STAGES = ["prospect", "new", "active", "dormant", "churned"];

function format(value, kind) {
  if (value === null || value === undefined) return "—";
  switch (kind) {
    case "money": return value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    case "ratio": return (value * 100).toFixed(1) + "%";
    case "seconds": return value.toFixed(0) + " s";
    case "rating": return value.toFixed(2);
    case "number": return value.toLocaleString("en-US", { maximumFractionDigits: 2 });
    default: return value.toLocaleString("en-US");
  }
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined) continue;
    if (name === "class") node.className = value; else node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  for (const child of children.flat()) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

// A table cell carrying the API's value as data-value beside its formatted text.
function cell(field, value, kind) {
  return el("td", { "data-field": field, "data-value": value === null ? "null" : value }, format(value, kind));
}

function unavailable(container, part) {
  container.replaceChildren(el("p", { class: "unavailable", "data-unavailable": part.service || "" },
    `unavailable: ${part.reason || part.detail || "no answer"}`));
}

async function api(path, params) {
  const query = new URLSearchParams(Object.entries(params || {}).filter(([, v]) => v !== undefined && v !== null));
  const response = await fetch(`${path}${query.size ? "?" + query : ""}`, {
    headers: { Authorization: `Bearer ${$("#key").value.trim()}` },
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    return { _ok: false, status: "unavailable", reason: `${response.status} ${body.code || ""}: ${body.detail || response.statusText}` };
  }
  return { ...body, _ok: true };
}

function isoDay(date) { return date.toISOString().slice(0, 10); }
function addDays(day, days) { const d = new Date(day + "T00:00:00Z"); d.setUTCDate(d.getUTCDate() + days); return isoDay(d); }

// ---- panels -----------------------------------------------------------------------------------------------

function renderKpis(part, overview) {
  const cards = $("#kpi-cards");
  if (part.status !== "ok") return unavailable(cards, part);
  $("#periods").textContent = `${overview.from.slice(0, 10)} – ${addDays(overview.to.slice(0, 10), -1)} vs ` +
    `${overview.previous.from.slice(0, 10)} – ${addDays(overview.previous.to.slice(0, 10), -1)}`;
  cards.replaceChildren(...KPI_CARDS.map(([name, label, kind]) => {
    const value = part.current[name];
    const change = part.change[name];
    let changeText = "no change to compare", direction = "flat";
    if (change !== null && change !== undefined) {
      direction = change > 0 ? "up" : change < 0 ? "down" : "flat";
      const good = LOWER_IS_BETTER.has(name) ? change < 0 : change > 0;
      changeText = `${change > 0 ? "▲" : change < 0 ? "▼" : "■"} ${(Math.abs(change) * 100).toFixed(1)}% vs previous`;
      direction = change === 0 ? "flat" : good ? "up" : "down";
    }
    return el("div", { class: "card", "data-kpi": name, "data-value": value === null ? "null" : value },
      el("div", { class: "label" }, label),
      el("div", { class: "value" }, format(value, kind)),
      el("div", { class: `change ${direction}`, "data-change": change ?? "null",
                  title: `previous: ${format(part.previous[name], kind)}` }, changeText));
  }));
}

function renderFunnel(part, kpis) {
  const box = $("#funnel-chart");
  if (part.status !== "ok") return unavailable(box, part);
  const steps = ["view", "add_to_cart", "order"];
  const width = 560, barHeight = 26, gap = 26, left = 110, scale = (width - left - 10) / Math.max(part.counts[0], 1);
  const rows = [];
  part.counts.forEach((count, index) => {
    const y = index * (barHeight + gap) + 4;
    rows.push(svg("text", { x: 0, y: y + 17 }, steps[index] || `step ${index + 1}`));
    rows.push(svg("rect", { x: left, y, width: Math.max(count * scale, 1), height: barHeight, fill: "#3a6df0",
                            "data-step": index + 1, "data-value": count }));
    const conversion = part.conversion[index];
    const inside = count * scale > 160;  // a narrow bar has its label beside it
    rows.push(svg("text", { x: inside ? left + 6 : left + Math.max(count * scale, 1) + 6, y: y + 17,
                            style: inside ? "fill:#fff" : "" },
      `${format(count)}${index ? `  (${format(conversion, "ratio")} of visitors, ` +
        `${format(part.step_conversion[index], "ratio")} of the step before)` : ""}`));
    if (index < part.counts.length - 1) {
      // Units that stopped at this step: still inside their window (in progress) or dropped off.
      const stopped = count - part.counts[index + 1];
      const inProgress = part.in_progress[index];
      const dropped = stopped - inProgress;
      const x0 = left + part.counts[index + 1] * scale;
      rows.push(svg("rect", { x: x0, y: y + barHeight + 3, width: inProgress * scale, height: 8, fill: "#8fb0ff",
                              "data-in-progress": index + 1, "data-value": inProgress }));
      rows.push(svg("rect", { x: x0 + inProgress * scale, y: y + barHeight + 3, width: Math.max(dropped, 0) * scale,
                              height: 8, fill: "#f2a59f", "data-drop-off": index + 1, "data-value": dropped }));
      rows.push(svg("text", { x: left, y: y + barHeight + 22 },
        `in progress ${format(inProgress)} · dropped off ${format(dropped)}`));
    }
  });
  const height = part.counts.length * (barHeight + gap) + 50;
  if (kpis && kpis.status === "ok") {
    // Inquiry is the bridge, not a step of this funnel: its own stage, against the same visitors.
    const y = height - 46, inquirers = kpis.current.inquiry_users;
    rows.push(svg("text", { x: 0, y: y + 17 }, "inquiry"));
    rows.push(svg("rect", { x: left, y, width: Math.max(inquirers * scale, 1), height: barHeight, fill: "#c98a06",
                            "data-stage": "inquiry", "data-value": inquirers }));
    rows.push(svg("text", { x: left + Math.max(inquirers * scale, 1) + 6, y: y + 17 },
      `${format(inquirers)} asked · ${format(kpis.current.inquiry_conversion, "ratio")} of them bought within 7 days`));
  }
  box.replaceChildren(svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img" }, rows),
    el("div", { class: "legend" }, el("span", {}, el("i", { style: "background:#3a6df0" }), "reached the step"),
      el("span", {}, el("i", { style: "background:#8fb0ff" }), "in progress (window still open)"),
      el("span", {}, el("i", { style: "background:#f2a59f" }), "dropped off"),
      el("span", {}, el("i", { style: "background:#c98a06" }), "inquiry")));
}

function renderDaily(part) {
  const box = $("#daily-chart");
  if (part.status !== "ok") return unavailable(box, part);
  const days = part.days, width = 560, height = 220, left = 60, right = 44, bottom = 24, top = 8;
  const maxGmv = Math.max(...days.map((d) => d.gmv), 1);
  const maxRate = Math.max(...days.map((d) => d.conversion_rate || 0), 0.0001);
  const step = (width - left - right) / Math.max(days.length, 1);
  const y = (value, max) => top + (height - top - bottom) * (1 - value / max);
  const nodes = [svg("line", { class: "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom })];
  nodes.push(svg("text", { x: 0, y: top + 10 }, format(maxGmv, "money")));
  nodes.push(svg("text", { x: width - right + 4, y: top + 10 }, format(maxRate, "ratio")));
  let path = "";
  days.forEach((day, index) => {
    const x = left + index * step;
    nodes.push(svg("rect", { x: x + 1, y: y(day.gmv, maxGmv), width: Math.max(step - 2, 1),
                             height: height - bottom - y(day.gmv, maxGmv), fill: "#3a6df0", opacity: 0.75,
                             "data-date": day.date, "data-gmv": day.gmv, "data-conversion": day.conversion_rate ?? "null" },
      svg("title", {}, `${day.date}: GMV ${format(day.gmv, "money")}, conversion ${format(day.conversion_rate, "ratio")}`)));
    if (day.conversion_rate !== null) path += `${path ? "L" : "M"}${x + step / 2},${y(day.conversion_rate, maxRate)}`;
    if (index % Math.ceil(days.length / 6) === 0) nodes.push(svg("text", { x, y: height - 6 }, day.date.slice(5)));
  });
  nodes.push(svg("path", { d: path, fill: "none", stroke: "#d0433a", "stroke-width": 2 }));
  box.replaceChildren(svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img" }, nodes),
    el("div", { class: "legend" }, el("span", {}, el("i", { style: "background:#3a6df0" }), "GMV (left)"),
      el("span", {}, el("i", { style: "background:#d0433a" }), "conversion (right)")));
}

function renderChannels(answer) {
  const box = $("#channels-table");
  if (!answer._ok) return unavailable(box, answer);
  const head = el("tr", {}, ["source", "UV", "buyers", "orders", "GMV", "conversion", "UV value", "new customers",
    "spend", "ROAS", "CAC"].map((title) => el("th", {}, title)));
  const rows = answer.items.map((c) => el("tr", { "data-source": c.source }, el("td", { class: "text" }, c.source),
    cell("uv", c.uv), cell("buyers", c.buyers), cell("orders", c.orders), cell("gmv", c.gmv, "money"),
    cell("conversion_rate", c.conversion_rate, "ratio"), cell("uv_value", c.uv_value, "money"),
    cell("new_customers", c.new_customers), cell("spend", c.spend, "money"), cell("roas", c.roas, "number"),
    cell("cac", c.cac, "money")));
  const note = answer.spend && answer.spend.status !== "ok"
    ? el("p", { class: "unavailable", "data-unavailable": "spend" }, `spend unavailable: ${answer.spend.reason}`) : "";
  box.replaceChildren(el("table", {}, el("thead", {}, head), el("tbody", {}, rows)), note);
}

function renderProducts(answer) {
  const box = $("#products-table");
  if (!answer._ok) return unavailable(box, answer);
  const items = [...answer.items].sort((a, b) => (b.tier_mismatch - a.tier_mismatch) || (b.gmv - a.gmv));
  const head = el("tr", {}, ["product", "category", "price", "UV", "units", "GMV", "suggested tier", "declared tier",
    "lifecycle"].map((title) => el("th", {}, title)));
  const rows = items.map((p) => el("tr", { "data-product": p.product_id, class: p.tier_mismatch ? "mismatch" : "" },
    el("td", { class: "text", "data-field": "name" }, p.name || p.product_id),
    el("td", { class: "text" }, p.category || "—"), cell("price", p.price, "money"), cell("uv", p.uv),
    cell("units", p.units), cell("gmv", p.gmv, "money"),
    el("td", { class: "text", "data-field": "suggested_tier" }, p.suggested_tier),
    el("td", { class: "text", "data-field": "declared_tier" }, p.declared_tier || "—",
      p.tier_mismatch ? [" ", el("span", { class: "badge warn" }, "mismatch")] : []),
    el("td", { class: "text", "data-field": "lifecycle" }, p.lifecycle)));
  box.replaceChildren(el("table", {}, el("thead", {}, head), el("tbody", {}, rows)));
}

function renderRfm(part) {
  const box = $("#rfm-grid");
  if (part.status !== "ok") return unavailable(box, part);
  const counts = {};
  for (const c of part.cells) counts[`${c.r_score},${c.f_score}`] = c.customers;
  const max = Math.max(...Object.values(counts), 1);
  const rows = [5, 4, 3, 2, 1].map((r) => el("tr", {}, el("th", {}, `R${r}`), [1, 2, 3, 4, 5].map((f) => {
    const value = counts[`${r},${f}`] || 0;
    const shade = Math.round(245 - 170 * (value / max));
    return el("td", { "data-r": r, "data-f": f, "data-value": value,
                      style: `background: rgb(${shade}, ${shade + 5}, 255); color: ${value / max > 0.6 ? "#fff" : "inherit"}` },
      format(value));
  })));
  const segments = Object.entries(part.segments).map(([name, count]) =>
    el("span", { class: "badge", "data-segment": name, "data-value": count }, `${name} ${format(count)}`));
  box.replaceChildren(el("table", { class: "heat" }, el("thead", {}, el("tr", {}, el("th", {}, ""),
    [1, 2, 3, 4, 5].map((f) => el("th", {}, `F${f}`)))), el("tbody", {}, rows)),
    el("p", {}, `${format(part.customers)} customers with an order in the last 365 days`), el("div", {}, segments));
}

function renderLifecycle(part, tiers, asOf) {
  const box = $("#lifecycle-bars");
  $("#segments-as-of").textContent = asOf ? `as of ${asOf.slice(0, 16).replace("T", " ")}` : "";
  if (part.status !== "ok") return unavailable(box, part);
  const max = Math.max(...STAGES.map((s) => part.stages[s] || 0), 1);
  const rows = STAGES.map((stage) => el("tr", { "data-stage": stage }, el("td", { class: "text" }, stage),
    cell("customers", part.stages[stage] || 0),
    el("td", { class: "text", style: "width:60%" }, el("div", {
      style: `background:#3a6df0;height:12px;border-radius:3px;width:${(100 * (part.stages[stage] || 0)) / max}%` }))));
  const tierText = tiers && tiers.status === "ok" && tiers.tiers
    ? el("p", {}, "tiers: ", Object.entries(tiers.tiers).map(([tier, n]) =>
      el("span", { class: "badge", "data-tier": tier, "data-value": n }, `${tier} ${format(n)}`))) : "";
  box.replaceChildren(el("table", {}, el("tbody", {}, rows)), tierText);
}

function renderCampaigns(part) {
  const box = $("#campaigns-table");
  if (part.status !== "ok") return unavailable(box, part);
  if (!part.items.length) return box.replaceChildren(el("p", {}, "no campaigns yet"));
  box.replaceChildren(...part.items.map((campaign) => {
    const report = campaign.report || {};
    const title = el("h3", {}, campaign.name || campaign.campaign_id, " ",
      el("span", { class: "badge" }, campaign.status || ""),
      report.srm ? [" ", el("span", { class: "badge bad", "data-srm": "true",
                                      title: `chi-square p = ${report.srm_p_value}` }, "SRM: split mismatch")] : []);
    if (report.status === "unavailable" || !report.variants) {
      return el("div", { "data-campaign": campaign.campaign_id }, title,
        el("p", { class: "unavailable" }, `report unavailable: ${report.reason || "no report"}`));
    }
    const head = el("tr", {}, ["arm", "assigned", "conversions", "conversion", "revenue", "ROI", "lift", "95% interval",
      "p-value", "P(beats control)", ""].map((t) => el("th", {}, t)));
    const rows = Object.entries(report.variants).map(([name, v]) => {
      const c = (report.comparisons || {})[name];
      const significant = c && c.p_value !== null && c.p_value < 0.05;
      return el("tr", { "data-variant": name }, el("td", { class: "text" }, name === report.control ? `${name} (control)` : name),
        cell("assigned", v.assigned), cell("conversions", v.conversions), cell("conversion_rate", v.conversion_rate, "ratio"),
        cell("revenue", v.revenue, "money"), cell("roi", v.roi, "number"),
        c ? cell("lift_abs", c.lift_abs, "ratio") : el("td", {}, "—"),
        el("td", {}, c && c.ci95 ? `${format(c.ci95[0], "ratio")} … ${format(c.ci95[1], "ratio")}` : "—"),
        c ? cell("p_value", c.p_value, "number") : el("td", {}, "—"),
        c ? cell("prob_to_beat", c.prob_to_beat, "ratio") : el("td", {}, "—"),
        el("td", { class: "text" }, c ? (c.insufficient_data ? el("span", { class: "badge" }, "insufficient data")
          : significant ? el("span", { class: "badge good" }, "significant") : el("span", { class: "badge" }, "not significant")) : ""));
    });
    return el("div", { "data-campaign": campaign.campaign_id }, title,
      el("table", {}, el("thead", {}, head), el("tbody", {}, rows)));
  }));
}

function renderHealth(answer) {
  const box = $("#health-table");
  if (!answer._ok) return unavailable(box, answer);
  const head = el("tr", {}, ["service", "status", "version", "consumer group", "lag", "last event", "last processed",
    "dead-lettered"].map((t) => el("th", {}, t)));
  const rows = [];
  for (const service of answer.services) {
    const groups = Object.entries(service.consumers || {});
    const badge = el("span", { class: `badge ${service.status === "ready" ? "good" : service.status === "not_deployed" ? "" : "bad"}`,
                               title: service.reason || "" }, service.status);
    if (!groups.length) {
      rows.push(el("tr", { "data-service": service.service }, el("td", { class: "text" }, service.service),
        el("td", { class: "text" }, badge), el("td", {}, service.version || "—"),
        el("td", { class: "text" }, service.reason || "—"), el("td", {}, ""), el("td", {}, ""), el("td", {}, ""), el("td", {}, "")));
      continue;
    }
    groups.forEach(([group, consumer], index) => rows.push(el("tr", { "data-service": service.service, "data-group": group },
      el("td", { class: "text" }, index ? "" : service.service), el("td", { class: "text" }, index ? "" : badge),
      el("td", {}, index ? "" : service.version || "—"), el("td", { class: "text" }, group),
      cell("lag", consumer.lag), el("td", {}, (consumer.last_event_occurred_at || "—").slice(0, 19).replace("T", " ")),
      el("td", {}, (consumer.last_processed_at || "—").slice(0, 19).replace("T", " ")),
      cell("dead_lettered", consumer.dead_lettered ?? null))));
  }
  box.replaceChildren(el("table", {}, el("thead", {}, head), el("tbody", {}, rows)));
}

// ---- loading ----------------------------------------------------------------------------------------------

async function load() {
  const from = $("#from").value, toIncluded = $("#to").value;
  if (!from || !toIncluded) return;
  localStorage.setItem("shoploop-key", $("#key").value.trim());
  const range = { from, to: addDays(toIncluded, 1) };
  const status = $("#status");
  status.className = ""; status.textContent = "loading…";
  document.body.dataset.loaded = "false";
  const [overview, channels, health] = await Promise.all([
    api("/v1/overview", range), api("/v1/channels", range), api("/v1/health"),
  ]);
  if (!overview._ok) {
    status.className = "error"; status.textContent = `overview: ${overview.reason}`;
  }
  const asOf = overview._ok ? overview.segments_as_of : undefined;
  const products = await loadMatrix(asOf);
  const part = (name) => (overview._ok ? overview[name] : overview);
  renderKpis(part("kpis"), overview);
  renderFunnel(part("funnel"), part("kpis"));
  renderDaily(part("kpis"));
  renderChannels(channels);
  renderProducts(products);
  renderRfm(part("rfm"));
  renderLifecycle(part("lifecycle"), part("tiers"), asOf);
  renderCampaigns(part("campaigns"));
  renderHealth(health);
  if (overview._ok) status.textContent = `${from} – ${toIncluded} (${overview.time_zone}), read ${new Date().toLocaleTimeString()}`;
  document.body.dataset.loaded = "true";
  document.body.dataset.range = `${range.from}/${range.to}`;
}

async function loadMatrix(asOf) {
  const items = [];
  let cursor;
  for (let page = 0; page < 10; page++) {
    const answer = await api("/v1/products/matrix", { as_of: asOf, limit: 1000, cursor });
    if (!answer._ok) return answer;
    items.push(...answer.items);
    cursor = answer.next_cursor;
    if (!cursor) break;
  }
  return { _ok: true, items };
}

function init() {
  const params = new URLSearchParams(location.search);
  const defaultKey = document.querySelector('meta[name="shoploop-default-key"]').content;
  $("#key").value = params.get("key") || localStorage.getItem("shoploop-key") || defaultKey || "";
  const today = isoDay(new Date());
  $("#to").value = params.get("to") || today;
  $("#from").value = params.get("from") || addDays($("#to").value, -29);
  for (const button of document.querySelectorAll("[data-days]")) {
    button.addEventListener("click", () => {
      $("#from").value = addDays($("#to").value, 1 - Number(button.dataset.days));
      load();
    });
  }
  $("#controls").addEventListener("submit", (event) => { event.preventDefault(); load(); });
  load();
}

init();
