// mailguard admin console.  Vanilla JS, no library, no external request.
// Every value from the server is put in the page with textContent /
// createElement (never HTML parsing of data): account names and devices are
// attacker-controlled.  URLs are relative, so the console works wherever the
// admin app is mounted.
"use strict";

(function () {
  const TOKEN_KEY = "mailguard-admin-token";
  const REFRESH_MS = 5000;
  const SVG = "http://www.w3.org/2000/svg";
  let timer = null;
  let blocks = [];
  let blocksTotal = 0; // GET /blocks "count": every block in the store
  let busy = false;
  let note = "";  // the last action's outcome, shown for a while
  let noteUntil = 0;

  const $ = (id) => document.getElementById(id);

  class Denied extends Error {}

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function utc(epoch) {
    if (typeof epoch !== "number") return "";
    return new Date(epoch * 1000).toISOString().replace("T", " ").slice(0, 19);
  }

  function clock(epoch) {
    return utc(epoch).slice(11);
  }

  function span(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + s + "s";
    return s + "s";
  }

  function tell(text) {
    note = text;
    noteUntil = Date.now() + 15000;
    status(text);
  }

  function status(text, isError) {
    const node = $("status");
    node.textContent = text;
    node.className = isError ? "error" : "muted";
  }

  // ---------------------------------------------------------------- calls
  async function api(path, options) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new Denied("no token");
    const init = Object.assign({ cache: "no-store", credentials: "omit" }, options || {});
    init.headers = Object.assign({ Authorization: "Bearer " + token }, init.headers || {});
    const answer = await fetch(path, init);
    if (answer.status === 403) {
      logout("The token was refused (403), or this address may not use the admin app.");
      throw new Denied("403");
    }
    return answer;
  }

  async function json(path, options) {
    const answer = await api(path, options);
    let data = null;
    try { data = await answer.json(); } catch (e) { data = null; }
    if (!answer.ok) {
      const why = data && typeof data.error === "string" ? data.error : "HTTP " + answer.status;
      throw new Error(path + ": " + why);
    }
    return data;
  }

  function post(path, body) {
    return json(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  }

  // ---------------------------------------------------------------- login
  function showApp(on) {
    $("login").hidden = on;
    $("app").hidden = !on;
    for (const node of document.querySelectorAll(".app-only")) node.hidden = !on;
  }

  function login(event) {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    $("login-error").textContent = "";
    showApp(true);
    refresh(true);
  }

  function logout(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (timer !== null) { clearInterval(timer); timer = null; }
    showApp(false);
    status("");
    $("login-error").textContent = typeof message === "string" ? message : "";
    $("token").focus();
  }

  // --------------------------------------------------------------- blocks
  function shownBlocks() {
    const needle = $("search").value.trim().toLowerCase();
    if (!needle) return blocks;
    return blocks.filter((b) =>
      [b.key, b.reason, b.kind].some((v) => String(v).toLowerCase().includes(needle)));
  }

  function renderBlocks() {
    const body = $("blocks").tBodies[0];
    clear(body);
    const shown = shownBlocks();
    for (const b of shown) {
      const row = document.createElement("tr");
      row.appendChild(el("td", b.kind));
      row.appendChild(el("td", b.key, "key"));
      row.appendChild(el("td", b.reason));
      row.appendChild(el("td", utc(b.since)));
      row.appendChild(el("td", span(b.left)));
      const cell = el("td");
      const lift = el("button", "Lift", "lift");
      lift.type = "button";
      lift.dataset.key = b.key;
      lift.dataset.kind = b.kind;
      lift.addEventListener("click", () => liftOne(b.key, b.kind));
      cell.appendChild(lift);
      row.appendChild(cell);
      body.appendChild(row);
    }
    $("blocks-empty").hidden = blocks.length !== 0;
    // the store may hold more than the first 1000 (soonest end first) listed here
    const listed = blocksTotal > blocks.length
      ? "; the " + blocks.length + " ending soonest listed" : "";
    $("blocks-count").textContent = "(" + (shown.length === blocks.length ? blocksTotal
      : shown.length + " of " + blocksTotal) + listed + ")";
    $("lift-all").disabled = blocksTotal === 0;
  }

  async function loadBlocks() {
    const data = await json("blocks?limit=1000");
    blocks = Array.isArray(data.blocks) ? data.blocks : [];
    blocksTotal = Number.isInteger(data.count) ? Math.max(data.count, blocks.length)
      : blocks.length;
    renderBlocks();
  }

  async function liftOne(key, kind) {
    try {
      const data = await post("unblock", { key: key, kind: kind });
      tell("lifted " + data.lifted + " block(s) on " + key);
    } catch (e) {
      if (!(e instanceof Denied)) status(e.message, true);
    }
    refresh(false);
  }

  async function liftAll() {
    if (!blocksTotal) return;
    if (!window.confirm("Lift all " + blocksTotal + " blocks and jails?")) return;
    try {
      const data = await post("unblock", { all: true });
      tell("lifted " + data.lifted + " block(s)");
    } catch (e) {
      if (!(e instanceof Denied)) status(e.message, true);
    }
    refresh(false);
  }

  async function blockOne(event) {
    event.preventDefault();
    const message = $("block-message");
    const body = {
      key: $("block-key").value.trim(),
      kind: $("block-kind").value,
      seconds: $("block-seconds").value.trim(),
    };
    const reason = $("block-reason").value.trim();
    if (reason) body.reason = reason;
    try {
      const data = await post("block", body);
      message.className = "okay";
      message.textContent = "blocked " + data.blocked.key + " for " + span(data.blocked.left);
      $("block-key").value = "";
    } catch (e) {
      if (e instanceof Denied) return;
      message.className = "error";
      message.textContent = e.message;
    }
    refresh(false);
  }

  // ------------------------------------------------------------- refusals
  function details(fields) {
    const parts = [];
    for (const [k, v] of Object.entries(fields || {})) parts.push(k + "=" + String(v));
    return parts.join(" ");
  }

  async function loadRefusals() {
    const data = await json("refusals?limit=100");
    const list = Array.isArray(data.refusals) ? data.refusals : [];
    const body = $("refusals").tBodies[0];
    clear(body);
    for (const r of list) {
      const row = document.createElement("tr");
      row.appendChild(el("td", clock(r.time)));
      row.appendChild(el("td", r.filter));
      row.appendChild(el("td", r.action));
      row.appendChild(el("td", r.client, "key client"));
      row.appendChild(el("td", details(r.fields), "details"));
      body.appendChild(row);
    }
    $("refusals-empty").hidden = list.length !== 0;
    $("refusals-count").textContent = "(" + list.length + ", process " + data.pid + ")";
  }

  // ---------------------------------------------------------------- chart
  function niceMax(top) {
    if (top <= 5) return 5;
    const p = Math.pow(10, Math.floor(Math.log10(top)));
    for (const m of [1, 2, 5, 10]) if (m * p >= top) return m * p;
    return 10 * p;
  }

  function drawChart(data) {
    const box = $("chart");
    clear(box);
    const W = 760, H = 220, L = 44, R = 12, T = 12, B = 30;
    const minutes = data.minutes || 60;
    const names = Object.keys(data.filters || {});
    let top = 0;
    for (const n of names) for (const v of data.filters[n]) top = Math.max(top, v);
    const ymax = niceMax(top);
    const x = (i) => L + (i * (W - L - R)) / (minutes - 1);
    const y = (v) => H - B - (v * (H - T - B)) / ymax;
    const root = svg("svg", { viewBox: "0 0 " + W + " " + (H + 24), role: "img",
      "aria-label": "refused requests per minute, per filter, last " + minutes + " minutes" });
    root.appendChild(svg("title", {}, "Refused requests per minute"));
    for (let k = 0; k <= 5; k++) {
      const v = (ymax * k) / 5;
      root.appendChild(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
      root.appendChild(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v));
    }
    root.appendChild(svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
    root.appendChild(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
    for (const ago of [minutes - 1, 45, 30, 15, 0].filter((a) => a < minutes)) {
      const i = minutes - 1 - ago;
      const label = ago === 0 ? "now" : "-" + ago + " min";
      root.appendChild(svg("line", { x1: x(i), x2: x(i), y1: H - B, y2: H - B + 4, class: "axis" }));
      root.appendChild(svg("text", { x: x(i), y: H - B + 16, "text-anchor": "middle" }, label));
    }
    root.appendChild(svg("text", { x: 12, y: T + (H - T - B) / 2, "text-anchor": "middle",
      transform: "rotate(-90 12 " + (T + (H - T - B) / 2) + ")" }, "requests / min"));
    const legend = svg("g", { class: "legend" });
    let lx = L;
    names.forEach((name) => {
      const cls = ["dos", "login", "device"].includes(name) ? "s-" + name : "s-other";
      const row = data.filters[name];
      const d = row.map((v, i) => (i ? "L" : "M") + x(i).toFixed(1) + " " + y(v).toFixed(1)).join(" ");
      root.appendChild(svg("path", { d: d, class: "line " + cls, "data-filter": name }));
      legend.appendChild(svg("rect", { x: lx, y: H + 6, width: 12, height: 12, class: cls }));
      const total = (data.totals || {})[name] || 0;
      const text = svg("text", { x: lx + 17, y: H + 16 }, name + " (" + total + ")");
      legend.appendChild(text);
      lx += 30 + (name.length + String(total).length + 3) * 7.5;
    });
    root.appendChild(legend);
    box.appendChild(root);
  }

  async function loadSeries() {
    drawChart(await json("series"));
  }

  // --------------------------------------------------------------- config
  async function loadConfig() {
    const answer = await api("config");
    const note = $("config-note"), table = $("config"), fixed = $("config-fixed");
    const body = table.tBodies[0];
    clear(body);
    fixed.textContent = "";
    if (answer.status === 404) {
      table.hidden = true;
      note.textContent = "configuration not available";
      return;
    }
    if (!answer.ok) {
      table.hidden = true;
      note.textContent = "configuration: HTTP " + answer.status;
      return;
    }
    const data = await answer.json();
    note.textContent = "version " + data.version + ", " + (data.live ? "live changes on" : "live changes off") +
      (data.store ? ", store " + data.store : "");
    for (const entry of Array.isArray(data.entries) ? data.entries : []) {
      const row = document.createElement("tr");
      row.appendChild(el("td", entry.key, "key"));
      const value = typeof entry.value === "string" ? entry.value : JSON.stringify(entry.value);
      row.appendChild(el("td", value, "value"));
      row.appendChild(el("td", entry.source));
      row.appendChild(el("td", entry.detail === undefined || entry.detail === null ? "" : entry.detail));
      body.appendChild(row);
    }
    table.hidden = false;
    if (Array.isArray(data.fixed) && data.fixed.length) {
      fixed.textContent = "Fixed until a restart: " + data.fixed.join(", ");
    }
  }

  // -------------------------------------------------------------- refresh
  async function refresh(first) {
    if ((busy && !first) || !sessionStorage.getItem(TOKEN_KEY)) return;
    busy = true;
    try {
      const results = await Promise.allSettled([loadBlocks(), loadRefusals(), loadSeries(), loadConfig()]);
      if (!sessionStorage.getItem(TOKEN_KEY)) return;  // a 403 logged out
      const failed = results.filter((r) => r.status === "rejected" && !(r.reason instanceof Denied));
      if (failed.length) status(String(failed[0].reason && failed[0].reason.message || failed[0].reason), true);
      else {
        const updated = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
        status(Date.now() < noteUntil ? note + " \u00b7 " + updated : updated);
      }
      if (first && timer === null) timer = setInterval(tick, REFRESH_MS);
    } finally {
      busy = false;
    }
  }

  function tick() {
    if ($("auto").checked && !document.hidden) refresh(false);
  }

  function start() {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", () => logout("Logged out."));
    $("refresh").addEventListener("click", () => refresh(false));
    $("search").addEventListener("input", renderBlocks);
    $("lift-all").addEventListener("click", liftAll);
    $("block-form").addEventListener("submit", blockOne);
    if (sessionStorage.getItem(TOKEN_KEY)) {
      showApp(true);
      refresh(true);
    } else {
      showApp(false);
      $("token").focus();
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
