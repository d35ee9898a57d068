// Clawfleet dashboard: a small single-page app over the admin API (/v1/*).
// Authorized by the HttpOnly session cookie; unsafe calls carry X-CSRF-Token.
// All data reaches the page through textContent / attributes, never parsed as HTML.
// Sized for big fleets (issue 16): the headline numbers come from GET /v1/summary
// (aggregates), and the tables read one page of a listing at a time (PAGE rows,
// following the API's next_cursor; Previous goes back through the cursors seen).
"use strict";

(() => {
  const MONTH_HOURS = 730; // monthly cost estimate = hourly x 730 (ignores Hetzner's monthly cap)
  const LATE_INTERVALS = 3; // a heartbeat is late after 3 of the server's intervals
  const PAGE = 50; // rows per table page
  const LIVE_STATUSES = "provisioning,active,unhealthy,dead,deleting"; // all but deleted
  const USER_STATES = ["pending", "provisioning", "running", "suspended", "deprovisioned"];

  const state = {
    csrf: "",
    baseDomain: "",
    pollMs: 3000,
    servers: [], // the servers table's page (the move panel loads its own list)
    server: null, // the server page's server
    summary: null, // GET /v1/summary: counts, capacity, costs, provider and DNS health
    users: [], // the users table's page
    pending: [], // the fleet page's first page of pending users
    exact: null, // the user whose id is the users page's search, wherever its page is
    pages: { servers: { cursors: [null], next: null }, users: { cursors: [null], next: null } },
    health: {}, // {provider, dns}: each {state, detail, ...} from GET /v1/summary
    fetchedAt: 0, // Date.now() when servers were fetched: ages tick from there
    lastOk: 0,
    failing: false,
    events: new Map(),
    oldestEvent: null,
    moreEvents: true,
    showDeleted: false,
    panels: new Map(), // user_id -> {kind: "access"|"move"|"backups", node: <tr>}
    route: null,
    timer: null,
    searchTimer: null,
  };

  // --- DOM helpers -------------------------------------------------------------
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = String(value);
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }
  const $ = (sel, root = document) => root.querySelector(sel);
  const clear = (el) => { while (el.firstChild) el.firstChild.remove(); return el; };
  // One wrapper per cell: on phones the cell is a two-column grid (label, content).
  const cell = (label, ...children) => h("td", { "data-label": label }, h("div", null, ...children));
  const badge = (value) => h("span", { class: "badge s-" + String(value || "none").replace(/[^a-z_-]/gi, "") }, value || "—");
  const serverHref = (id) => "/dashboard/servers/" + encodeURIComponent(id);
  const link = (href, text, extra) => h("a", { href, "data-internal": true, ...(extra || {}) }, text);
  const dash = (v) => (v === null || v === undefined || v === "" ? "—" : v);

  function fmtAge(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    const s = Math.max(0, Math.floor(seconds));
    if (s < 90) return s + "s";
    if (s < 5400) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 172800) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d";
  }
  function fmtMb(mb) {
    if (mb === null || mb === undefined) return "?";
    return mb >= 1024 ? (mb / 1024).toFixed(mb % 1024 ? 1 : 0) + " GB" : mb + " MB";
  }
  function fmtMoney(value, digits) {
    return value.toFixed(digits);
  }
  function fmtBytes(n) {
    if (n === null || n === undefined) return "—";
    if (n < 1024) return n + " B";
    const units = ["KB", "MB", "GB", "TB"];
    let v = n / 1024;
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return v.toFixed(v < 10 ? 1 : 0) + " " + units[i];
  }
  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }
  // The worker's origin TLS certificate (s.origin_cert, control/edge/tls_rules.py
  // cert_state): inside the renewal window the agent renews within hours, so staying
  // there means renewal fails; none at all means Cloudflare's strict mode cannot pass.
  function originCert(s) {
    const when = s.origin_cert_expires ? fmtTime(new Date(s.origin_cert_expires * 1000).toISOString()) : "—";
    switch (s.origin_cert) {
      case "ok": return h("span", { id: "origin-cert" }, "expires " + when);
      case "renew_due": return h("span", { id: "origin-cert", class: "warn" }, "expires " + when + " (renewal due)");
      case "expired": return h("span", { id: "origin-cert", class: "error" }, "EXPIRED " + when);
      case "missing": return h("span", { id: "origin-cert", class: "error" }, "MISSING");
      case "off": return h("span", { id: "origin-cert", class: "muted" }, "off");
      default: return "—";
    }
  }

  function capacityBar(mem) {
    const used = mem ? mem.used : 0;
    const total = mem ? mem.total : null;
    const share = total ? Math.min(1, used / total) : 0;
    const fill = h("span");
    fill.style.width = (share * 100).toFixed(1) + "%"; // CSSOM, not an inline style attribute
    const bar = h("div", { class: "bar" + (share >= 1 ? " full" : share >= 0.8 ? " high" : ""), role: "meter",
      "aria-valuemin": 0, "aria-valuemax": total || 0, "aria-valuenow": used }, fill);
    return [bar, h("span", { class: "small muted" }, fmtMb(used) + " / " + fmtMb(total))];
  }

  // An element whose text is the heartbeat age, advanced every second from the fetch time.
  function ageElement(server) {
    const el = h("span", { class: "age", dataset: { serverId: server.id } });
    if (server.last_heartbeat_age !== null && server.last_heartbeat_age !== undefined) {
      el.dataset.age = String(server.last_heartbeat_age);
    }
    if (server.heartbeat_interval) el.dataset.interval = String(server.heartbeat_interval);
    paintAge(el);
    return el;
  }
  function paintAge(el) {
    if (el.dataset.age === undefined) {
      el.textContent = "never";
      el.classList.remove("late");
      return;
    }
    const age = Number(el.dataset.age) + (Date.now() - state.fetchedAt) / 1000;
    const interval = Number(el.dataset.interval || 0);
    el.textContent = fmtAge(age);
    el.dataset.seconds = String(Math.floor(age));
    el.classList.toggle("late", interval > 0 && age > LATE_INTERVALS * interval);
    el.title = interval ? "late after " + fmtAge(LATE_INTERVALS * interval) + " (3 × " + interval + "s)" : "";
  }
  function tick() {
    for (const el of document.querySelectorAll(".age[data-server-id]")) paintAge(el);
    const live = $("#live");
    if (live && state.lastOk) {
      const ago = Math.floor((Date.now() - state.lastOk) / 1000);
      live.textContent = state.failing ? "update failed " + ago + "s ago" : "updated " + ago + "s ago";
      live.classList.toggle("stale", state.failing || ago > 3 * (state.pollMs / 1000));
    }
  }

  // --- API ---------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const opts = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (method !== "GET") {
      headers["X-CSRF-Token"] = state.csrf;
      if (body !== undefined) {
        headers["Content-Type"] = "application/json";
        opts.body = JSON.stringify(body);
      }
    }
    const r = await fetch(path, opts);
    let data = null;
    try { data = await r.json(); } catch (_) { data = null; }
    if (r.status === 401) {
      location.assign("/dashboard/login?next=" + encodeURIComponent(location.pathname));
      throw new ApiError(401, "unauthorized", "signed out");
    }
    if (!r.ok) {
      const err = data && data.error ? data.error : { code: "http_" + r.status, message: r.statusText };
      throw new ApiError(r.status, err.code, err.message);
    }
    return data;
  }

  function toast(message, bad) {
    const el = $("#toast");
    el.textContent = message;
    el.classList.toggle("bad", Boolean(bad));
    el.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { el.hidden = true; }, bad ? 8000 : 4000);
  }

  async function act(label, method, path, body) {
    try {
      const result = await api(method, path, body);
      toast(label + ": done");
      await refresh();
      return result;
    } catch (err) {
      if (err.status !== 401) toast(label + " failed: " + err.message + (err.code ? " (" + err.code + ")" : ""), true);
      return null;
    }
  }

  // --- routing -----------------------------------------------------------------
  function parseRoute() {
    const path = location.pathname.replace(/\/+$/, "");
    const params = new URLSearchParams(location.search);
    if (path === "/dashboard" || path === "") return { page: "fleet" };
    if (path === "/dashboard/users") {
      return { page: "users", q: params.get("q") || "", state: params.get("state") || "", server: params.get("server") || "" };
    }
    if (path === "/dashboard/events") return { page: "events" };
    const m = path.match(/^\/dashboard\/servers\/([^/]+)$/);
    if (m) return { page: "server", id: decodeURIComponent(m[1]) };
    return { page: "missing" };
  }
  function go(href) {
    history.pushState(null, "", href);
    enter();
  }
  document.addEventListener("click", (ev) => {
    const a = ev.target.closest && ev.target.closest("a[data-internal]");
    if (!a || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
    ev.preventDefault();
    go(a.getAttribute("href"));
  });
  window.addEventListener("popstate", enter);

  function enter() {
    state.route = parseRoute();
    state.panels.clear();
    firstPage("servers");
    firstPage("users");
    for (const a of document.querySelectorAll("[data-nav]")) {
      const current = a.dataset.nav === state.route.page || (a.dataset.nav === "fleet" && state.route.page === "server");
      a.classList.toggle("current", current);
      if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    }
    const main = clear($("#main"));
    const pages = { fleet: skeletonFleet, server: skeletonServer, users: skeletonUsers, events: skeletonEvents, missing: skeletonMissing };
    pages[state.route.page](main);
    render();
    refresh();
  }

  // --- polling -----------------------------------------------------------------
  async function refresh() {
    const route = state.route;
    try {
      if (route.page === "events") {
        const data = await api("GET", "/v1/events?limit=100");
        for (const e of data.events) state.events.set(e.id, e);
        if (state.oldestEvent === null && data.events.length) {
          state.oldestEvent = data.events[data.events.length - 1].id;
          state.moreEvents = data.events.length === 100;
        }
      } else {
        const loads = { fleet: loadFleet, server: loadServer, users: loadUsers, missing: async () => {} };
        const [summary] = await Promise.all([api("GET", "/v1/summary"), loads[route.page](route)]);
        state.summary = summary;
        state.health = { provider: summary.provider, dns: summary.dns };
        state.fetchedAt = Date.now();
        // An open backups panel follows its jobs (a snapshot or restore running) live.
        if (route.page === "users") for (const [uid, p] of state.panels) if (p.kind === "backups") loadBackups(uid);
      }
      state.lastOk = Date.now();
      state.failing = false;
    } catch (err) {
      state.failing = true;
      if (!state.lastOk) state.lastOk = Date.now();
    }
    if (route === state.route) render();
    renderBanner();
    tick();
  }
  // --- pages: one page of a listing, the cursors seen so far for Previous ----------
  function firstPage(kind) {
    state.pages[kind] = { cursors: [null], next: null };
  }
  function pageQuery(kind, params) {
    const cursors = state.pages[kind].cursors;
    const query = new URLSearchParams({ limit: String(PAGE), ...params });
    const cursor = cursors[cursors.length - 1];
    if (cursor) query.set("cursor", cursor);
    return "/v1/" + kind + "?" + query;
  }
  async function loadPage(kind, params) {
    const data = await api("GET", pageQuery(kind, params));
    state.pages[kind].next = data.next_cursor || null;
    return data;
  }
  function turn(kind, forward) {
    const page = state.pages[kind];
    if (forward && page.next) page.cursors.push(page.next);
    else if (!forward && page.cursors.length > 1) page.cursors.pop();
    else return;
    page.next = null;
    refresh();
  }
  function pager(kind) {
    const page = state.pages[kind];
    const nav = $("#" + kind + "-pager");
    if (!nav) return;
    clear(nav).append(
      h("button", { type: "button", class: "page-prev", disabled: page.cursors.length < 2, onclick: () => turn(kind, false) }, "← Previous"),
      h("span", { class: "small muted page-number" }, "page " + page.cursors.length),
      h("button", { type: "button", class: "page-next", disabled: !page.next, onclick: () => turn(kind, true) }, "Next →"));
  }
  const pagerNav = (kind) => h("nav", { class: "pager", id: kind + "-pager", "aria-label": kind + " pages" });

  async function loadFleet() {
    const [servers, pending] = await Promise.all([
      loadPage("servers", state.showDeleted ? {} : { status: LIVE_STATUSES }),
      api("GET", "/v1/users?state=pending&limit=" + PAGE),
    ]);
    state.servers = servers.servers;
    state.pending = pending.users;
  }
  async function loadServer(route) {
    try {
      state.server = await api("GET", "/v1/servers/" + encodeURIComponent(route.id));
    } catch (err) {
      if (err.status !== 404) throw err;
      state.server = null;
    }
  }
  async function loadUsers(route) {
    const filters = {};
    if (route.state) filters.state = route.state;
    if (route.server) filters.server = route.server;
    const q = (route.q || "").trim();
    const [page, exact] = await Promise.all([
      loadPage("users", filters),
      // A search naming a user finds it on whatever page it is.
      q && !/\s/.test(q) ? api("GET", "/v1/users/" + encodeURIComponent(q)).catch((err) => { if (err.status === 404) return null; throw err; }) : null,
    ]);
    state.users = page.users;
    state.exact = exact;
  }

  function schedule() {
    clearTimeout(state.timer);
    state.timer = setTimeout(async () => {
      if (!document.hidden) await refresh();
      schedule();
    }, state.pollMs);
  }
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });

  // --- health banner: the cloud or DNS provider is not usable --------------------
  const BANNER = {
    provider: {
      validating: "Cloud provider not validated yet, retrying; no server is created meanwhile: ",
      invalid: "Cloud provider refused the configuration; fix the setting and restart: ",
    },
    dns: {
      validating: "DNS provider not verified yet, retrying; DNS records wait meanwhile: ",
      invalid: "DNS provider refused the configuration; fix the setting and restart: ",
    },
  };
  function renderBanner() {
    const box = $("#health-banner");
    if (!box) return;
    const lines = [];
    for (const source of ["provider", "dns"]) {
      const health = state.health[source];
      if (!health || health.state === "ok") continue;
      const lead = BANNER[source][health.state] || source + " is " + health.state + ": ";
      // textContent only (h's text nodes): the detail quotes the provider's answer.
      lines.push(h("p", { class: "banner-line", dataset: { source, state: health.state } }, lead + (health.detail || "")));
    }
    clear(box).append(...lines);
    box.hidden = lines.length === 0;
  }

  function render() {
    const renderers = { fleet: renderFleet, server: renderServer, users: renderUsers, events: renderEvents, missing: () => {} };
    renderers[state.route.page]();
  }

  // --- fleet page ----------------------------------------------------------------
  function skeletonFleet(main) {
    document.title = "Fleet · Clawfleet";
    main.append(
      h("h1", null, "Fleet"),
      h("section", { id: "totals", class: "cards", "aria-label": "Totals" }),
      h("div", { class: "toolbar" },
        h("label", { class: "small muted" },
          h("input", { type: "checkbox", id: "show-deleted", checked: state.showDeleted,
            onchange: (ev) => { state.showDeleted = ev.target.checked; firstPage("servers"); refresh(); } }),
          " show deleted servers")),
      h("div", { class: "panel" }, h("table", { class: "responsive", id: "servers" },
        h("thead", null, h("tr", null, ["Server", "Status", "Heartbeat", "Type · location", "Public IP", "Agent", "Memory", "Containers"].map((t) => h("th", null, t)))),
        h("tbody"))),
      pagerNav("servers"),
      h("h2", null, "Pending users"),
      h("div", { class: "panel", id: "pending" }),
    );
  }

  // Users' volumes are billed per GB-month, beside the servers: an operator sees both.
  function volumeCostCard(card, vc, serversMonthly) {
    if (!vc) return card("total-volumes", "Volumes", "—", "not reported");
    const monthly = typeof vc.monthly_price === "number" ? vc.monthly_price : null;
    const sizes = vc.count + " volume(s), " + vc.size_gb + " GB";
    if (monthly === null) return card("total-volumes", "Volumes", "—", sizes + "; no price from the provider");
    const both = serversMonthly === null ? "" : "; with servers ≈ " + fmtMoney(serversMonthly + monthly, 2) + " /month";
    return card("total-volumes", "Volumes", fmtMoney(monthly, 2) + " /month",
      sizes + " (net, " + (vc.currency || "provider currency") + ")" + both);
  }

  function renderFleet() {
    const sum = state.summary;
    if (sum) renderTotals(sum);
    const deletedCount = sum ? sum.servers.by_status.deleted || 0 : 0;
    const toggle = $("#show-deleted");
    if (toggle) toggle.parentElement.hidden = deletedCount === 0 && !state.showDeleted;
    const tbody = clear($("#servers tbody"));
    if (!state.servers.length) tbody.append(h("tr", null, h("td", { colspan: 8, class: "empty full" }, "No servers yet. Workers appear here when they register.")));
    for (const s of state.servers) {
      const mem = s.capacity.memory_mb;
      tbody.append(h("tr", { dataset: { serverId: s.id } },
        cell("Server", link(serverHref(s.id), s.hostname || s.name || s.id), h("div", { class: "small muted mono" }, s.id)),
        cell("Status", badge(s.status), s.cordoned ? h("span", { class: "badge flag s-unknown" }, s.draining ? "draining" : "cordoned") : null),
        cell("Heartbeat", ageElement(s)),
        cell("Type · location", h("span", null, [s.server_type, s.location].filter(Boolean).join(" · ") || "—"), h("div", { class: "small muted" }, s.provider || "")),
        cell("Public IP", h("span", { class: "mono" }, dash(s.public_ip))),
        cell("Agent", dash(s.agent_version)),
        cell("Memory", h("div", null, capacityBar(mem))),
        h("td", { "data-label": "Containers", class: "num containers" }, s.containers_running + " / " + s.containers_desired),
      ));
    }
    pager("servers");

    const pending = state.pending;
    const waiting = sum ? sum.users.by_state.pending || 0 : pending.length;
    const box = clear($("#pending"));
    if (!pending.length) box.append(h("p", { class: "empty" }, "No user is waiting for capacity."));
    else {
      box.append(h("table", { class: "responsive" },
        h("thead", null, h("tr", null, ["User", "Plan", "Waiting since"].map((t) => h("th", null, t)))),
        h("tbody", null, pending.map((u) => h("tr", null,
          cell("User", link("/dashboard/users?q=" + encodeURIComponent(u.user_id), u.user_id)),
          cell("Plan", u.plan),
          cell("Waiting since", fmtTime(u.updated_at))))),
      ));
      if (waiting > pending.length) box.append(h("p", { class: "small muted" }, link("/dashboard/users?state=pending", "all " + waiting + " pending users")));
    }
  }

  // The headline cards, from the summary's aggregates (never from a page of rows).
  function renderTotals(sum) {
    const byStatus = Object.entries(sum.servers.by_status).filter(([k]) => k !== "deleted");
    const mem = sum.capacity.memory_mb;
    const c = sum.containers;
    const cost = sum.cost;
    const pending = sum.users.by_state.pending || 0;
    const card = (id, label, value, sub) => h("div", { class: "card", id }, h("div", { class: "label" }, label), h("div", { class: "value" }, value), sub ? h("div", { class: "sub" }, sub) : null);
    const monthly = cost.hourly === null ? null : cost.hourly * MONTH_HOURS;
    clear($("#totals")).append(
      card("total-servers", "Servers", String(sum.servers.live), byStatus.map(([k, v]) => v + " " + k).join(", ") || "none"),
      card("total-memory", "Memory", fmtMb(mem.used) + " / " + fmtMb(mem.total), capacityBar(mem)),
      card("total-containers", "Containers", c.running + " / " + c.desired, "running / desired"),
      card("total-pending", "Pending users", String(pending), pending ? "waiting for room" : "none waiting"),
      cost.priced_servers
        ? card("total-cost", "Est. cost", fmtMoney(cost.hourly, 4) + " /h",
          "≈ " + fmtMoney(monthly, 2) + " /month (× " + MONTH_HOURS + " h, net, provider currency)" +
          (cost.unpriced_servers ? "; " + cost.unpriced_servers + " server(s) without a price" : ""))
        : card("total-cost", "Est. cost", "—", sum.servers.live ? sum.servers.live + " server(s) without a price" : "no servers"),
      volumeCostCard(card, sum.volume_cost, monthly),
    );
  }

  // --- server page ---------------------------------------------------------------
  function skeletonServer(main) {
    const id = state.route.id;
    document.title = id + " · Clawfleet";
    main.append(
      h("p", { class: "small" }, link("/dashboard", "← Fleet")),
      h("h1", { id: "server-title" }, id),
      h("div", { class: "actions", id: "server-actions" }),
      h("h2", null, "Server"),
      h("div", { class: "panel", id: "server-detail" }),
      h("h2", null, "Containers"),
      h("div", { class: "panel" }, h("table", { class: "responsive", id: "containers" },
        h("thead", null, h("tr", null, ["User", "State", "Health", "Image", "Restarts", "Started", "Last error"].map((t) => h("th", null, t)))),
        h("tbody"))),
    );
  }

  function renderServer() {
    const s = state.server && state.server.id === state.route.id ? state.server : null;
    if (!s) {
      if (state.fetchedAt) clear($("#server-detail")).append(h("p", { class: "empty" }, "No such server."));
      return;
    }
    $("#server-title").textContent = s.hostname || s.name || s.id;
    const path = "/v1/servers/" + encodeURIComponent(s.id) + "/";
    const gone = s.status === "deleted" || s.status === "deleting";
    clear($("#server-actions")).append(
      h("button", { type: "button", id: "action-cordon", disabled: gone || s.cordoned,
        onclick: () => act("Cordon " + s.id, "POST", path + "cordon") }, "Cordon"),
      h("button", { type: "button", id: "action-uncordon", disabled: gone || !s.cordoned,
        onclick: () => act("Uncordon " + s.id, "POST", path + "uncordon") }, "Uncordon"),
      h("button", { type: "button", id: "action-drain", class: "danger", disabled: gone || s.draining,
        onclick: () => { if (confirm("Drain " + (s.hostname || s.name || s.id) + "? Its users are moved away and it is emptied.")) act("Drain " + s.id, "POST", path + "drain"); } }, "Drain"),
    );
    const cpu = s.capacity.cpus;
    const rows = [
      ["Status", [badge(s.status), s.cordoned ? h("span", { class: "badge flag s-unknown" }, s.draining ? "draining" : "cordoned") : null]],
      ["Id", h("span", { class: "mono" }, s.id + (s.name && s.name !== s.id ? " (" + s.name + ")" : ""))],
      ["Heartbeat", [ageElement(s), h("span", { class: "muted small" }, s.heartbeat_interval ? " every " + Number(s.heartbeat_interval).toFixed(1) + "s" : "")]],
      ["Provider", dash([s.provider, s.provider_id ? "(" + s.provider_id + ")" : ""].filter(Boolean).join(" "))],
      ["Type · location", [s.server_type, s.location].filter(Boolean).join(" · ") || "—"],
      ["Public IP", h("span", { class: "mono" }, dash(s.public_ip))],
      ["Hostname", dash(s.hostname)],
      ["Agent / Docker", dash(s.agent_version) + " / " + dash(s.docker_version)],
      ["Agent features", h("span", { id: "agent-features", class: s.features.length ? "mono small" : "error" }, s.features.length ? s.features.join(", ") : "none declared (an agent older than features gets no user)")],
      ["Metadata blocked", s.metadata_blocked === null || s.metadata_blocked === undefined ? "—" : s.metadata_blocked ? "yes" : "NO"],
      ["Firewall", s.firewall ? [s.firewall.protected ? "protected" : h("span", { class: "error" }, s.firewall.state === "unprotected" ? "UNPROTECTED" : s.firewall.state), h("div", { class: "muted small" }, s.firewall.detail)] : "—"],
      ["Memory", h("div", null, capacityBar(s.capacity.memory_mb))],
      ["CPUs", cpu.used + " / " + dash(cpu.total)],
      ["Containers", s.containers_running + " running / " + s.containers_desired + " desired"],
      ["Generation", s.applied_generation + " applied of " + s.generation],
      ["Price", typeof s.hourly_price === "number" ? fmtMoney(s.hourly_price, 4) + " /h · ≈ " + fmtMoney(s.hourly_price * MONTH_HOURS, 2) + " /month" : "unknown"],
      ["Registered", fmtTime(s.registered_at)],
      ["Origin certificate", originCert(s)],
    ];
    clear($("#server-detail")).append(h("dl", { class: "detail" }, rows.map(([k, v]) => [h("dt", null, k), h("dd", null, v)])));

    const tbody = clear($("#containers tbody"));
    if (!s.containers.length) tbody.append(h("tr", null, h("td", { colspan: 7, class: "empty full" }, "No containers.")));
    for (const c of s.containers) {
      tbody.append(h("tr", { dataset: { userId: c.user_id } },
        cell("User", link("/dashboard/users?q=" + encodeURIComponent(c.user_id), c.user_id), c.desired ? null : h("div", { class: "small error" }, "not desired")),
        cell("State", badge(c.state)),
        cell("Health", badge(c.health)),
        cell("Image", h("span", { class: "mono", title: c.image_id || "" }, c.image_id ? c.image_id.replace(/^sha256:/, "").slice(0, 12) : "—")),
        h("td", { "data-label": "Restarts", class: "num" }, dash(c.restart_count)),
        cell("Started", fmtTime(c.started_at)),
        cell("Last error", c.error ? h("span", { class: "error" }, c.error) : "—"),
      ));
    }
  }

  // --- users page ----------------------------------------------------------------
  function skeletonUsers(main) {
    document.title = "Users · Clawfleet";
    main.append(
      h("h1", null, "Users"),
      h("div", { class: "toolbar" },
        h("input", { type: "search", id: "user-search", placeholder: "User id, or search this page…",
          "aria-label": "Search users", value: state.route.q || "",
          oninput: (ev) => {
            state.route.q = ev.target.value;
            history.replaceState(null, "", usersHref(state.route));
            renderUsers();
            clearTimeout(state.searchTimer);
            state.searchTimer = setTimeout(refresh, 300); // the exact id, on any page
          } }),
        h("select", { id: "user-state", "aria-label": "Users in state",
          onchange: (ev) => {
            state.route.state = ev.target.value;
            history.replaceState(null, "", usersHref(state.route));
            firstPage("users");
            refresh();
          } },
          h("option", { value: "" }, "every state"),
          USER_STATES.map((v) => h("option", { value: v, selected: state.route.state === v }, v))),
        state.route.server ? h("span", { class: "small", id: "user-server-filter" }, "on server ", link(serverHref(state.route.server), state.route.server),
          " ", link(usersHref({ ...state.route, server: "" }), "(all servers)")) : null,
        h("span", { class: "small muted", id: "user-count" })),
      h("div", { class: "panel" }, h("table", { class: "responsive", id: "users" },
        h("thead", null, h("tr", null, ["User", "State", "Plan", "Server", "Address", "Container", "Actions"].map((t) => h("th", null, t)))),
        h("tbody"))),
      pagerNav("users"),
    );
  }

  function usersHref(route) {
    const query = new URLSearchParams();
    for (const key of ["q", "state", "server"]) if (route[key]) query.set(key, route[key]);
    const text = query.toString();
    return "/dashboard/users" + (text ? "?" + text : "");
  }

  function userMatches(u, q) {
    if (!q) return true;
    const words = q.toLowerCase().split(/\s+/).filter(Boolean);
    const hay = [u.user_id, u.subdomain, u.server_id, u.state, u.plan, u.billing_status].filter(Boolean).join(" ").toLowerCase();
    return words.every((w) => hay.includes(w));
  }

  function renderUsers() {
    const q = state.route.q || "";
    const users = state.users.filter((u) => userMatches(u, q));
    const exact = state.exact;
    if (exact && exact.user_id === q.trim() && !users.some((u) => u.user_id === exact.user_id)) users.unshift(exact);
    const total = state.summary ? " · " + state.summary.users.total + " users in all" : "";
    $("#user-count").textContent = users.length + " shown of " + state.users.length + " on this page" + total;
    pager("users");
    const tbody = $("#users tbody");
    // Keep open panels' nodes (a half-chosen move target survives a poll).
    const kept = new Map(state.panels);
    clear(tbody);
    if (!users.length) tbody.append(h("tr", null, h("td", { colspan: 7, class: "empty full" }, state.users.length ? "No user matches." : "No users yet.")));
    for (const u of users) {
      tbody.append(userRow(u));
      const panel = kept.get(u.user_id);
      if (panel) tbody.append(panel.node);
    }
  }

  function userRow(u) {
    const uid = encodeURIComponent(u.user_id);
    const base = "/v1/users/" + uid + "/";
    const url = state.baseDomain ? "https://" + u.subdomain + "." + state.baseDomain : null;
    const server = state.servers.find((s) => s.id === u.server_id); // when it is on the page loaded
    const c = u.container;
    // Two sources: billing says whether the user may run, an operator's hold whether
    // it will; only a resume lifts the hold (control/billing/rules.py).
    const canSuspend = !u.hold && u.state !== "deprovisioned";
    const canResume = Boolean(u.hold);
    return h("tr", { dataset: { userId: u.user_id } },
      cell("User", h("strong", null, u.user_id),
        h("div", { class: "small muted user-billing" }, "billing: " + (u.billing_status || "none") + " (" + (u.billing_state || "?") + ")"),
        u.hold ? h("div", { class: "small user-hold" }, "operator hold: " + u.hold) : null,
        u.billing_conflict ? h("div", { class: "small error" }, u.billing_conflict) : null),
      cell("State", h("span", { class: "user-state" }, badge(u.state)),
        u.moving_from ? h("div", { class: "small muted" }, "moving from " + u.moving_from) : null,
        u.move ? h("div", { class: "small muted user-move" }, "moving to " + u.move.location + ": " + u.move.phase + (u.move.error ? " (" + u.move.error + ")" : "")) : null,
        // Placed, but its worker's agent lacks a feature its spec needs: no container runs.
        u.spec_withheld ? h("div", { class: "small error user-withheld" }, "not started: " + u.spec_withheld) : null,
        u.error ? h("div", { class: "small error" }, u.error) : null),
      cell("Plan", u.plan),
      cell("Server", u.server_id ? link(serverHref(u.server_id), server ? server.hostname || server.name || u.server_id : u.server_id) : "—",
        volumeSummary(u.volume)),
      cell("Address", url ? h("a", { href: url, target: "_blank", rel: "noopener noreferrer" }, u.subdomain + "." + state.baseDomain) : u.subdomain),
      cell("Container", c ? [badge(c.state), " ", c.health && c.health !== "unknown" ? badge(c.health) : null] : "—"),
      h("td", { "data-label": "Actions" }, h("div", { class: "actions" },
        canSuspend ? h("button", { type: "button", class: "act-suspend",
          onclick: () => { if (confirm("Suspend " + u.user_id + "? Their container stops; data is kept.")) act("Suspend " + u.user_id, "POST", base + "suspend"); } }, "Suspend") : null,
        canResume ? h("button", { type: "button", class: "act-resume",
          onclick: () => act("Resume " + u.user_id, "POST", base + "resume") }, "Resume") : null,
        h("button", { type: "button", class: "act-move", disabled: !["running", "provisioning"].includes(u.state) || !u.server_id || Boolean(u.moving_from),
          onclick: () => togglePanel(u, "move") }, "Move"),
        h("button", { type: "button", class: "act-rotate",
          onclick: () => { if (confirm("Rotate " + u.user_id + "'s gateway token? Their container restarts with the new one.")) act("Rotate token of " + u.user_id, "POST", base + "rotate-token").then((r) => { if (r && state.panels.get(u.user_id)?.kind === "access") showAccess(u, r); }); } }, "Rotate token"),
        h("button", { type: "button", class: "act-access",
          onclick: () => togglePanel(u, "access") }, "Show access"),
        h("button", { type: "button", class: "act-backups",
          onclick: () => togglePanel(u, "backups") }, "Backups"),
      )),
    );
  }

  function togglePanel(u, kind) {
    const open = state.panels.get(u.user_id);
    if (open) {
      open.node.remove();
      state.panels.delete(u.user_id);
      if (open.kind === kind) return;
    }
    const td = h("td", { colspan: 7, class: "full" });
    const node = h("tr", { class: "row-panel", dataset: { panelFor: u.user_id } }, td);
    state.panels.set(u.user_id, { kind, node });
    const row = [...document.querySelectorAll("#users tbody tr[data-user-id]")].find((r) => r.dataset.userId === u.user_id);
    if (row) row.after(node);
    if (kind === "backups") {
      td.append(h("div", { class: "inline-panel" }, "Loading backups…"));
      loadBackups(u.user_id);
    } else if (kind === "access") {
      td.append(h("div", { class: "inline-panel" }, "Loading access…"));
      api("GET", "/v1/users/" + encodeURIComponent(u.user_id) + "/access")
        .then((a) => showAccess(u, a))
        .catch((err) => { clear(td).append(h("span", { class: "error" }, "Access failed: " + err.message)); });
    } else {
      td.append(h("div", { class: "inline-panel" }, "Loading servers…"));
      // The first active servers (a page of the most the API gives): more is not a list to choose from.
      api("GET", "/v1/servers?status=active&limit=500")
        .then((data) => { if (state.panels.get(u.user_id)?.node === node) movePanel(u, clear(td), node, data.servers); })
        .catch((err) => { clear(td).append(h("span", { class: "error" }, "Servers failed: " + err.message)); });
    }
  }

  function movePanel(u, td, node, servers) {
    const targets = servers.filter((s) => s.id !== u.server_id && !s.cordoned);
    const select = h("select", { "aria-label": "Move " + u.user_id + " to", class: "move-target" },
      h("option", { value: "" }, "best fit (any server with room)"),
      targets.map((s) => h("option", { value: s.id }, (s.hostname || s.name || s.id) + " — " + fmtMb(s.capacity.memory_mb.used) + " / " + fmtMb(s.capacity.memory_mb.total))));
    td.append(h("div", { class: "inline-panel" },
      h("span", null, "Move " + u.user_id + " to"), select,
      h("button", { type: "button", class: "primary act-move-go",
        onclick: async () => {
          const r = await act("Move " + u.user_id, "POST", "/v1/users/" + encodeURIComponent(u.user_id) + "/move", { server_id: select.value || null });
          if (r) { node.remove(); state.panels.delete(u.user_id); }
        } }, "Move"),
      h("button", { type: "button", class: "link", onclick: () => togglePanel(u, "move") }, "Cancel")));
  }

  function showAccess(u, access) {
    const open = state.panels.get(u.user_id);
    if (!open || open.kind !== "access") return;
    const td = clear(open.node.firstChild);
    const url = /^https:\/\//.test(access.url) ? access.url : null;
    td.append(h("div", { class: "inline-panel" },
      h("span", null, "URL"), url ? h("a", { href: url, target: "_blank", rel: "noopener noreferrer" }, url) : access.url,
      h("span", null, "Token"), h("code", { class: "access-token" }, access.token),
      h("button", { type: "button", onclick: () => navigator.clipboard && navigator.clipboard.writeText(access.token).then(() => toast("Token copied"), () => toast("Copy failed", true)) }, "Copy"),
      h("button", { type: "button", class: "link", onclick: () => togglePanel(u, "access") }, "Hide")));
  }

  // --- backups panel: the user's volume, snapshots and recent jobs (docs/backups.md) ---
  // The user's volume in one line: where their data is, what it costs, why it waits.
  function volumeSummary(v) {
    if (!v) return null;
    const price = typeof v.monthly_price === "number" ? " · " + fmtMoney(v.monthly_price, 2) + " /month" : "";
    return [h("div", { class: "small muted user-volume" }, "volume: " + v.state + " · " + v.size_gb + " GB" + price),
      v.error ? h("div", { class: "small error" }, v.error) : null];
  }

  async function loadBackups(userId) {
    let data;
    try {
      data = await api("GET", "/v1/users/" + encodeURIComponent(userId) + "/backups");
    } catch (err) {
      const open = state.panels.get(userId);
      if (open && open.kind === "backups" && err.status !== 401) clear(open.node.firstChild).append(h("span", { class: "error" }, "Backups failed: " + err.message));
      return;
    }
    const open = state.panels.get(userId); // closed, or another panel, while it loaded
    if (!open || open.kind !== "backups") return;
    const u = state.users.find((x) => x.user_id === userId) || { user_id: userId, volume: null };
    clear(open.node.firstChild).append(backupsView(u, data));
  }

  const jobOpen = (j) => j.state === "pending" || j.state === "running";

  function backupsView(u, data) {
    const uid = u.user_id;
    const busy = data.jobs.some(jobOpen); // the API refuses a second job (409 backup_in_flight)
    const restoring = data.jobs.some((j) => j.kind === "restore" && jobOpen(j));
    return h("div", { class: "backups", dataset: { backupsFor: uid } },
      h("div", { class: "inline-panel" },
        h("strong", null, "Volume"), volumeLine(u.volume),
        h("button", { type: "button", class: "primary act-backup-now", disabled: !data.backups_enabled || busy,
          title: busy ? "a job of this user is still running" : null,
          onclick: () => act("Snapshot of " + uid + " asked for", "POST", "/v1/users/" + encodeURIComponent(uid) + "/backups") }, "Back up now"),
        h("button", { type: "button", class: "link", onclick: () => togglePanel(u, "backups") }, "Close")),
      data.backups_enabled ? null : h("p", { class: "small muted" }, "Backups are off (no BACKUP_S3_ENDPOINT)."),
      restoring ? h("p", { class: "small restoring" }, "Restore in progress: the container is stopped until it ends.") : null,
      h("h3", null, "Snapshots"), snapshotsTable(uid, data.snapshots, busy, volumeLost(u.volume)),
      h("h3", null, "Recent jobs"), jobsTable(data.jobs));
  }

  function volumeLine(v) {
    if (!v) return h("span", { class: "muted volume-line" }, "none (no USER_VOLUMES, or not placed yet)");
    const cost = state.summary && state.summary.volume_cost;
    const currency = cost && cost.currency ? " " + cost.currency : "";
    const price = typeof v.monthly_price === "number" ? fmtMoney(v.monthly_price, 2) + currency + " /month" : "no price";
    return h("span", { class: "volume-line" }, badge(v.state), " " + v.size_gb + " GB · " + [v.location, price].filter(Boolean).join(" · "),
      v.error ? h("span", { class: "error" }, " " + v.error) : null);
  }

  // The provider no longer has the volume (docs/backups.md, A lost volume): there is
  // nothing to restore onto, so a snapshot is recovered onto a new volume instead.
  const volumeLost = (v) => Boolean(v && v.error && /not found at the provider|reports it missing/.test(v.error));

  function snapshotsTable(uid, snapshots, busy, lost) {
    const rows = snapshots.map((s) => h("tr", { dataset: { snapshotId: s.id } },
      cell("Taken", fmtTime(s.at)),
      cell("Added", fmtBytes(s.bytes_added)),
      cell("Why", s.reason),
      cell("Snapshot", h("span", { class: "mono", title: s.id }, s.id.slice(0, 8))),
      cell("Action", lost
        ? h("button", { type: "button", class: "danger act-recover", disabled: busy,
          onclick: () => confirmRecover(uid, s) }, "Recover onto a new volume")
        : h("button", { type: "button", class: "danger act-restore", disabled: busy,
          onclick: () => confirmRestore(uid, s) }, "Restore this snapshot"))));
    if (!rows.length) rows.push(h("tr", null, h("td", { colspan: 5, class: "empty full" }, "No snapshots yet.")));
    return h("table", { class: "responsive nested snapshots" },
      h("thead", null, h("tr", null, ["Taken", "Added", "Why", "Snapshot", ""].map((t) => h("th", null, t)))),
      h("tbody", null, rows));
  }

  // A restore stops the container and replaces the volume's contents: ask first.
  function confirmRestore(uid, s) {
    const question = "Restore " + uid + " to the snapshot of " + fmtTime(s.at) + " (" + s.id.slice(0, 8) + ")? " +
      "Their container stops until the restore is done, and everything written since that snapshot is lost.";
    if (confirm(question)) act("Restore of " + uid + " asked for", "POST", "/v1/users/" + encodeURIComponent(uid) + "/restore", { snapshot_id: s.id });
  }

  function confirmRecover(uid, s) {
    const question = "The volume of " + uid + " is gone at the provider. Restore the snapshot of " + fmtTime(s.at) +
      " (" + s.id.slice(0, 8) + ") onto a new volume and start " + uid + " on it? Everything written since that snapshot is lost.";
    if (confirm(question)) act("Recovery of " + uid + " asked for", "POST", "/v1/users/" + encodeURIComponent(uid) + "/recover", { snapshot_id: s.id });
  }

  function jobsTable(jobs) {
    const rows = jobs.map((j) => h("tr", { dataset: { jobId: j.id } },
      cell("Job", j.kind + " · " + j.reason),
      cell("State", badge(j.state), j.attempts > 1 ? h("span", { class: "small muted" }, " attempt " + j.attempts) : null),
      cell("Asked", fmtTime(j.created_at)),
      cell("Finished", fmtTime(j.finished_at), j.bytes_added !== null && j.bytes_added !== undefined ? h("div", { class: "small muted" }, fmtBytes(j.bytes_added) + " added") : null),
      cell("Error", j.error ? h("span", { class: "error" }, j.error) : "—")));
    if (!rows.length) rows.push(h("tr", null, h("td", { colspan: 5, class: "empty full" }, "No jobs yet.")));
    return h("table", { class: "responsive nested jobs" },
      h("thead", null, h("tr", null, ["Job", "State", "Asked", "Finished", "Error"].map((t) => h("th", null, t)))),
      h("tbody", null, rows));
  }

  // --- events page ---------------------------------------------------------------
  function skeletonEvents(main) {
    document.title = "Events · Clawfleet";
    main.append(
      h("h1", null, "Events"),
      h("div", { class: "toolbar" },
        h("input", { type: "search", id: "event-filter", placeholder: "Filter kind, server, user, message…", "aria-label": "Filter events",
          oninput: renderEvents })),
      h("div", { class: "panel" }, h("table", { class: "responsive", id: "events" },
        h("thead", null, h("tr", null, ["#", "Time", "Kind", "Server", "User", "Message"].map((t) => h("th", null, t)))),
        h("tbody"))),
      h("div", { class: "more" }, h("button", { type: "button", id: "older", onclick: loadOlder }, "Load older")),
    );
  }

  async function loadOlder() {
    if (state.oldestEvent === null) return;
    try {
      const data = await api("GET", "/v1/events?limit=100&before=" + state.oldestEvent);
      for (const e of data.events) state.events.set(e.id, e);
      if (data.events.length) state.oldestEvent = data.events[data.events.length - 1].id;
      state.moreEvents = data.events.length === 100;
      renderEvents();
    } catch (err) {
      if (err.status !== 401) toast("Loading events failed: " + err.message, true);
    }
  }

  function renderEvents() {
    const q = ($("#event-filter") || { value: "" }).value.toLowerCase();
    const all = [...state.events.values()].sort((a, b) => b.id - a.id);
    const shown = all.filter((e) => !q || [e.kind, e.server_id, e.user_id, e.message].filter(Boolean).join(" ").toLowerCase().includes(q));
    const tbody = clear($("#events tbody"));
    if (!shown.length) tbody.append(h("tr", null, h("td", { colspan: 6, class: "empty full" }, all.length ? "No event matches." : "No events yet.")));
    for (const e of shown) {
      const failed = /fail|error|dead|unhealthy|theft|refus/i.test(e.kind);
      tbody.append(h("tr", { dataset: { eventId: String(e.id) } },
        h("td", { "data-label": "#", class: "num muted" }, e.id),
        cell("Time", h("span", { title: e.at }, fmtTime(e.at))),
        cell("Kind", h("span", { class: "badge " + (failed ? "s-failed" : "s-none") }, e.kind)),
        cell("Server", e.server_id ? link(serverHref(e.server_id), e.server_id) : "—"),
        cell("User", e.user_id ? link("/dashboard/users?q=" + encodeURIComponent(e.user_id), e.user_id) : "—"),
        cell("Message", e.message),
      ));
    }
    const older = $("#older");
    if (older) older.disabled = !state.moreEvents;
  }

  function skeletonMissing(main) {
    main.append(h("h1", null, "Not found"), h("p", null, link("/dashboard", "Back to the fleet")));
  }

  // --- start ---------------------------------------------------------------------
  async function start() {
    let info;
    try {
      info = await api("GET", "/dashboard/api/session");
    } catch (err) {
      if (err.status !== 401) toast("Cannot load the session: " + err.message, true);
      return;
    }
    state.csrf = info.csrf_token;
    state.baseDomain = info.base_domain;
    state.pollMs = Math.max(1000, (info.poll_seconds || 3) * 1000);
    $("#logout input[name=csrf_token]").value = state.csrf;
    enter();
    schedule();
    setInterval(tick, 1000);
  }
  start();
})();
