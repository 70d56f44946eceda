// tflock web page: keeps the page live. Hand-written, no build step, no libraries.
//
// The server renders whole pages that read without this script. This script:
// - listens to the server's event stream (GET /api/events, Server-Sent Events) and,
//   when a lock or queue changes, fetches the same page again and swaps in the parts
//   marked data-live="...", so the page follows the locks without a reload;
// - keeps relative times ("3m 12s ago", "expires in 47m") ticking;
// - filters the lock table as you type;
// - fills the health panel's latency figures from /api/health/locking when the server
//   rendered none.
(function () {
  "use strict";

  const body = document.body;
  const page = body.dataset.page; // "index", "lock", or none (forms: no live updates)
  const live = document.getElementById("live");
  let offset = 0; // server clock minus browser clock, in ms

  function parseTime(s) {
    // Timestamps carry microseconds; Date.parse is only required to read milliseconds.
    return Date.parse(String(s).replace(/(\.\d{3})\d+/, "$1"));
  }

  function syncClock(b) {
    const t = parseTime(b.dataset.serverNow);
    if (!Number.isNaN(t)) offset = t - Date.now();
  }

  // The same wording as html::age on the server.
  function age(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }

  function tick() {
    const now = Date.now() + offset;
    for (const el of document.querySelectorAll("time[data-rel]")) {
      const t = parseTime(el.dateTime);
      if (Number.isNaN(t)) continue;
      const rel = el.dataset.rel;
      let text;
      if (rel === "ago") text = age(now - t) + " ago";
      else if (rel === "since") text = age(now - t);
      else text = t > now ? age(t - now) : "now";
      if (el.textContent !== text) el.textContent = text;
    }
  }

  function status(text, state) {
    if (!live) return;
    live.hidden = false;
    if (live.textContent !== text) live.textContent = text;
    live.dataset.state = state;
  }

  // --- Filter -------------------------------------------------------------------
  const input = document.getElementById("filter");
  const count = document.getElementById("filter-count");

  function applyFilter() {
    if (!input) return;
    const q = input.value.trim().toLowerCase();
    const rows = document.querySelectorAll("#locks tbody tr[data-search]");
    let shown = 0;
    for (const r of rows) {
      const match = r.dataset.search.includes(q);
      r.hidden = !match;
      if (match) shown++;
    }
    const total = rows.length;
    const none = document.querySelector('tr[data-empty="none"]');
    if (none) none.hidden = total !== 0;
    const filtered = document.querySelector('tr[data-empty="filtered"]');
    if (filtered) filtered.hidden = !(total > 0 && shown === 0);
    const noun = total === 1 ? "lock" : "locks";
    const text = shown === total ? total + " " + noun + " held." : "Showing " + shown + " of " + total + " " + noun + ".";
    if (count && count.textContent !== text) count.textContent = text;
  }

  if (input) {
    input.addEventListener("input", function () {
      applyFilter();
      const url = new URL(location.href);
      if (input.value) url.searchParams.set("q", input.value);
      else url.searchParams.delete("q");
      history.replaceState(null, "", url);
    });
    if (input.form) {
      input.form.addEventListener("submit", function (e) {
        e.preventDefault();
        applyFilter();
      });
    }
  }

  // --- Health figures from the API ------------------------------------------------
  function parseDuration(s) {
    // humantime's form, e.g. "1ms 234us 567ns" or "0s"; in milliseconds.
    const units = { d: 864e5, day: 864e5, days: 864e5, h: 36e5, m: 6e4, s: 1e3, ms: 1, us: 1e-3, "µs": 1e-3, ns: 1e-6 };
    let ms = 0;
    let any = false;
    for (const m of String(s).matchAll(/(\d+(?:\.\d+)?)\s*([a-zµ]+)/g)) {
      if (units[m[2]] === undefined) return NaN;
      ms += Number(m[1]) * units[m[2]];
      any = true;
    }
    return any ? ms : NaN;
  }

  function latency(s) {
    const ms = parseDuration(s);
    if (Number.isNaN(ms)) return "—";
    if (ms < 10) return ms.toFixed(2) + " ms";
    if (ms < 1000) return ms.toFixed(1) + " ms";
    return (ms / 1000).toFixed(2) + " s";
  }

  function setField(root, field, text) {
    const el = root.querySelector('[data-field="' + field + '"]');
    if (el && el.textContent !== text) el.textContent = text;
  }

  async function fillPerf() {
    const panel = document.querySelector('[data-live="health"][data-perf="api"]');
    if (!panel) return;
    try {
      const r = await fetch("/api/health/locking", { cache: "no-store", headers: { Accept: "application/json" } });
      const p = (await r.json()).performance;
      if (!p) return;
      setField(panel, "p95", latency(p.p95_latency));
      setField(panel, "p99", latency(p.p99_latency));
      setField(panel, "ops", Number(p.operations_per_second).toFixed(1));
      panel.dataset.perfFilled = "true";
    } catch (e) {
      // Keep the dashes: the panel says where the figures come from.
    }
  }

  // --- Live refresh ---------------------------------------------------------------
  let es = null;
  let timer = null;
  let inFlight = false;
  let again = false;
  let last = 0;
  let refreshes = 0;

  // At most two refreshes a second, however many events arrive.
  function schedule(delay) {
    if (timer !== null) return;
    const wait = Math.max(delay || 100, 500 - (Date.now() - last));
    timer = setTimeout(refresh, wait);
  }

  function swap(doc) {
    const focused = document.activeElement;
    const focusId = focused && focused.id;
    const focusHref = focused && focused.getAttribute && focused.getAttribute("href");
    const known = new Set(Array.from(document.querySelectorAll("#locks tbody tr[data-key]"), function (r) { return r.dataset.key; }));
    for (const el of document.querySelectorAll("[data-live]")) {
      const fresh = doc.querySelector('[data-live="' + el.dataset.live + '"]');
      if (!fresh) continue;
      const node = document.importNode(fresh, true);
      if (node.dataset.perf === "api" && el.dataset.perfFilled === "true") {
        // Keep the figures read from the API until they are read again.
        for (const f of ["p95", "p99", "ops"]) {
          const old = el.querySelector('[data-field="' + f + '"]');
          if (old) setField(node, f, old.textContent);
        }
        node.dataset.perfFilled = "true";
      }
      el.replaceWith(node);
    }
    if (known.size > 0 || page === "index") {
      for (const r of document.querySelectorAll("#locks tbody tr[data-key]")) {
        if (!known.has(r.dataset.key)) r.classList.add("fresh");
      }
    }
    // Give focus back to the same control, if it is still on the page.
    if (focused && !document.contains(focused)) {
      let target = focusId ? document.getElementById(focusId) : null;
      if (!target && focusHref) target = document.querySelector('[data-live] a[href="' + CSS.escape(focusHref) + '"]');
      if (target) target.focus();
    }
  }

  async function refresh() {
    timer = null;
    if (inFlight) {
      again = true;
      return;
    }
    inFlight = true;
    last = Date.now();
    let failed = false;
    try {
      const url = new URL(location.href);
      url.searchParams.delete("q");
      url.searchParams.delete("done");
      const r = await fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "text/html" } });
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      syncClock(doc.body);
      swap(doc);
      applyFilter();
      tick();
      fillPerf();
      refreshes++;
      body.dataset.refreshes = String(refreshes);
      if (es && es.readyState === EventSource.OPEN) status("Live", "ok");
    } catch (e) {
      failed = true;
      status("Update failed, retrying…", "warn");
    } finally {
      inFlight = false;
      if (failed) schedule(3000);
      else if (again) {
        again = false;
        schedule();
      }
    }
  }

  if (page === "index" || page === "lock") {
    if ("EventSource" in window) {
      es = new EventSource("/api/events");
      const onEvent = function (ev) {
        if (page === "lock" && ev.type !== "lagged") {
          try {
            if (JSON.parse(ev.data).key !== body.dataset.key) return;
          } catch (e) {
            // Not JSON: refresh anyway.
          }
        }
        schedule();
      };
      for (const name of ["lock.acquired", "lock.released", "lock.expired", "lock.transferred",
                          "queue.entered", "queue.left", "queue.granted", "lagged"]) {
        es.addEventListener(name, onEvent);
      }
      // On every (re)connect, read the page once: events may have been missed while
      // the stream was down or before it first opened.
      es.addEventListener("open", function () {
        status("Live", "ok");
        schedule();
      });
      es.addEventListener("error", function () {
        status(es.readyState === EventSource.CLOSED ? "Live updates stopped: reload the page" : "Reconnecting…", "warn");
      });
    } else {
      status("Live updates need a newer browser", "warn");
    }
    // Health figures move without events.
    if (page === "index") setInterval(schedule, 15000);
  }

  syncClock(body);
  applyFilter();
  tick();
  fillPerf();
  setInterval(tick, 1000);

  // The "done" message belongs to this visit only: a reload should not show it again.
  const here = new URL(location.href);
  if (here.searchParams.has("done")) {
    here.searchParams.delete("done");
    history.replaceState(null, "", here);
  }
})();
