/* Dead letters per target, with replay (needs the token), fed by /api/stream?dlq=<target>. */
"use strict";

(() => {
  const { el, number, datetime, short } = AW;
  const $ = (id) => document.getElementById(id);
  let target = new URLSearchParams(location.search).get("target") || "";
  let source = null;
  const selected = new Set();

  function renderTargets(targets) {
    const body = $("targets").tBodies[0];
    $("targets-empty").classList.toggle("hidden", targets.length > 0);
    body.replaceChildren(...targets.map((t) => el("tr", { class: t.target === target ? "active" : null },
      el("td", { class: "mono" }, t.target),
      el("td", { class: "num" }, number(t.size)),
      el("td", { class: "num" }, el("a", { href: "?target=" + encodeURIComponent(t.target), onclick: (e) => { e.preventDefault(); choose(t.target); } },
        t.target === target ? "shown" : "show")))));
  }

  function letterRow(letter) {
    const box = el("input", { type: "checkbox", checked: selected.has(letter.id) });
    box.addEventListener("change", () => {
      if (box.checked) selected.add(letter.id); else selected.delete(letter.id);
      $("replay-selected").disabled = selected.size === 0;
    });
    const task = letter.run_id
      ? el("a", { href: "/runs/" + encodeURIComponent(letter.run_id), class: "mono" }, letter.run_id)
      : el("span", { class: "mono" }, letter.task_id || "–");
    return el("tr", { dataset: { letter: letter.id } },
      el("td", {}, box),
      el("td", { class: "mono", title: letter.id }, letter.id),
      el("td", { class: "muted" }, datetime(letter.failed_at)),
      el("td", {}, el("span", { class: "badge failed", title: letter.detail || letter.reason }, letter.reason)),
      el("td", { class: "error-text", title: letter.error }, short(letter.error || letter.detail, 200)),
      el("td", {}, task),
      el("td", { class: "num" }, number(letter.attempts)));
  }

  function renderLetters(data) {
    if (!data.target) { $("letters-panel").classList.add("hidden"); return; }
    $("letters-panel").classList.remove("hidden");
    $("letters-title").textContent = "Letters of " + data.target;
    $("letters-note").textContent = data.size > data.letters.length
      ? "oldest " + number(data.letters.length) + " of " + number(data.size) : AW.plural(data.size, "letter", "letters");
    const ids = new Set(data.letters.map((l) => l.id));
    for (const id of [...selected]) if (!ids.has(id)) selected.delete(id);
    $("replay-selected").disabled = selected.size === 0;
    $("replay-all").disabled = data.size === 0;
    $("letters-empty").classList.toggle("hidden", data.letters.length > 0);
    $("letters").tBodies[0].replaceChildren(...data.letters.map(letterRow));
  }

  async function replay(ids) {
    const what = ids ? ids.length + " letter(s)" : "every letter of " + target;
    try {
      const reply = await AW.post("/api/dlq/" + encodeURIComponent(target) + "/replay", ids ? { ids } : { all: true });
      if (!reply) return;
      const moved = Object.keys(reply.moved).length;
      const skipped = Object.entries(reply.skipped);
      AW.toast("Replayed " + moved + " of " + what + (skipped.length ? "; skipped: " + skipped.map(([i, w]) => i + " (" + w + ")").join(", ") : ""), skipped.length > 0 && moved === 0);
      selected.clear();
    } catch (error) {
      AW.toast("Replay refused: " + error.message, true);
    }
  }

  function choose(name) {
    target = name;
    selected.clear();
    history.replaceState(null, "", name ? "?target=" + encodeURIComponent(name) : location.pathname);
    connect();
  }

  function connect() {
    if (source) source.close();
    source = AW.live("/api/stream?dlq=" + encodeURIComponent(target), {
      dlq: (data) => { AW.setBanner(null); renderTargets(data.targets); renderLetters(data); },
      problem: (data) => AW.setBanner(data.message),
    });
  }

  $("replay-selected").addEventListener("click", () => replay([...selected]));
  $("replay-all").addEventListener("click", () => replay(null));
  connect();
})();
