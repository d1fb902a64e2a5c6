// Micro's dashboard: plain JavaScript over the node's HTTP API (the same calls as `curl`),
// with the caller's own token (the `micro-token` cookie), so it shows what that account may
// see and nothing else. It only reads.
"use strict";

const $ = (sel, el = document) => el.querySelector(sel);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) =>
  ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const num = (v) => Number(v ?? 0); // proto3 JSON writes 64-bit integers as strings

/// Milliseconds as the largest whole unit: 604800000 → "7 d".
function age(ms) {
  for (const [unit, n] of [["d", 86400000], ["h", 3600000], ["min", 60000], ["s", 1000]]) {
    if (ms >= n && ms % n === 0) return `${ms / n} ${unit}`;
  }
  return `${ms} ms`;
}

// --- session -------------------------------------------------------------------------------

const COOKIE = "micro-token";

function setToken(token) {
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = `${COOKIE}=${encodeURIComponent(token)}; Path=/; SameSite=Strict${secure}`;
}

function token() {
  const m = document.cookie.match(/(?:^|;\s*)micro-token=([^;]*)/);
  return m ? decodeURIComponent(m[1]) : "";
}

function claims() {
  try {
    const part = token().split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch (_) {
    return null;
  }
}

// A token in the address (`/#/cluster?token=...`, as `micro dashboard` prints it) becomes the
// cookie and leaves the address bar (and the history) at once.
function takeTokenFromAddress() {
  const m = location.hash.match(/[#?&]token=([^&]+)/);
  if (m) {
    setToken(decodeURIComponent(m[1]));
    const page = (location.hash.match(/^#\/(\w+)/) || [])[1] || "cluster";
    history.replaceState(null, "", `${location.pathname}#/${page}`);
  }
}

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(path, body = {}) {
  const resp = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    credentials: "same-origin",
    body: JSON.stringify(body),
  });
  const text = await resp.text();
  let json = null;
  try { json = text ? JSON.parse(text) : {}; } catch (_) { /* not JSON */ }
  if (!resp.ok) {
    if (resp.status === 401) showLogin();
    throw new ApiError(resp.status, (json && json.detail) || text || resp.statusText);
  }
  return json;
}

function showLogin(message) {
  stopPage();
  const main = $("#main");
  main.replaceChildren($("#login").content.cloneNode(true));
  if (message) $("#login-error").textContent = message;
  $("#login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    try {
      if (f.get("token")) {
        setToken(String(f.get("token")).trim());
      } else {
        const headers = { "Content-Type": "application/json" };
        if (f.get("namespace")) headers["Micro-Namespace"] = f.get("namespace");
        const resp = await fetch("/auth/token", {
          method: "POST",
          headers,
          body: JSON.stringify({ id: f.get("id"), secret: f.get("secret") }),
        });
        const json = await resp.json();
        if (!resp.ok) throw new Error(json.detail || resp.statusText);
        setToken(json.token.access_token);
      }
      location.hash = "#/cluster";
      route();
    } catch (e) {
      $("#login-error").textContent = e.message;
    }
  });
}

function renderWho() {
  const c = claims();
  const who = $("#who");
  if (!c) { who.textContent = ""; return; }
  who.innerHTML = `${esc(c.sub)} <span class="muted">@ ${esc(c.iss)}</span>
    <button class="quiet" id="logout">Sign out</button>`;
  $("#logout").onclick = () => {
    document.cookie = `${COOKIE}=; Path=/; Max-Age=0; SameSite=Strict`;
    showLogin();
    renderWho();
  };
}

// --- pages ---------------------------------------------------------------------------------

let timers = [];
let sources = [];

function stopPage() {
  timers.forEach(clearInterval);
  sources.forEach((s) => s.close());
  timers = [];
  sources = [];
}

/// Runs `fn` now and every `ms` while the page is shown.
function every(ms, fn) {
  fn();
  timers.push(setInterval(fn, ms));
}

function errorBox(e) {
  return `<p class="error">${esc(e.status ? `${e.status}: ` : "")}${esc(e.message)}</p>`;
}

function table(headers, rows, attrs = () => "") {
  if (!rows.length) return `<p class="muted">Nothing here yet.</p>`;
  const head = headers.map(([h, cls]) => `<th class="${cls || ""}">${esc(h)}</th>`).join("");
  const body = rows.map((r, i) =>
    `<tr ${attrs(r, i)}>${r.cells.map(([v, cls]) => `<td class="${cls || ""}">${v}</td>`).join("")}</tr>`
  ).join("");
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

const pages = {
  async cluster(main) {
    main.innerHTML = `
      <section class="card"><div class="stats" id="stats"></div></section>
      <section class="card"><h2>Members</h2><div id="members"></div></section>`;
    every(1000, async () => {
      try {
        const s = await api("/cluster/status");
        const leader = num(s.leader);
        const members = s.members || [];
        const up = members.filter((m) => m.state !== "unreachable").length;
        $("#stats").innerHTML = [
          ["leader", leader ? `node ${leader}` : "none"],
          ["term", num(s.term)],
          ["members up", `${up} / ${members.length}`],
          ["answered by", `node ${num(s.node_id)}`],
          ["cluster", esc((s.cluster_id || "").slice(0, 12))],
        ].map(([k, v]) => `<div class="stat"><b>${v}</b><span>${k}</span></div>`).join("");
        $("#members").innerHTML = table(
          [["node"], ["status"], ["role"], ["state"], ["grpc"], ["http"],
           ["last log", "num"], ["applied", "num"], ["lag", "num"]],
          members.map((m) => {
            const down = m.state === "unreachable";
            const badge = down ? `<span class="badge down">down</span>`
              : num(m.id) === leader ? `<span class="badge leader">leader</span>`
              : `<span class="badge up">up</span>`;
            return {
              id: num(m.id), state: down ? "down" : "up",
              cells: [[`${num(m.id)}`], [badge], [esc(m.role)], [esc(m.state)],
                [esc(m.grpc_address)], [esc(m.http_address)],
                [num(m.last_log_index), "num"], [num(m.applied_index), "num"],
                [down ? "–" : num(m.lag), "num"]],
            };
          }),
          (r) => `data-node="${r.id}" data-state="${r.state}"`);
      } catch (e) {
        $("#members").innerHTML = errorBox(e);
      }
    });
  },

  async store(main) {
    main.innerHTML = `
      <section class="card">
        <form class="inline" id="q">
          <label>Database <select name="database" id="db"></select></label>
          <label>Table <select name="table" id="table"></select></label>
          <label>Key prefix <input name="prefix" placeholder="(all keys)"></label>
          <button type="submit">List</button>
        </form>
      </section>
      <div class="row">
        <section class="card"><h2>Keys</h2><div id="keys"></div></section>
        <section class="card"><h2>Record</h2><div id="record" class="muted">Pick a key.</div></section>
      </div>`;
    const db = $("#db"), tbl = $("#table");
    const loadTables = async () => {
      const t = await api("/store/tables", { database: db.value });
      tbl.innerHTML = (t.tables || []).map((x) => `<option>${esc(x)}</option>`).join("");
    };
    const list = async () => {
      const f = new FormData($("#q"));
      try {
        const r = await api("/store/list", { options: {
          database: f.get("database"), table: f.get("table"), prefix: f.get("prefix"), limit: 500 } });
        const keys = r.keys || [];
        $("#keys").innerHTML = table([["key"]],
          keys.map((k) => ({ key: k, cells: [[`<code>${esc(k)}</code>`]] })),
          (r) => `class="pick" data-key="${esc(r.key)}"`);
        $("#keys").querySelectorAll("tr.pick").forEach((tr) =>
          tr.addEventListener("click", () => show(tr.dataset.key, tr)));
      } catch (e) {
        $("#keys").innerHTML = errorBox(e);
      }
    };
    const show = async (key, tr) => {
      $("#keys").querySelectorAll("tr").forEach((x) => x.classList.remove("selected"));
      tr.classList.add("selected");
      try {
        const r = await api("/store/read", { key, options: { database: db.value, table: tbl.value } });
        const rec = (r.records || [])[0];
        let value = "";
        try { value = new TextDecoder("utf-8", { fatal: true }).decode(
          Uint8Array.from(atob(rec.value || ""), (c) => c.charCodeAt(0))); }
        catch (_) { value = `(binary, base64) ${rec.value}`; }
        $("#record").innerHTML = `
          <p><code>${esc(rec.key)}</code></p>
          <pre id="value">${esc(value)}</pre>
          <table>
            <tr><th>created at revision</th><td class="num">${num(rec.create_revision)}</td></tr>
            <tr><th>modified at revision</th><td class="num">${num(rec.mod_revision)}</td></tr>
            <tr><th>version (writes since created)</th><td class="num">${num(rec.version)}</td></tr>
            <tr><th>expires in (s)</th><td class="num">${num(rec.expiry) || "never"}</td></tr>
            <tr><th>lease</th><td class="num">${num(rec.lease) || "–"}</td></tr>
          </table>`;
      } catch (e) {
        $("#record").innerHTML = errorBox(e);
      }
    };
    try {
      const d = await api("/store/databases");
      db.innerHTML = (d.databases || []).map((x) => `<option>${esc(x)}</option>`).join("");
      await loadTables();
      db.addEventListener("change", loadTables);
      $("#q").addEventListener("submit", (ev) => { ev.preventDefault(); list(); });
      await list();
    } catch (e) {
      $("#keys").innerHTML = errorBox(e);
    }
  },

  async events(main) {
    main.innerHTML = `
      <section class="card"><h2>Topics</h2><div id="topics"></div></section>
      <section class="card"><h2>Live tail <span class="muted" id="tailing"></span></h2>
        <div id="tail" class="tail muted">Pick a topic to follow its new events.</div></section>`;
    const tail = (topic) => {
      sources.forEach((s) => s.close());
      sources = [];
      $("#tailing").textContent = topic;
      $("#tail").innerHTML = "";
      const es = new EventSource(`/events/stream/consume?topic=${encodeURIComponent(topic)}`);
      es.onmessage = (m) => {
        const ev = JSON.parse(m.data);
        let payload = ev.payload || "";
        try { payload = atob(payload); } catch (_) { /* keep base64 */ }
        const line = document.createElement("pre");
        line.textContent = `#${num(ev.sequence)}  ${payload}`;
        $("#tail").prepend(line);
      };
      es.onerror = () => { $("#tailing").textContent = `${topic} (reconnecting…)`; };
      sources.push(es);
    };
    every(2000, async () => {
      try {
        const r = await api("/events/stream/topics");
        const topics = r.topics || [];
        $("#topics").innerHTML = table(
          [["topic"], ["first", "num"], ["last", "num"], ["retention"], ["groups (pending / lag)"]],
          topics.map((t) => ({ name: t.name, cells: [
            [`<code>${esc(t.name)}</code>`],
            [num(t.first_sequence), "num"], [num(t.last_sequence), "num"],
            [[num(t.max_events) ? `${num(t.max_events).toLocaleString("en")} events` : "",
              num(t.max_age) ? age(num(t.max_age)) : ""].filter(Boolean).join(", ") || "unlimited"],
            [(t.groups || []).map((g) =>
              `<code>${esc(g.name)}</code> ${num(g.pending)} / ${num(g.lag)}`).join("<br>") || "–"],
          ] })),
          (r) => `class="pick" data-topic="${esc(r.name)}"`);
        $("#topics").querySelectorAll("tr.pick").forEach((tr) =>
          tr.addEventListener("click", () => tail(tr.dataset.topic)));
      } catch (e) {
        $("#topics").innerHTML = errorBox(e);
      }
    });
  },

  async registry(main) {
    main.innerHTML = `<div class="row">
      <section class="card"><h2>Services</h2><div id="services"></div></section>
      <section class="card"><h2>Instances and endpoints</h2><div id="service" class="muted">Pick a service.</div></section>
    </div>`;
    const show = async (name) => {
      try {
        const r = await api("/registry/get-service", { service: name });
        $("#service").innerHTML = (r.services || []).map((s) => `
          <h2>${esc(s.name)} <span class="muted">${esc(s.version)}</span></h2>
          ${table([["instance"], ["address"]], (s.nodes || []).map((n) =>
            ({ cells: [[esc(n.id)], [`<code>${esc(n.address)}</code>`]] })))}
          ${table([["endpoint"], ["request"], ["response"]], (s.endpoints || []).map((e) =>
            ({ cells: [[`<code>${esc(e.name)}</code>`], [esc(e.request && e.request.type)],
              [esc(e.response && e.response.type)]] })))}`).join("");
      } catch (e) {
        $("#service").innerHTML = errorBox(e);
      }
    };
    every(3000, async () => {
      try {
        const r = await api("/registry/list-services");
        const names = [...new Set((r.services || []).map((s) => s.name))].sort();
        $("#services").innerHTML = table([["service"]],
          names.map((n) => ({ name: n, cells: [[`<code>${esc(n)}</code>`]] })),
          (r) => `class="pick" data-service="${esc(r.name)}"`);
        $("#services").querySelectorAll("tr.pick").forEach((tr) =>
          tr.addEventListener("click", () => show(tr.dataset.service)));
      } catch (e) {
        $("#services").innerHTML = errorBox(e);
      }
    });
  },

  async config(main) {
    const ns = (claims() || {}).iss || "micro";
    main.innerHTML = `
      <section class="card"><form class="inline" id="q">
        <label>Namespace <input name="namespace" value="${esc(ns)}"></label>
        <label>Path <input name="path" placeholder="(the whole document)"></label>
        <button type="submit">Read</button></form></section>
      <section class="card"><h2>Document</h2><div id="doc"></div></section>`;
    const read = async () => {
      const f = new FormData($("#q"));
      try {
        const r = await api("/config/read", { namespace: f.get("namespace"), path: f.get("path") });
        $("#doc").innerHTML = `<pre>${esc(JSON.stringify(r.change || r, null, 2))}</pre>`;
      } catch (e) {
        $("#doc").innerHTML = errorBox(e);
      }
    };
    $("#q").addEventListener("submit", (ev) => { ev.preventDefault(); read(); });
    read();
  },

  async locks(main) {
    main.innerHTML = `<section class="card"><h2>Locks and elections</h2><div id="locks"></div></section>`;
    every(2000, async () => {
      try {
        const r = await api("/sync/list");
        $("#locks").innerHTML = table([["name"], ["holder token", "num"], ["lease", "num"], ["waiting", "num"]],
          (r.locks || []).map((l) => ({ cells: [[`<code>${esc(l.name)}</code>`],
            [num(l.token) || "free", "num"], [num(l.lease) || "–", "num"], [num(l.waiting), "num"]] })));
      } catch (e) {
        $("#locks").innerHTML = errorBox(e);
      }
    });
  },

  async runtime(main) {
    main.innerHTML = `<section class="card"><h2>Runtime</h2>
      <p class="muted">Services started with <code>micro run</code>: every instance, its node and status.</p>
      <div id="runtime"></div></section>`;
    every(2000, async () => {
      try {
        const r = await api("/runtime/read", {});
        const now = Date.now() / 1000;
        const rows = [];
        for (const s of r.services || []) {
          for (const i of s.instances || []) {
            const up = i.status_name === "running" && num(i.started) ? age(Math.max(0, Math.round(now - num(i.started))) * 1000) : "–";
            rows.push({ cells: [[`<code>${esc(s.name)}</code>`], [esc(s.version)], [num(i.index), "num"],
              [num(i.node) || "–", "num"], [`<span class="status ${esc(i.status_name)}">${esc(i.status_name)}</span>`],
              [num(i.restarts), "num"], [up], [esc(i.error)]] });
          }
        }
        $("#runtime").innerHTML = table([["name"], ["version"], ["instance", "num"], ["node", "num"], ["status"],
          ["restarts", "num"], ["uptime"], ["info"]], rows);
      } catch (e) {
        $("#runtime").innerHTML = errorBox(e);
      }
    });
  },

  async auth(main) {
    main.innerHTML = `<div class="row">
      <section class="card"><h2>Accounts</h2><div id="accounts"></div></section>
      <section class="card"><h2>Rules</h2><div id="rules"></div></section></div>`;
    try {
      const a = await api("/auth/accounts/list");
      $("#accounts").innerHTML = table([["id"], ["name"], ["type"], ["scopes"], ["namespace"]],
        (a.accounts || []).map((x) => ({ cells: [[esc(x.id)], [esc(x.name)], [esc(x.type)],
          [esc((x.scopes || []).join(", "))], [esc(x.issuer)]] })));
    } catch (e) {
      $("#accounts").innerHTML = errorBox(e);
    }
    try {
      const r = await api("/auth/rules/list");
      $("#rules").innerHTML = table([["id"], ["scope"], ["resource"], ["access"], ["priority", "num"]],
        (r.rules || []).map((x) => ({ cells: [[esc(x.id)], [esc(x.scope)],
          [`<code>${esc([x.resource && x.resource.type, x.resource && x.resource.name,
            x.resource && x.resource.endpoint].join(":"))}</code>`],
          [esc(x.access)], [num(x.priority), "num"]] })));
    } catch (e) {
      $("#rules").innerHTML = errorBox(e);
    }
  },
};

function route() {
  stopPage();
  takeTokenFromAddress();
  const page = (location.hash.match(/^#\/(\w+)/) || [])[1] || "cluster";
  document.querySelectorAll("#nav a").forEach((a) =>
    a.classList.toggle("active", a.dataset.page === page));
  renderWho();
  const main = $("#main");
  const show = () => {
    main.dataset.page = page;
    (pages[page] || pages.cluster)(main);
  };
  if (token()) {
    show();
    return;
  }
  // No session: a node started with --auth-disabled answers anyway; any other asks for one
  // (the 401 shows the sign-in form).
  api("/cluster/status").then(show, (e) => {
    if (e.status !== 401) showLogin(e.message);
  });
}

window.addEventListener("hashchange", route);
route();
