/* The overview: fleet, inboxes, charts and recent runs, all fed by /api/stream. */
"use strict";

(() => {
  const { el, badge, duration, ago, number, short } = AW;
  const $ = (id) => document.getElementById(id);
  const knownAgents = new Set();
  const rows = new Map(); // run id → <tr>, so an update changes rows in place
  let firstRuns = true;
  let source = null;

  /* --- tiles, fleet, inboxes --------------------------------------------------------- */
  function renderOverview(data) {
    AW.setBanner(null);
    const workers = data.fleet.flatMap((m) => m.workers);
    const up = workers.filter((w) => w.state !== "stopped").length;
    const busy = workers.filter((w) => w.state === "busy").length;
    $("t-workers").textContent = data.fleet.length ? busy + " / " + up : "–";
    const sum = (name) => data.inboxes.reduce((n, i) => n + (i[name] || 0), 0);
    $("t-lag").textContent = number(sum("lag"));
    $("t-pending").textContent = number(sum("pending"));
    const ages = data.inboxes.map((i) => i.oldest_pending_age_s).filter((a) => a !== null);
    $("t-oldest").textContent = ages.length ? duration(Math.max(...ages) * 1000) : "–";
    $("t-dlq").textContent = number(sum("dlq"));
    $("t-completed").textContent = number(data.totals.runs_completed ?? null);
    $("t-failed").textContent = number(data.totals.runs_failed ?? null);
    renderFleet(data.fleet);
    renderInboxes(data.inboxes);
    for (const inbox of data.inboxes) addAgent(inbox.target);
  }

  function renderFleet(fleet) {
    const box = $("fleet");
    $("fleet-note").textContent = AW.plural(fleet.length, "supervisor", "supervisors");
    if (!fleet.length) {
      box.replaceChildren(el("div", { class: "empty" },
        "No supervisor is reporting (agents-worker run publishes its workers here)."));
      return;
    }
    box.replaceChildren(...fleet.map((m) => el("div", { class: "member" },
      el("div", { class: "title" },
        el("b", {}, m.instance),
        el("span", { class: "muted small" }, m.host + " · pid " + m.pid),
        el("span", { class: "muted small" }, "up since " + AW.datetime(m.started_at)),
        m.targets.length ? el("span", { class: "muted small" }, "serves " + m.targets.join(", ")) : null),
      el("div", { class: "workers" }, m.workers.length ? m.workers.map((w) => el("div", { class: "worker" },
        el("span", { class: "name" }, w.name),
        el("span", {}, badge(w.state)),
        el("span", { class: "muted small" },
          "pid " + (w.pid ?? "–") + " · " + AW.plural(w.runs, "run", "runs") +
          (w.rss_mb ? " · " + Math.round(w.rss_mb) + " MB" : "")))) :
        el("span", { class: "muted small" }, "no workers")))));
  }

  function renderInboxes(inboxes) {
    const body = $("inboxes").tBodies[0];
    $("inboxes-empty").classList.toggle("hidden", inboxes.length > 0);
    body.replaceChildren(...inboxes.map((i) => el("tr", {},
      el("td", { class: "mono", title: i.target }, i.target),
      el("td", { class: "num", title: i.lag === null ? "no consumer group yet, or Redis cannot tell" : null }, i.lag === null ? "–" : number(i.lag)),
      el("td", { class: "num" }, number(i.pending)),
      el("td", { class: "num" }, i.oldest_pending_age_s === null ? "–" : duration(i.oldest_pending_age_s * 1000)),
      el("td", { class: "num" }, number(i.delayed)),
      el("td", { class: "num" }, i.dlq ? el("a", { href: "/dlq?target=" + encodeURIComponent(i.target) }, number(i.dlq)) : "0"))));
  }

  /* --- recent runs ------------------------------------------------------------------- */
  function addAgent(name) {
    if (!name || knownAgents.has(name)) return;
    knownAgents.add(name);
    const select = $("f-agent");
    const names = [...knownAgents].sort();
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "" }, "any"), ...names.map((n) => el("option", { value: n }, n)));
    select.value = chosen;
  }

  function runCells(run) {
    const detail = run.error
      ? el("span", { class: "error-text", title: run.error }, short(run.error, 120))
      : el("span", { class: "muted" }, run.worker || "");
    return [
      el("td", { class: "mono" }, el("a", { href: "/runs/" + encodeURIComponent(run.run_id), title: run.run_id }, run.run_id)),
      el("td", {}, badge(run.status)),
      el("td", { title: run.agent }, run.agent),
      el("td", { class: "muted", title: run.session || "" }, run.session || "–"),
      el("td", { class: "num" }, run.duration_ms === null ? "–" : duration(run.duration_ms)),
      el("td", { class: "muted", title: AW.datetime(run.at), dataset: { ago: String(run.at) } }, ago(run.at)),
      el("td", {}, detail),
    ];
  }

  function renderRuns(data) {
    const body = $("runs").tBodies[0];
    const seen = new Set();
    data.runs.forEach((run) => {
      seen.add(run.run_id);
      addAgent(run.agent);
      const signature = [run.status, run.duration_ms, run.error, run.at, run.worker].join("|");
      let row = rows.get(run.run_id);
      if (!row) {
        row = el("tr", { dataset: { run: run.run_id } });
        if (!firstRuns) row.classList.add("fresh");
        rows.set(run.run_id, row);
      }
      if (row.dataset.signature !== signature) {
        row.dataset.signature = signature;
        row.dataset.status = run.status;
        row.replaceChildren(...runCells(run));
      }
      body.append(row); // moves it to its place, newest first
    });
    for (const [id, row] of rows) {
      if (!seen.has(id)) { row.remove(); rows.delete(id); }
    }
    firstRuns = false;
    $("runs-empty").classList.toggle("hidden", data.runs.length > 0);
    const filtered = data.filter.status || data.filter.agent;
    $("runs-note").textContent = filtered
      ? "Filtered over the " + number(data.window) + " most recent lifecycle events."
      : "The " + AW.plural(data.runs.length, "most recent run", "most recent runs") + ".";
  }

  /* --- charts ------------------------------------------------------------------------ */
  const charts = {};

  function colour(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function chartOptions(box, series, unit, floor, dots) {
    const axis = { stroke: colour("--muted"), grid: { stroke: colour("--line"), width: 1 }, ticks: { stroke: colour("--line") } };
    return {
      width: box.clientWidth || 400,
      height: 190,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(floor, (max || 0) * 1.15)] } },
      axes: [axis, { ...axis, size: 64, values: (u, ticks) => ticks.map((v) => unit(v)) }],
      series: [{}, ...series.map(([label, stroke]) => ({
        label, stroke, width: 2, fill: stroke + "22", points: { show: dots, size: 6, fill: stroke }, value: (u, v) => (v === null ? "–" : unit(v)),
      }))],
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
    };
  }

  function drawChart(name, box, series, data, unit, floor, dots) {
    if (!charts[name]) {
      box.replaceChildren();
      charts[name] = new uPlot(chartOptions(box, series, unit, floor, dots), data, box);
      new ResizeObserver(() => charts[name].setSize({ width: box.clientWidth, height: 190 })).observe(box);
    } else {
      charts[name].setData(data);
    }
  }

  function latencyTick(v) {
    if (v === 0) return "0";
    if (v >= 1000) return +(v / 1000).toFixed(2) + " s";
    return (v < 10 ? +v.toFixed(1) : Math.round(v)) + " ms";
  }

  function renderCharts(data) {
    const throughput = $("chart-throughput");
    const latency = $("chart-latency");
    if (!data.history) {
      for (const [name, box] of [["throughput", throughput], ["latency", latency]]) {
        if (charts[name]) { charts[name].destroy(); delete charts[name]; }
        box.replaceChildren(el("div", { class: "off" }, "history off — " + data.reason));
      }
      return;
    }
    const perMinute = (v) => (v >= 100 ? Math.round(v) : +v.toFixed(1)) + "";
    drawChart("throughput", throughput, [["completed", colour("--ok")], ["failed", colour("--bad")]],
      [data.x, data.completed, data.failed], perMinute, 4, false);
    drawChart("latency", latency, [["avg run latency", colour("--accent")]], [data.x, data.latency_ms],
      latencyTick, 10, true);
  }

  /* --- the feed ---------------------------------------------------------------------- */
  function connect() {
    if (source) source.close();
    const params = new URLSearchParams();
    if ($("f-status").value) params.set("status", $("f-status").value);
    if ($("f-agent").value) params.set("agent", $("f-agent").value);
    const query = params.toString();
    history.replaceState(null, "", query ? "?" + query : location.pathname);
    source = AW.live("/api/stream" + (query ? "?" + query : ""), {
      overview: renderOverview,
      runs: renderRuns,
      charts: renderCharts,
      problem: (data) => AW.setBanner(data.message),
    });
  }

  const initial = new URLSearchParams(location.search);
  if (initial.get("agent")) addAgent(initial.get("agent"));
  $("f-status").value = initial.get("status") || "";
  $("f-agent").value = initial.get("agent") || "";
  $("f-status").addEventListener("change", () => { firstRuns = true; connect(); });
  $("f-agent").addEventListener("change", () => { firstRuns = true; connect(); });
  connect();
})();
