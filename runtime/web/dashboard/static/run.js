/* A run's page: its record, its span tree as a waterfall and its events, fed by
   /api/stream?run=<id> (sent again only when something changed: while the run runs, the
   page itself extends the bars of spans still running, from the server's `now`). */
"use strict";

(() => {
  const { el, badge, duration, datetime, number } = AW;
  const $ = (id) => document.getElementById(id);
  const runId = decodeURIComponent(location.pathname.replace(/^\/runs\//, "").replace(/\/$/, ""));
  const KINDS = ["submit", "inbox", "attempt", "retry", "dead_letter", "task", "agent", "turn",
    "generation", "response", "function", "handoff", "guardrail", "custom"];
  const BAD_EVENTS = ["run.failed", "event.unreadable"];
  let current = null;
  let receivedAt = 0;

  document.title = "agents-worker · run " + runId;
  $("run-id").textContent = runId;

  /* --- record ------------------------------------------------------------------------ */
  function fact(label, value, title) {
    return el("div", {}, el("div", { class: "k" }, label), el("div", { class: "v", title: title || null }, value));
  }

  function seconds(a, b) {
    return a && b ? duration((b - a) * 1000) : "–";
  }

  function renderRecord(run) {
    $("run-status").replaceChildren(badge(run.status));
    const usage = run.usage || {};
    const tokens = usage.input_tokens !== undefined
      ? number(usage.input_tokens) + " in · " + number(usage.output_tokens) + " out"
      : "–";
    $("facts").replaceChildren(
      fact("Agent", run.agent),
      fact("Last agent", run.last_agent || "–"),
      fact("Session", run.session_id || "–"),
      fact("Worker", run.worker || "–"),
      fact("Submitted", datetime(run.submitted_at)),
      fact("Started", datetime(run.started_at)),
      fact("Finished", datetime(run.finished_at)),
      fact("Waited in inbox", seconds(run.submitted_at, run.started_at)),
      fact("Ran for", seconds(run.started_at, run.finished_at)),
      fact("Attempts", run.attempts === null ? "–" : number(run.attempts)),
      fact("Tokens", tokens),
    );
    const outcome = $("outcome");
    if (run.error) {
      outcome.replaceChildren(el("div", { class: "k muted small", style: { marginTop: "14px" } },
        "ERROR" + (run.error_type ? " · " + run.error_type : "")),
      el("pre", { class: "output error-text" }, run.error));
    } else if (run.final_output !== null && run.final_output !== undefined) {
      const text = typeof run.final_output === "string" ? run.final_output : JSON.stringify(run.final_output, null, 2);
      outcome.replaceChildren(el("div", { class: "k muted small", style: { marginTop: "14px" } }, "RESULT"),
        el("pre", { class: "output", id: "result" }, text));
    } else {
      outcome.replaceChildren();
    }
    const cancellable = run.status === "queued" || run.status === "running";
    $("cancel").classList.toggle("hidden", !cancellable || run.cancel_requested);
  }

  /* --- waterfall --------------------------------------------------------------------- */
  function renderLegend(spans) {
    const seen = new Set(spans.map((s) => s.kind));
    const present = [...KINDS.filter((k) => seen.has(k)), ...[...seen].filter((k) => !KINDS.includes(k))];
    $("legend").replaceChildren(...present.map((k) => el("span", { class: "kind-" + k }, el("i"), k.replace("_", " "))));
  }

  function axisRow(total) {
    const labels = [0, 0.25, 0.5, 0.75, 1].map((f) =>
      el("span", { style: { left: f * 100 + "%" } }, f === 0 ? "0" : duration(total * f)));
    return el("div", { class: "wf-row axis" },
      el("div", { class: "wf-name" }, "span"),
      el("div", { class: "wf-axis-labels" }, labels),
      el("div", { class: "wf-dur" }, "duration"));
  }

  function spanRow(span, total) {
    const left = total > 0 ? (span.offset_ms / total) * 100 : 0;
    const width = total > 0 ? Math.max((span.duration_ms / total) * 100, 0.25) : 100;
    const ticks = [0.25, 0.5, 0.75].map((f) => el("div", { class: "tick", style: { left: f * 100 + "%" } }));
    const bar = el("div", {
      class: "wf-bar" + (span.status === "error" ? " error" : "") + (span.status === "running" ? " running" : ""),
      style: { left: Math.min(left, 99.75) + "%", width: Math.min(width, 100 - Math.min(left, 99.75)) + "%" },
    });
    const row = el("div", { class: "wf-row kind-" + span.kind, dataset: { span: span.span_id, kind: span.kind } },
      el("div", { class: "wf-name", style: { paddingLeft: 12 + span.depth * 16 + "px" } },
        span.status === "error" ? el("span", { class: "err", title: span.error || "error" }, "!") : null,
        span.name, el("span", { class: "kind" }, span.kind)),
      el("div", { class: "wf-track" }, ticks, bar),
      el("div", { class: "wf-dur" }, span.end === null ? "running" : duration(span.duration_ms)));
    row.addEventListener("mousemove", (event) => showTip(event, span));
    row.addEventListener("mouseleave", hideTip);
    return row;
  }

  /* The waterfall as of now: while the run runs, a span still running (end null) lasts until
     the server's `now` plus the time since it was received. */
  function asOfNow(data) {
    if (!data.running || !data.spans.length) return data;
    const now = data.now + (performance.now() - receivedAt) / 1000;
    const begin = data.spans[0].start - data.spans[0].offset_ms / 1000;
    const spans = data.spans.map((s) => s.end !== null ? s
      : Object.assign({}, s, { duration_ms: Math.max(s.duration_ms, (now - s.start) * 1000) }));
    return Object.assign({}, data, { spans, trace_ms: Math.max(data.trace_ms, (now - begin) * 1000) });
  }

  function renderTrace(data) {
    const box = $("waterfall");
    const cut = data.spans_total > data.spans_read
      ? " · " + number(data.spans_read) + " of " + number(data.spans_total) + " spans shown (the rest left out)"
      : "";
    $("trace-id").textContent = data.trace_id ? "trace " + data.trace_id + cut : "";
    if (!data.spans.length) {
      box.replaceChildren(el("div", { class: "empty" }, data.trace_id
        ? "No spans recorded yet for this trace (spans are written in batches; tracing may be off)."
        : "This run has no trace (tracing was off, or it was submitted before tracing existed)."));
      $("legend").replaceChildren();
      return;
    }
    renderLegend(data.spans);
    box.replaceChildren(axisRow(data.trace_ms), ...data.spans.map((s) => spanRow(s, data.trace_ms)));
  }

  function showTip(event, span) {
    const tip = $("tip");
    const rows = [
      ["kind", span.kind], ["status", span.status],
      ["starts at", "+" + duration(span.offset_ms)], ["duration", span.end === null ? "running" : duration(span.duration_ms)],
    ];
    if (span.error) rows.push(["error", span.error]);
    for (const [k, v] of Object.entries(span.attrs || {})) {
      rows.push([k, typeof v === "string" ? v : JSON.stringify(v)]);
    }
    tip.replaceChildren(el("div", { class: "tip-title" }, span.name),
      el("table", {}, rows.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, AW.short(String(v), 300))))));
    tip.classList.remove("hidden");
    const x = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    const y = event.clientY + 14 + tip.offsetHeight > window.innerHeight ? event.clientY - tip.offsetHeight - 10 : event.clientY + 14;
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }

  function hideTip() {
    $("tip").classList.add("hidden");
  }

  /* --- events ------------------------------------------------------------------------ */
  function eventText(event) {
    const data = event.data || {};
    if (typeof data.text === "string") return data.text;
    const text = JSON.stringify(data);
    return text === "{}" ? "" : text;
  }

  function renderEvents(data) {
    $("events-note").textContent = data.events_total > data.events_read
      ? "first " + number(data.events_read) + " of " + number(data.events_total)
      : number(data.events_total) + " events";
    const box = $("events");
    if (!data.events.length) {
      box.replaceChildren(el("div", { class: "empty" }, "No events."));
      return;
    }
    box.replaceChildren(...data.events.map((e) => el("div", { class: "ev" },
      el("span", { class: "t" }, AW.clock(e.at)),
      el("span", { class: "type" }, e.type === "message.delta" ? "message.delta ×" + e.count : e.type),
      el("span", { class: "d" + (BAD_EVENTS.includes(e.type) ? " error-text" : "") }, AW.short(eventText(e), 600)))));
  }

  function render(data) {
    current = data;
    receivedAt = performance.now();
    const problems = data.problems || [];
    AW.setBanner(problems.length ? "Part of this run cannot be read: " + problems.join("; ") : null);
    $("missing").hidden = data.run !== null;
    $("record").hidden = data.run === null;
    if (data.run) renderRecord(data.run);
    renderTrace(asOfNow(data));
    renderEvents(data);
  }

  setInterval(() => {
    if (current && current.running && current.spans.length) renderTrace(asOfNow(current));
  }, 1000);

  $("cancel").addEventListener("click", async () => {
    if (!current || !current.run) return;
    $("cancel").disabled = true;
    try {
      const reply = await AW.post("/api/runs/" + encodeURIComponent(runId) + "/cancel");
      if (reply) AW.toast(reply.cancelled ? "Cancel asked: the worker stops the run." : "The run had ended already.");
    } catch (error) {
      AW.toast("Cancel refused: " + error.message, true);
    } finally {
      $("cancel").disabled = false;
    }
  });

  AW.live("/api/stream?run=" + encodeURIComponent(runId), {
    run: render,
    problem: (data) => AW.setBanner(data.message),
  });
})();
