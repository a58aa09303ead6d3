// orderflow dashboard: vanilla JS over the /dashboard/api endpoints and their SSE feed.
// No framework, no build step; uPlot (vendored) draws the charts.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
};
// The last 8 hex digits: UUIDv7 ids begin with their timestamp, so their ends tell them apart.
const short = (id) => (id ? id.slice(-8) : "–");
const money = (cents, currency) => `${(cents / 100).toFixed(2)} ${currency}`;
const time = (iso) => (iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) + "." + String(new Date(iso).getMilliseconds()).padStart(3, "0") : "–");
const ago = (secs) => (secs < 1 ? `${Math.round(secs * 1000)} ms` : `${secs.toFixed(1)} s`);

// ---- the live indicator: green while the feed is open and the last refresh worked, amber when
// a refresh failed (the figures on screen may be stale), red while the feed reconnects.
let feedOpen = false;
// What failed at its last refresh (orders, partitions, history) → why.
const refreshErrors = new Map();
function showFeedState() {
  const state = $("#feed-state");
  if (!state) return;
  if (!feedOpen) {
    state.textContent = "reconnecting…"; state.className = "feed-state down"; state.title = "live feed";
  } else if (refreshErrors.size) {
    const why = [...refreshErrors].map(([what, message]) => `${what}: ${message}`).join("; ");
    state.textContent = "live · refresh failed"; state.className = "feed-state stale"; state.title = `last refresh failed — ${why}`;
  } else {
    state.textContent = "live"; state.className = "feed-state live"; state.title = "live feed";
  }
}
function refreshed(what, error) {
  if (error) {
    console.warn(what, error);
    refreshErrors.set(what, error.message);
  } else {
    refreshErrors.delete(what);
  }
  showFeedState();
}

// Who is signed in (GET /dashboard/session): name, role, and the CSRF token every change carries.
let me = null;

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (options.method && !["GET", "HEAD"].includes(options.method) && me && me.csrf_token) {
    headers["x-csrf-token"] = me.csrf_token;
  }
  const response = await fetch(path, { credentials: "same-origin", ...options, headers });
  if (response.status === 401 || response.status === 403) {
    location.reload();
    throw new Error("signed out");
  }
  const body = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error(body && body.detail ? body.detail : `HTTP ${response.status}`);
  return body;
}

// ---- sign-in page -------------------------------------------------------------------------------
function signInPage() {
  $("#sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const response = await fetch("/dashboard/session", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name: $("#name").value.trim(), password: $("#password").value }),
    });
    if (response.ok) location.reload();
    else {
      const problem = await response.json().catch(() => ({}));
      $("#sign-in-error").textContent = problem.detail || `sign-in failed (${response.status})`;
    }
  });
}

// ---- tabs ---------------------------------------------------------------------------------------
function showTab(name) {
  for (const section of document.querySelectorAll(".tab")) section.hidden = section.id !== `tab-${name}`;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.tab === name);
  if (name === "partitions") loadPartitions();
  if (name === "operators") loadOperators();
  if (name === "stock") loadStock();
  if (name === "webhooks") loadWebhooks();
  if (name === "contention" || name === "throughput") resizeCharts();
}
let targetDeadLetter = null;
function route() {
  const [tab, id] = location.hash.slice(1).split("/");
  if (tab === "timeline" && id) openTimeline(id);
  else leaveTimeline();
  // `#dead-letters/<id>`: the partitions tab, that dead letter marked.
  targetDeadLetter = tab === "dead-letters" && id ? id : null;
  const name = tab === "dead-letters" ? "partitions" : tab;
  const tabs = ["orders", "timeline", "partitions", "contention", "throughput", "stock", "webhooks"];
  if (me && me.role === "admin") tabs.push("operators");
  showTab(tabs.includes(name) ? name : "orders");
}

// ---- orders -------------------------------------------------------------------------------------
const ORDER_ROWS = 200;
function orderRow(order) {
  return el("tr", { "data-order": order.id, "data-updated": Date.parse(order.updated_at) },
    el("td", {}, el("a", { href: `#timeline/${order.id}`, class: "mono", title: order.id, text: short(order.id) })),
    el("td", { text: order.client }),
    el("td", {}, el("span", { class: `badge status-${order.status}`, text: order.status })),
    el("td", { class: "num", text: order.version }),
    el("td", { class: "num", text: order.item_count }),
    el("td", { class: "num", text: money(order.total_cents, order.currency) }),
    el("td", { text: time(order.updated_at) }));
}
function orderMatchesFilter(order) {
  const status = $("#status-filter").value;
  const q = $("#order-search").value.trim().toLowerCase();
  return (!status || order.status === status) && (!q || order.id.includes(q));
}
async function loadOrders() {
  const params = new URLSearchParams();
  if ($("#status-filter").value) params.set("status", $("#status-filter").value);
  if ($("#order-search").value.trim()) params.set("q", $("#order-search").value.trim());
  try {
    const orders = await api(`/dashboard/api/orders?${params}`);
    $("#orders-table tbody").replaceChildren(...orders.map(orderRow));
    $("#orders-count").textContent = `${orders.length} shown, newest change first`;
    refreshed("orders", null);
  } catch (error) {
    $("#orders-count").textContent = error.message;
    refreshed("orders", error);
  }
}
function upsertOrder(order) {
  const body = $("#orders-table tbody");
  const existing = body.querySelector(`tr[data-order="${order.id}"]`);
  if (existing) existing.remove();
  if (!orderMatchesFilter(order)) return;
  const row = orderRow(order);
  row.classList.add("flash");
  // Newest change first: a command that changed nothing (a rejection) re-sends an order whose
  // last change is older than rows above it, so it goes where its time puts it.
  const updated = Number(row.dataset.updated);
  const after = [...body.rows].find((r) => Number(r.dataset.updated) <= updated);
  body.insertBefore(row, after ?? null);
  while (body.rows.length > ORDER_ROWS) body.deleteRow(-1);
  $("#orders-count").textContent = `${body.rows.length} shown, newest change first`;
}

// ---- order timeline -----------------------------------------------------------------------------
let timelineOrder = null;
let timelineRefresh = null;
// Moves on at every load of the timeline and when the page leaves it: an answer that comes back
// after either is dropped. (Rendered late, it would put the person back on an order they left,
// presence and all, or show an order they no longer look at.)
let timelineRound = 0;
function leaveTimeline() {
  timelineRound += 1;
  clearTimeout(timelineRefresh);
  presenceFor(null);
}
const STAGES = [
  ["received_at", "accepted_at", "seg-api", "record"],
  ["accepted_at", "published_at", "seg-publish", "publish"],
  ["published_at", "delivered_at", "seg-queue", "queue"],
  ["delivered_at", "finished_at", "seg-apply", "apply"],
];
async function openTimeline(id) {
  id = id.trim().toLowerCase();
  $("#timeline-id").value = id;
  timelineOrder = id;
  const round = ++timelineRound;
  try {
    const timeline = await api(`/dashboard/api/orders/${encodeURIComponent(id)}`);
    if (round === timelineRound) render(timeline);
  } catch (error) {
    if (round !== timelineRound) return;
    presenceFor(null);
    $("#timeline").hidden = true;
    $("#timeline-empty").hidden = false;
    $("#timeline-empty").textContent = error.message;
  }
  function render(timeline) {
    $("#timeline-empty").hidden = true;
    $("#timeline").hidden = false;
    const order = timeline.order;
    presenceFor(order ? order.id : null);
    $("#timeline-title").textContent = order
      ? `Order ${order.id} — ${order.status}, version ${order.version}, ${money(order.total_cents, order.currency)} (${order.client})`
      : `Order ${id} — not created yet`;
    // Every journey is drawn from its own start, on one scale: the longest journey spans the bar.
    // The server computes the stages (never negative; see timeline.rs).
    const duration = (c) => Math.max(0, ...c.stages.map((s) => Date.parse(s.to) - Date.parse(c.started_at)));
    const longest = Math.max(1, ...timeline.commands.map(duration));
    $("#journeys").replaceChildren(...timeline.commands.map((c) => journey(c, longest)));
    // The details are what the latest details_changed event says (each carries all of them).
    const changes = timeline.events.filter((e) => e.type === "details_changed");
    const shipped = timeline.events.find((e) => e.type === "order_shipped");
    renderDetails(changes.length ? changes[changes.length - 1].details : {}, shipped && shipped.tracking_number);
    $("#order-lines tbody").replaceChildren(...(timeline.lines.length ? timeline.lines.map((l) =>
      el("tr", { "data-sku": l.sku }, el("td", { class: "mono", text: l.sku }), el("td", { class: "num", text: l.quantity }),
        el("td", { class: "num", text: money(l.unit_price_cents, order.currency) }),
        el("td", { class: "num", text: money(l.quantity * l.unit_price_cents, order.currency) })))
      : [el("tr", {}, el("td", { colspan: 4, class: "muted", text: "no lines" }))]));
    showDesk(timeline);
    $("#events-table tbody").replaceChildren(...timeline.events.map((e) =>
      el("tr", {}, el("td", { class: "num", text: e.seq }),
        el("td", { text: e.type === "details_changed" ? `details_changed: ${e.changed.join(", ") || "nothing"}` : e.type }),
        el("td", { class: "mono", title: e.command_id, text: short(e.command_id) }),
        el("td", { class: "actor", text: e.actor || "–" }), el("td", { text: time(e.recorded_at) }))));
    $("#http-events").replaceChildren(...(timeline.http_events.length ? timeline.http_events.map((e) =>
      el("li", { class: e.kind === "idempotency_mismatch" ? "conflict" : "" },
        el("b", { text: e.kind === "idempotency_mismatch" ? "422 idempotency mismatch" : "idempotent replay" }),
        ` at ${time(e.at)} — the key belongs to command `,
        el("span", { class: "mono", title: e.command_id, text: short(e.command_id) }))) : [el("li", { class: "muted", text: "no replays or mismatches seen" })]));
  }
}
// ---- the desk: an operator edits an order's details with the version on screen ------------------
// The form starts from a version (the base). Saving sends only what the person changed, as a merge
// patch with If-Match: base. If another change came first (412 at once, or rejected
// version_conflict by the worker), the conflict view compares the base, theirs and the current
// details field by field; fields that do not overlap are applied on top without asking.
const DETAIL_FIELDS = ["shipping_address", "contact_email", "contact_phone", "note"];
let deskBase = null; // { order, version, details } the form was filled from
let deskBusy = false;
const same = (a, b) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
// The details as of `version`: the latest details_changed at or before it (each carries all).
function detailsAt(events, version) {
  const changes = events.filter((e) => e.type === "details_changed" && e.seq <= version);
  return changes.length ? changes[changes.length - 1].details : {};
}
function fillDesk(order, version, details) {
  deskBase = { order, version, details };
  const a = details.shipping_address || {};
  $("#desk-name").value = a.name || "";
  $("#desk-lines").value = (a.lines || []).join("\n");
  $("#desk-city").value = a.city || "";
  $("#desk-postal-code").value = a.postal_code || "";
  $("#desk-country").value = a.country || "";
  $("#desk-contact-email").value = details.contact_email || "";
  $("#desk-contact-phone").value = details.contact_phone || "";
  $("#desk-note").value = details.note || "";
  $("#desk-base").textContent = `(from version ${version})`;
  markDirty();
}
// The details the form says.
function deskDetails() {
  const value = (id) => $(id).value.trim();
  const lines = $("#desk-lines").value.split("\n").map((l) => l.trim()).filter(Boolean);
  const address = { name: value("#desk-name"), lines, city: value("#desk-city"),
    postal_code: value("#desk-postal-code"), country: value("#desk-country").toUpperCase() };
  const empty = !address.name && !lines.length && !address.city && !address.postal_code && !address.country;
  const details = {};
  if (!empty) details.shipping_address = address;
  for (const [field, id] of [["contact_email", "#desk-contact-email"], ["contact_phone", "#desk-contact-phone"]]) {
    if (value(id)) details[field] = value(id);
  }
  if ($("#desk-note").value.trim()) details.note = $("#desk-note").value.replace(/\s+$/, "");
  return details;
}
// The fields the person changed from the base.
function deskChanged() {
  const mine = deskDetails();
  return DETAIL_FIELDS.filter((f) => !same(mine[f], deskBase.details[f]));
}
function markDirty() {
  if (!deskBase) return;
  const changed = new Set(deskChanged());
  for (const input of document.querySelectorAll("#desk-form [data-field]")) {
    input.classList.toggle("dirty", changed.has(input.dataset.field));
  }
}
function deskStatus(text, bad = false) {
  $("#desk-status").textContent = text;
  $("#desk-status").className = `desk-status${bad ? " bad" : ""}`;
}
// Called on every render of the timeline: a clean form follows the order; an edited one keeps
// its base (the version decides when it is saved).
function showDesk(timeline) {
  const canAct = me && (me.role === "operator" || me.role === "admin") && timeline.order;
  $("#desk").hidden = !canAct;
  if (!canAct) return;
  const order = timeline.order;
  deskOrder = order;
  $("#desk-actions-base").textContent = `(${order.status}, version ${order.version})`;
  for (const control of document.querySelectorAll("#desk-actions [data-when]")) {
    control.hidden = !control.dataset.when.split(" ").includes(order.status);
  }
  const current = detailsAt(timeline.events, order.version);
  const editing = deskBase && deskBase.order === order.id && (deskChanged().length || !$("#desk-conflict").hidden || deskBusy);
  if (!editing) fillDesk(order.id, order.version, current);
}
// The order as the page last showed it: what an action's If-Match names.
let deskOrder = null;
const ACTIONS = {
  ship: { label: "Ship", input: "#desk-tracking", command: (tracking_number) => ({ type: "ship", tracking_number }), done: "Shipped" },
  refund: { label: "Refund and cancel", input: "#desk-reason", optional: true, command: (reason) => ({ type: "cancel", ...(reason ? { reason } : {}) }), done: "Refunded and cancelled" },
  cancel: { label: "Cancel", input: "#desk-reason", optional: true, command: (reason) => ({ type: "cancel", ...(reason ? { reason } : {}) }), done: "Cancelled" },
};
// An action on the order at the version on screen; the version decides, as for an edit.
async function deskAction(name) {
  const action = ACTIONS[name];
  const order = deskOrder;
  const status = (text, bad = false) => {
    $("#desk-action-status").textContent = text;
    $("#desk-action-status").className = `desk-status${bad ? " bad" : ""}`;
  };
  const input = $(action.input);
  const value = input.value.trim();
  if (!action.optional && !value) { status(`${action.label} needs a ${input.parentElement.firstChild.textContent.trim()}.`, true); input.focus(); return; }
  if (!input.checkValidity()) { status(input.validationMessage, true); input.focus(); return; }
  if (!order || !confirm(`${action.label}: order ${short(order.id)} at version ${order.version}?`)) return;
  status("Sending…");
  try {
    const response = await fetch(`/dashboard/api/orders/${order.id}/commands`, {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json", "if-match": `"${order.version}"`, "x-csrf-token": me.csrf_token },
      body: JSON.stringify(action.command(value)),
    });
    const body = await response.json().catch(() => ({}));
    let outcome = null;
    if (response.status === 202) outcome = await commandOutcome(order.id, body.command_id);
    else if (response.status !== 412) { status(body.detail || `refused (${response.status})`, true); return; }
    if (outcome && outcome.status === "applied") {
      status(`${action.done}: version ${outcome.result_version}.`);
      input.value = "";
    } else if (response.status === 412 || (outcome && outcome.reason === "version_conflict")) {
      const timeline = await api(`/dashboard/api/orders/${order.id}`);
      const since = timeline.events.filter((e) => e.seq > order.version)
        .map((e) => `${e.actor || "someone"} at ${time(e.recorded_at)} (${e.type})`).join(", ");
      status(`Not done: the order changed since version ${order.version} (${since}); look at it again and decide.`, true);
    } else if (outcome) {
      status(`Not done: ${outcome.status} ${outcome.reason || ""}`.trim(), true);
    } else {
      status("Sent; still waiting for the worker — the timeline will show it.", true);
    }
  } catch (error) {
    status(error.message, true);
  }
  openTimeline(order.id);
}
async function saveDetails(event) {
  if (event) event.preventDefault();
  const changed = deskChanged();
  if (!changed.length) { deskStatus("Nothing changed."); return; }
  await sendDetails(deskBase.version, changed);
}
// Sends the person's `fields` as a merge patch against `version`, and waits for the outcome.
async function sendDetails(version, fields) {
  if (!fields.length) {
    $("#desk-conflict").hidden = true;
    deskStatus(`Version ${version} already says what you wanted; nothing to send.`);
    releaseLease();
    deskBase = null;
    openTimeline(timelineOrder);
    return;
  }
  const mine = deskDetails();
  const patch = Object.fromEntries(fields.map((f) => [f, mine[f] ?? null]));
  const order = deskBase.order;
  deskBusy = true;
  deskStatus("Saving…");
  try {
    const response = await fetch(`/dashboard/api/orders/${order}/commands`, {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json", "if-match": `"${version}"`, "x-csrf-token": me.csrf_token },
      body: JSON.stringify({ type: "update_details", details: patch }),
    });
    const body = await response.json().catch(() => ({}));
    if (response.status === 412) return await showConflict(version, fields);
    if (response.status !== 202) { deskStatus(body.detail || `refused (${response.status})`, true); return; }
    const outcome = await commandOutcome(order, body.command_id);
    if (!outcome) { deskStatus("Sent; still waiting for the worker — the timeline will show it.", true); return; }
    if (outcome.status === "applied") {
      $("#desk-conflict").hidden = true;
      deskStatus(`Saved: version ${outcome.result_version}.`);
      releaseLease();
      deskBase = null;
      openTimeline(order);
    } else if (outcome.reason === "version_conflict") {
      await showConflict(version, fields);
    } else {
      deskStatus(`Not applied: ${outcome.status} ${outcome.reason || ""}`.trim(), true);
    }
  } catch (error) {
    deskStatus(error.message, true);
  } finally {
    deskBusy = false;
  }
}
// The final state of a command, read from the order's timeline (up to 10 s).
async function commandOutcome(order, commandId) {
  const deadline = Date.now() + 10000;
  while (Date.now() < deadline) {
    const timeline = await api(`/dashboard/api/orders/${order}`);
    const command = timeline.commands.find((c) => c.id === commandId);
    if (command && command.status !== "accepted") return command;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  return null;
}
const showValue = (field, value) => value == null ? "–" : field === "shipping_address"
  ? [value.name, ...(value.lines || []), `${value.postal_code} ${value.city}`, value.country].join(" · ")
  : String(value);
// Someone else changed the order after `version`: who, and the three versions side by side.
async function showConflict(version, fields) {
  const timeline = await api(`/dashboard/api/orders/${deskBase.order}`);
  const order = timeline.order;
  const base = detailsAt(timeline.events, version);
  const current = detailsAt(timeline.events, order.version);
  const mine = deskDetails();
  const theirs = timeline.events.filter((e) => e.seq > version);
  const overlap = fields.filter((f) => !same(current[f], base[f]) && !same(current[f], mine[f]));
  if (!overlap.length) {
    // Nothing the others changed is what this person changed: apply theirs on top, unasked.
    deskStatus(`Version ${order.version} came first; your changes do not overlap it, so they are applied on top.`);
    return sendDetails(order.version, fields.filter((f) => !same(current[f], mine[f])));
  }
  $("#desk-conflict-who").textContent = `Changed since version ${version} by ` +
    theirs.map((e) => `${e.actor || "someone"} at ${time(e.recorded_at)} (${e.type})`).join(", ") +
    `. The order is at version ${order.version} now: apply yours on top, or keep the current one.`;
  $("#desk-comparison tbody").replaceChildren(...DETAIL_FIELDS.map((f) => {
    const mineChanged = fields.includes(f);
    const theirsChanged = !same(current[f], base[f]);
    const mark = mineChanged && theirsChanged && !same(current[f], mine[f]) ? "both" : (mineChanged || theirsChanged ? "changed" : "");
    return el("tr", { "data-field": f },
      el("td", { text: f.replace("_", " ") }),
      el("td", { text: showValue(f, base[f]) }),
      el("td", { class: mineChanged ? mark : "", text: showValue(f, mine[f]) }),
      el("td", { class: theirsChanged ? mark : "", text: showValue(f, current[f]) }));
  }));
  $("#desk-conflict").hidden = false;
  $("#desk-conflict").scrollIntoView({ block: "center" });
  deskStatus("Not saved: someone else changed this order first.", true);
  $("#desk-apply-mine").onclick = () => sendDetails(order.version, fields.filter((f) => !same(current[f], mine[f])));
  $("#desk-keep-current").onclick = () => {
    $("#desk-conflict").hidden = true;
    releaseLease();
    fillDesk(order.id, order.version, current);
    deskStatus(`Kept version ${order.version}.`);
  };
}
// An order's details as a definition list; "–" for what is not set.
function renderDetails(details, trackingNumber) {
  const a = details.shipping_address;
  const rows = [
    ["shipping address", a ? [a.name, ...a.lines, `${a.postal_code} ${a.city}`, a.country].join(" · ") : null],
    ["contact email", details.contact_email],
    ["contact phone", details.contact_phone],
    ["note", details.note],
    ["tracking number", trackingNumber],
  ];
  $("#order-details").replaceChildren(...rows.flatMap(([name, value]) =>
    [el("dt", { text: name }), el("dd", { "data-detail": name, class: value ? "" : "muted", text: value || "–" })]));
}
function journey(c, longest) {
  const bar = el("div", { class: "bar" });
  const origin = Date.parse(c.started_at);
  const at = (iso) => `${(((Date.parse(iso) - origin) / longest) * 100).toFixed(3)}%`;
  const stages = [];
  for (const stage of c.stages) {
    const kind = { record: "seg-api", publish: "seg-publish", queue: "seg-queue", apply: "seg-apply" }[stage.name];
    const ms = Math.round(stage.ms);
    stages.push(stage.note ? `${stage.name} ${ms} ms (${stage.note})` : `${stage.name} ${ms} ms`);
    if (stage.ms === 0) continue;
    const segment = el("i", { class: kind, title: `${stage.name}: ${time(stage.from)} → ${time(stage.to)} (${stage.ms} ms)` });
    segment.style.left = at(stage.from);
    segment.style.width = `max(2px, calc(${at(stage.to)} - ${at(stage.from)}))`;
    bar.append(segment);
  }
  const total = c.total_ms != null ? `${Math.round(c.total_ms)} ms to ${c.status}` : "in flight";
  const facts = [
    `#${c.seq} ${c.kind}`,
    c.actor ? `by ${c.actor}` : null,
    `${c.source}`,
    `partition ${c.partition}`,
    c.attempt ? `attempt ${c.attempt}` : null,
    c.expected_version != null ? `If-Match "${c.expected_version}"` : null,
    total,
  ].filter(Boolean).join(" · ");
  const row = el("div", { class: `journey status-${c.status}${c.conflict ? " conflict" : ""}`, "data-command": c.id },
    el("div", { class: "journey-head" },
      el("span", { class: `badge status-${c.status}`, text: c.reason ? `${c.status}: ${c.reason}` : c.status }),
      el("span", { text: facts }),
      el("span", { class: "mono muted", title: c.id, text: short(c.id) })),
    bar,
    el("div", { class: "stages muted", text: `${c.source === "amqp" ? "received by the worker" : "received"} ${time(c.started_at)} · ${stages.join(" · ") || "not delivered yet"}` }));
  if (c.redrive_of != null) {
    row.append(el("div", { class: "redrive-note" }, "a redrive of ",
      el("a", { class: "dead-letter", href: `#dead-letters/${c.redrive_of}`, text: `dead letter #${c.redrive_of}` })));
  }
  if (c.conflict) {
    const w = c.conflict.winner;
    row.append(el("div", { class: "conflict-note" },
      el("b", { text: `⚡ ${c.conflict.reason}` }), ` — ${c.conflict.detail}`,
      w ? el("span", {}, "; won by ",
        el("a", { class: "mono winner", href: `#timeline/${w.order_id}`, title: w.command_id,
          text: `${w.kind || "command"}${w.seq ? " #" + w.seq : ""} ${short(w.command_id)}${w.order_id !== timelineOrder ? " (order " + short(w.order_id) + ")" : ""}` })) : ""));
  }
  return row;
}
function scheduleTimelineRefresh(orderId) {
  if (orderId !== timelineOrder || $("#tab-timeline").hidden) return;
  clearTimeout(timelineRefresh);
  timelineRefresh = setTimeout(() => openTimeline(timelineOrder), 150);
}

// ---- partitions and dead letters ----------------------------------------------------------------
function renderPartitions(view) {
  $("#partitions-table tbody").replaceChildren(...view.partitions.map((p) =>
    el("tr", { "data-partition": p.partition, class: p.oldest_pending_age_secs > thresholds.partition_lag_secs ? "lagging" : "" },
      el("td", { class: "num", text: p.partition }),
      el("td", { class: "num depth", text: p.depth ?? "?" }),
      el("td", { class: "num", title: p.active_consumers == null ? "" : `${p.active_consumers} active`, text: p.consumers ?? "?" }),
      el("td", { class: "active-worker", text: p.active_worker || "–" }),
      el("td", { class: "lease-owner", title: `lease ${p.lease_state}`, text: p.owner ? (p.lease_state === "draining" ? `${p.owner} (draining)` : p.owner) : "free" }),
      el("td", { class: "num epoch", text: p.epoch }),
      el("td", { class: "num moves", text: p.moves_last_hour }),
      el("td", { text: p.workers.filter((w) => w !== p.active_worker).join(", ") || "–" }),
      el("td", { class: "num", text: p.messages_per_s == null ? "–" : p.messages_per_s.toFixed(1) }),
      el("td", { class: "num", text: p.pending }),
      el("td", { class: "num", text: p.pending ? ago(p.oldest_pending_age_secs) : "–" }),
      el("td", { class: "num", text: p.redeliveries }),
      el("td", { text: time(p.last_delivery_at) }))));
  // Open: neither redriven nor acknowledged. The broker's queue keeps every dead letter, so its
  // depth never drops on a redrive; it is only the detail.
  const kept = view.dead_letter_depth == null ? "" : ` · ${view.dead_letter_depth} kept in the broker's dead-letter queue`;
  $("#dlq-depth").textContent = `(${view.dead_letters_open} open${kept})`;
}
async function loadPartitions() {
  try {
    renderPartitions(await api("/dashboard/api/partitions"));
    const letters = await api("/dashboard/api/dead-letters");
    $("#dead-letters-table tbody").replaceChildren(...(letters.length ? letters.map(deadLetterRow) :
      [el("tr", {}, el("td", { colspan: 7, class: "muted", text: "no dead letters" }))]));
    const target = targetDeadLetter && $(`#dead-letters-table tr[data-dead-letter="${targetDeadLetter}"]`);
    if (target) {
      target.classList.add("target");
      target.scrollIntoView({ block: "center" });
    }
    refreshed("partitions", null);
  } catch (error) {
    refreshed("partitions", error);
  }
}
function deadLetterRow(d) {
  // Redrive only where it can work (the server says why not); acknowledge any open letter.
  let action;
  if (d.redriven_as && !d.order_id) {
    action = el("span", { class: "muted", text: `redriven as ${short(d.redriven_as)}` });
  } else if (d.redriven_as) {
    action = el("a", { class: "redriven mono", href: `#timeline/${d.order_id}`, title: d.redriven_as, text: `redriven as ${short(d.redriven_as)}` });
  } else if (d.acknowledged_at) {
    action = el("span", { class: "muted", text: `acknowledged by ${d.acknowledged_by || "an admin"}` });
  } else if (!me || me.role !== "admin") {
    // Redrive and acknowledge are an admin's; the server refuses them to anyone else anyway.
    action = el("span", { class: "muted", text: "open (an admin may redrive it)" });
  } else {
    action = el("span", {},
      d.redrivable
        ? el("button", { type: "button", class: "redrive", onclick: () => redrive(d.id) }, "Redrive")
        : el("span", { class: "muted", title: d.not_redrivable_because || "", text: "cannot be redriven" }),
      el("button", { type: "button", class: "acknowledge", title: "seen; not to be redriven (clears the banner)", onclick: () => acknowledge(d.id) }, "Acknowledge"));
  }
  return el("tr", { "data-dead-letter": d.id },
    el("td", { class: "num", text: d.id }), el("td", { text: time(d.dead_lettered_at) }),
    el("td", { class: "num", text: d.partition }), el("td", { class: "reason", text: d.reason }),
    el("td", { class: "mono", text: short(d.command_id) }),
    el("td", {}, d.order_id ? el("a", { class: "mono", href: `#timeline/${d.order_id}`, text: short(d.order_id) }) : "–"),
    el("td", {}, action));
}
async function redrive(id) {
  if (!confirm(`Re-submit dead letter ${id} as a new command at the end of its order?`)) return;
  try {
    const result = await api(`/dashboard/api/dead-letters/${id}/redrive`, {
      method: "POST", headers: { "content-type": "application/json" }, body: "{}",
    });
    banner("info", `dead letter ${id} redriven as command ${short(result.command_id)}`);
  } catch (error) {
    banner("error", `redrive failed: ${error.message}`);
  }
  loadPartitions();
}
async function acknowledge(id) {
  try {
    await api(`/dashboard/api/dead-letters/${id}/acknowledge`, {
      method: "POST", headers: { "content-type": "application/json" }, body: "{}",
    });
    banner("info", `dead letter ${id} acknowledged`);
  } catch (error) {
    banner("error", `acknowledge failed: ${error.message}`);
  }
  loadPartitions();
}

// ---- operators (admins) -------------------------------------------------------------------------
const when = (iso) => (iso ? new Date(iso).toLocaleString([], { hour12: false }) : "–");
function operatorRow(o) {
  const self = me && o.name === me.name;
  const action = o.disabled_at || self
    ? el("span", { class: "muted", text: self ? "you" : "" })
    : el("button", { type: "button", class: "disable", onclick: () => disableOperator(o.name) }, "Disable");
  return el("tr", { "data-operator": o.name },
    el("td", { text: o.name }), el("td", { text: o.role }),
    el("td", { text: o.disabled_at ? `disabled ${when(o.disabled_at)}` : "live" }),
    el("td", { class: "num", text: o.live_sessions }), el("td", { text: when(o.created_at) }),
    el("td", {}, action));
}
// ---- stock: every SKU's figures; admins set what is available (audited) ----------------------
async function loadStock() {
  try {
    const q = $("#stock-search").value.trim();
    const stock = await api(`/dashboard/api/inventory${q ? `?q=${encodeURIComponent(q)}` : ""}`);
    $("#stock-table tbody").replaceChildren(...stock.map((s) =>
      el("tr", { "data-sku": s.sku }, el("td", { class: "mono", text: s.sku }),
        el("td", { class: "num", text: s.available }), el("td", { class: "num", text: s.reserved }),
        el("td", { class: "num", text: s.shipped }))));
    refreshed("stock", null);
  } catch (error) {
    refreshed("stock", error);
  }
}
async function setStock(event) {
  event.preventDefault();
  const sku = $("#stock-sku").value.trim();
  const available = Number($("#stock-available").value);
  try {
    const stock = await api(`/dashboard/api/inventory/${encodeURIComponent(sku)}`, {
      method: "PUT", headers: { "content-type": "application/json" }, body: JSON.stringify({ available }),
    });
    $("#stock-status").textContent = `${stock.sku}: ${stock.available} available, ${stock.reserved} reserved.`;
    $("#stock-status").className = "desk-status";
    await loadStock();
  } catch (error) {
    $("#stock-status").textContent = error.message;
    $("#stock-status").className = "desk-status bad";
  }
}
// ---- webhooks: every client's endpoints, an endpoint's delivery log, a retry ------------------
let webhookShown = null; // the endpoint whose log is open
let webhooksTimer = null; // the next refresh, every 5 s while the tab shows
async function loadWebhooks() {
  clearTimeout(webhooksTimer);
  if ($("#tab-webhooks").hidden) return;
  webhooksTimer = setTimeout(loadWebhooks, 5000);
  try {
    const endpoints = await api("/dashboard/api/webhooks");
    $("#webhooks-table tbody").replaceChildren(...endpoints.map((e) => {
      const row = el("tr", { "data-endpoint": e.id, class: e.status === "failing" ? "failing" : "" },
        el("td", { text: e.client }),
        el("td", {}, el("a", { href: "#webhooks", class: "mono", text: e.url })),
        el("td", { class: "status", text: e.status }),
        el("td", { class: "num", text: e.pending }),
        el("td", { text: [e.failing_reason, e.feed_gap].filter(Boolean).join("; ") }),
        el("td", { text: time(e.created_at) }));
      row.querySelector("a").addEventListener("click", (event) => { event.preventDefault(); showWebhookLog(e); });
      return row;
    }));
    if (webhookShown) {
      const still = endpoints.find((e) => e.id === webhookShown.id);
      if (still) await showWebhookLog(still); else $("#webhook-log").hidden = true;
    }
    refreshed("webhooks", null);
  } catch (error) {
    refreshed("webhooks", error);
  }
}
async function showWebhookLog(endpoint) {
  webhookShown = endpoint;
  const log = await api(`/dashboard/api/webhooks/${endpoint.id}/deliveries`);
  $("#webhook-log-title").textContent = `${endpoint.url} (${endpoint.client}): ${endpoint.status}` +
    `${log.has_more ? ", the last 100 deliveries" : ""}`;
  const mayRetry = me.role !== "viewer";
  $("#deliveries-table tbody").replaceChildren(...log.deliveries.map((d) => {
    const answer = d.last_response_status ? `HTTP ${d.last_response_status}` : (d.last_error || "–");
    const retry = mayRetry && d.status === "given_up"
      ? el("button", { type: "button", class: "retry", text: "Retry" })
      : "";
    if (retry) retry.addEventListener("click", () => retryDelivery(endpoint, d));
    return el("tr", { "data-delivery": d.id, class: d.status },
      el("td", { class: "num", text: d.id }), el("td", { class: "num", text: d.event_id }),
      el("td", { text: d.event_type }),
      el("td", {}, el("a", { href: `#timeline/${d.order_id}`, class: "mono", title: d.order_id, text: short(d.order_id) })),
      el("td", { class: "status", text: d.status }), el("td", { class: "num", text: d.attempts }),
      el("td", { title: d.last_error || "", text: answer }),
      el("td", { text: d.status === "pending" ? time(d.next_attempt_at) : "" }),
      el("td", {}, retry));
  }));
  $("#webhook-log").hidden = false;
}
async function retryDelivery(endpoint, delivery) {
  try {
    const answer = await api(`/dashboard/api/webhooks/${endpoint.id}/deliveries/${delivery.id}/retry`, {
      method: "POST", headers: { "content-type": "application/json" }, body: "{}",
    });
    banner("info", {
      retrying: `delivery ${delivery.id} goes out again now`,
      pending: `delivery ${delivery.id} is waiting for its turn already`,
      delivered: `delivery ${delivery.id} was delivered meanwhile`,
    }[answer.status]);
  } catch (error) {
    banner("error", `retrying delivery ${delivery.id} failed: ${error.message}`);
  }
  loadWebhooks();
}

async function loadOperators() {
  try {
    const operators = await api("/dashboard/api/operators");
    $("#operators-table tbody").replaceChildren(...operators.map(operatorRow));
    refreshed("operators", null);
  } catch (error) {
    refreshed("operators", error);
  }
}
async function createOperator(event) {
  event.preventDefault();
  const name = $("#op-name").value.trim();
  try {
    await api("/dashboard/api/operators", {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ name, role: $("#op-role").value, password: $("#op-password").value }),
    });
    $("#op-password").value = "";
    $("#op-name").value = "";
    banner("info", `operator ${name} created`);
  } catch (error) {
    banner("error", `creating ${name} failed: ${error.message}`);
  }
  loadOperators();
}
async function disableOperator(name) {
  if (!confirm(`Disable ${name}? Their sessions and live feeds end at once.`)) return;
  try {
    await api(`/dashboard/api/operators/${encodeURIComponent(name)}/disable`, {
      method: "POST", headers: { "content-type": "application/json" }, body: "{}",
    });
    banner("info", `operator ${name} disabled`);
  } catch (error) {
    banner("error", `disabling ${name} failed: ${error.message}`);
  }
  loadOperators();
}

// ---- contention, throughput, alerts -------------------------------------------------------------
const HISTORY = 300;
const REASONS = ["version_conflict", "insufficient_stock", "invalid_transition", "payment_declined", "other"];
const series = { t: [], accepted: [], applied: [], rejected: [], p50: [], p90: [], p99: [], ...Object.fromEntries(REASONS.map((r) => [r, []])) };
const charts = {};
let thresholds = { conflict_rate: 0.25, outbox_lag_secs: 5, partition_lag_secs: 10 };

function makeCharts() {
  const line = (label, stroke) => ({ label, stroke, width: 2, spanGaps: true });
  const opts = (title, lines) => ({
    width: chartWidth(), height: 220, title,
    // Always the last HISTORY seconds, so that a few points do not stretch over years.
    scales: { x: { time: true, range: (u, min, max) => [max - HISTORY, max] } }, series: [{}, ...lines],
  });
  charts.rejections = new uPlot(opts("", REASONS.map((r, i) =>
    line(r, ["#d9480f", "#c2255c", "#6741d9", "#1971c2", "#868e96"][i]))), [series.t, ...REASONS.map((r) => series[r])], $("#chart-rejections"));
  charts.rates = new uPlot(opts("", [line("accepted/s", "#1971c2"), line("applied/s", "#2f9e44"), line("rejected/s", "#e8590c")]),
    [series.t, series.accepted, series.applied, series.rejected], $("#chart-rates"));
  charts.latency = new uPlot(opts("", [line("p50", "#2f9e44"), line("p90", "#f08c00"), line("p99", "#e03131")]),
    [series.t, series.p50, series.p90, series.p99], $("#chart-latency"));
}
function chartWidth() {
  return Math.max(200, document.body.clientWidth - 60);
}
function resizeCharts() {
  const width = chartWidth();
  for (const chart of Object.values(charts)) chart.setSize({ width, height: 220 });
}
// One second of the charts' series: a statistics frame, or a point of the server's history.
function pushPoint(stats) {
  const t = Date.parse(stats.at) / 1000;
  if (series.t.length && t <= series.t[series.t.length - 1]) return false;
  const push = (name, value) => { series[name].push(value); if (series[name].length > HISTORY) series[name].shift(); };
  push("t", t);
  push("accepted", stats.accepted_per_s);
  push("applied", stats.applied_per_s);
  push("rejected", stats.rejected_per_s);
  push("p50", stats.latency_ms ? stats.latency_ms.p50 : null);
  push("p90", stats.latency_ms ? stats.latency_ms.p90 : null);
  push("p99", stats.latency_ms ? stats.latency_ms.p99 : null);
  const known = REASONS.slice(0, -1);
  for (const reason of known) push(reason, stats.rejections[reason] || 0);
  push("other", Object.entries(stats.rejections).filter(([r]) => !known.includes(r)).reduce((sum, [, n]) => sum + n, 0));
  return true;
}
function drawCharts() {
  charts.rejections.setData([series.t, ...REASONS.map((r) => series[r])]);
  charts.rates.setData([series.t, series.accepted, series.applied, series.rejected]);
  charts.latency.setData([series.t, series.p50, series.p90, series.p99]);
}
// The last five minutes, from the server, so the charts do not start empty.
async function backfill() {
  try {
    for (const point of await api("/dashboard/api/stats/history")) pushPoint(point);
    drawCharts();
    refreshed("history", null);
  } catch (error) {
    refreshed("history", error);
  }
}
function onStats(stats) {
  if (pushPoint(stats)) drawCharts();
  // Unknown (nothing finished in the last minute) reads "–", not 0 %.
  $("#c-rate").textContent = stats.conflict_rate == null ? "–" : `${(stats.conflict_rate * 100).toFixed(1)} % of ${stats.finished_last_minute}`;
  $("#c-edits").textContent = `${stats.edit_conflicts.operators} · ${stats.edit_conflicts.api}`;
  $("#c-locks").textContent = stats.lock_waits;
  $("#c-deadlocks").textContent = stats.deadlocks;
  $("#c-replays").textContent = stats.idempotent_replays;
  $("#c-mismatches").textContent = stats.idempotency_mismatches;
  $("#c-outbox").textContent = `${stats.outbox_backlog} (${ago(stats.outbox_oldest_age_secs)})`;
  $("#hot-orders tbody").replaceChildren(...stats.hot_orders.map((o) => el("tr", {},
    el("td", {}, el("a", { class: "mono", href: `#timeline/${o.order_id}`, text: short(o.order_id) })),
    el("td", { class: "num", text: o.conflicts }), el("td", { class: "num", text: o.commands }))));
  $("#hot-skus tbody").replaceChildren(...stats.hot_skus.map((s) => el("tr", {},
    el("td", { class: "mono", text: s.sku }), el("td", { class: "num", text: s.reserves }), el("td", { class: "num", text: s.lost }))));
  renderAlerts(stats.alerts);
}
function renderAlerts(alerts) {
  $("#alerts").replaceChildren(...alerts.map((a) => el("div", { class: `banner alert-${a.kind}`, role: "alert" }, el("b", { text: a.kind.replace("_", " ") }), ` — ${a.message}`)));
}
function banner(kind, message) {
  const node = el("div", { class: `toast ${kind}`, text: message });
  document.body.append(node);
  setTimeout(() => node.remove(), 5000);
}

// ---- presence: who else has this order open, and who is editing it -------------------------------
// The page says "I have it open" every few seconds while the timeline shows an order (the server
// forgets it 15 s after the last time), and "I left" when it leaves. The first edit of the form
// takes the order's edit lease, renewed while the person edits and let go when they save or
// discard; others see "<name> is editing since 14:02" before they start. The lease warns; the
// version decides. Changes arrive live as `presence` frames.
const RENEW_MS = 5000;
let presenceOrder = null;
let presenceTimer = null;
let presenceNow = null;
let lease = null; // { order, timer } while this page holds the order's edit lease
let leaseWanted = false; // a claim is on its way
let leaseRound = 0; // moves on at every let-go: a claim answered after it is let go at once
const hhmm = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
const withCsrf = (method) => ({ method, credentials: "same-origin", headers: { "x-csrf-token": me.csrf_token } });
function presenceFor(id) {
  if (presenceOrder === id) return;
  leavePresence();
  presenceOrder = id;
  if (!id) return;
  presenceBeat();
  presenceTimer = setInterval(presenceBeat, RENEW_MS);
}
// The last "I have it open" sent: "I left" goes only after its answer, so that a renewal still on
// its way cannot arrive after the departure and put the person back for 15 s.
let beatInFlight = Promise.resolve();
async function presenceBeat() {
  const id = presenceOrder;
  if (!id) return; // left already (a lease answer that came back late)
  const request = fetch(`/dashboard/api/orders/${id}/presence`, withCsrf("PUT")).catch(() => null);
  beatInFlight = request;
  const response = await request;
  if (id !== presenceOrder) return;
  if (response && response.status === 401) { location.reload(); return; }
  renderPresence(response && response.ok ? await response.json() : null);
}
function leavePresence() {
  clearInterval(presenceTimer);
  releaseLease();
  if (presenceOrder) {
    const left = `/dashboard/api/orders/${presenceOrder}/presence`;
    beatInFlight.then(() => fetch(left, { ...withCsrf("DELETE"), keepalive: true })).catch(() => {});
  }
  presenceOrder = null;
  renderPresence(null);
}
function renderPresence(presence) {
  presenceNow = presence;
  const editor = presence && presence.editor;
  const mine = Boolean(editor && lease && lease.order === presence.order_id && editor.name === me.name);
  const others = presence ? presence.viewers.filter((v) => v.name !== me.name) : [];
  $("#presence").hidden = !others.length;
  $("#presence").replaceChildren(...(others.length ? ["Also on this order:", ...others.map((v) =>
    el("span", { class: `present${editor && editor.name === v.name ? " editing" : ""}`, "data-name": v.name,
      title: `${v.role}, here since ${hhmm(v.since)}`, text: v.name }))] : []));
  const banner = $("#desk-lease");
  banner.hidden = !editor;
  banner.classList.toggle("mine", mine);
  if (!editor) return;
  $("#desk-lease-text").textContent = mine
    ? `You are editing since ${hhmm(editor.since)}; others see it.`
    : `${editor.name} is editing since ${hhmm(editor.since)}. You may still edit; the version decides.`;
  $("#desk-lease-break").hidden = mine || me.role !== "admin";
}
// The form's first change takes the lease (once; a refusal leaves the warning on screen).
async function claimLease() {
  if (lease || leaseWanted || !deskBase || !deskChanged().length) return;
  const order = deskBase.order;
  const round = leaseRound;
  leaseWanted = true;
  try {
    const response = await fetch(`/dashboard/api/orders/${order}/edit-lease`, withCsrf("POST"));
    const body = await response.json().catch(() => ({}));
    if (response.ok && (round !== leaseRound || presenceOrder !== order)) {
      // Saved, discarded or left while the claim was on its way.
      fetch(`/dashboard/api/orders/${order}/edit-lease`, { ...withCsrf("DELETE"), keepalive: true }).catch(() => {});
    } else if (response.ok) {
      lease = { order, timer: setInterval(renewLease, RENEW_MS) };
    } else if (response.status === 409) {
      deskStatus(body.detail, true);
    }
  } finally {
    if (presenceOrder) presenceBeat();
  }
}
async function renewLease() {
  if (!lease) return;
  const response = await fetch(`/dashboard/api/orders/${lease.order}/edit-lease`, withCsrf("PUT")).catch(() => null);
  if (response && response.status === 409) {
    const body = await response.json().catch(() => ({}));
    clearInterval(lease.timer);
    lease = null;
    deskStatus(`${body.detail}. Your edit still counts when you save; the version decides.`, true);
    presenceBeat();
  }
}
function releaseLease() {
  leaseWanted = false;
  leaseRound += 1;
  if (!lease) return;
  clearInterval(lease.timer);
  fetch(`/dashboard/api/orders/${lease.order}/edit-lease`, { ...withCsrf("DELETE"), keepalive: true }).catch(() => {});
  lease = null;
}
async function breakLease() {
  const editor = presenceNow && presenceNow.editor;
  if (!editor || !confirm(`Break ${editor.name}'s edit lease on this order?`)) return;
  const broken = await api(`/dashboard/api/orders/${presenceNow.order_id}/edit-lease/break`, { method: "POST" });
  banner("info", broken.editor ? `Broke ${broken.editor.name}'s edit lease.` : "Nobody held the lease any more.");
  presenceBeat();
}

// ---- the live feed --------------------------------------------------------------------------------
function connect() {
  const source = new EventSource("/dashboard/api/stream");
  source.onopen = () => { feedOpen = true; showFeedState(); };
  source.onerror = () => {
    feedOpen = false;
    showFeedState();
    // Refused for good (the session ended): back to the sign-in page, which `api` does on a 401.
    if (source.readyState === EventSource.CLOSED) api("/dashboard/session").catch(() => {});
  };
  source.addEventListener("order", (e) => upsertOrder(JSON.parse(e.data)));
  source.addEventListener("command", (e) => scheduleTimelineRefresh(JSON.parse(e.data).order_id));
  source.addEventListener("conflict", (e) => scheduleTimelineRefresh(JSON.parse(e.data).order_id));
  source.addEventListener("stats", (e) => onStats(JSON.parse(e.data)));
  source.addEventListener("partitions", (e) => { if (!$("#tab-partitions").hidden) renderPartitions(JSON.parse(e.data)); });
  source.addEventListener("presence", (e) => {
    const presence = JSON.parse(e.data);
    if (presence.order_id === presenceOrder) renderPresence(presence);
  });
  source.addEventListener("lagged", () => loadOrders());
}

async function dashboardPage() {
  me = await api("/dashboard/session");
  $("#who").textContent = `${me.name} · ${me.role}`;
  document.body.dataset.role = me.role;
  $("#nav-operators").hidden = me.role !== "admin";
  $("#operator-form").addEventListener("submit", createOperator);
  $("#stock-form").hidden = me.role !== "admin";
  $("#stock-form").addEventListener("submit", setStock);
  let stockDelay;
  $("#stock-search").addEventListener("input", () => { clearTimeout(stockDelay); stockDelay = setTimeout(loadStock, 200); });
  $("#desk-form").addEventListener("submit", saveDetails);
  for (const button of document.querySelectorAll("#desk-actions [data-action]")) {
    button.addEventListener("click", () => deskAction(button.dataset.action));
  }
  $("#desk-form").addEventListener("input", () => { markDirty(); claimLease(); });
  $("#desk-lease-break").addEventListener("click", breakLease);
  window.addEventListener("pagehide", leavePresence);
  $("#desk-reset").addEventListener("click", () => {
    $("#desk-conflict").hidden = true;
    releaseLease();
    deskBase = null;
    deskStatus("");
    if (timelineOrder) openTimeline(timelineOrder);
  });
  thresholds = await api("/dashboard/api/config");
  $("#thresholds").textContent = `Banners: conflict rate above ${thresholds.conflict_rate * 100} %, outbox lag above ${thresholds.outbox_lag_secs} s, partition lag above ${thresholds.partition_lag_secs} s, any dead letter not redriven.`;
  makeCharts();
  $("#status-filter").addEventListener("change", loadOrders);
  let searchDelay;
  $("#order-search").addEventListener("input", () => { clearTimeout(searchDelay); searchDelay = setTimeout(loadOrders, 200); });
  $("#timeline-open").addEventListener("click", () => { location.hash = `#timeline/${$("#timeline-id").value.trim()}`; });
  $("#sign-out").addEventListener("click", async () => {
    await api("/dashboard/session", { method: "DELETE" }).catch(() => {});
    location.reload();
  });
  window.addEventListener("hashchange", route);
  window.addEventListener("resize", resizeCharts);
  await loadOrders();
  route();
  await backfill();
  connect();
  setInterval(() => { if (!$("#tab-partitions").hidden) loadPartitions(); }, 5000);
}

document.addEventListener("DOMContentLoaded", () => {
  if (document.body.classList.contains("sign-in")) signInPage();
  else dashboardPage();
});
