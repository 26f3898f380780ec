/* Shared by every page of the dashboard: DOM building, formatting, the live feed (server-sent
   events: the server reads Redis, the page never polls), and calls that need the token. */
"use strict";

const AW = (() => {
  const TOKEN_KEY = "agents-worker.token";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name === "style" && typeof value === "object") Object.assign(node.style, value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else if (name === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function badge(status) {
    const text = status || "unknown";
    return el("span", { class: "badge " + text.replace(/[^a-z_]/g, "") }, text);
  }

  function duration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
    if (ms < 1) return ms.toFixed(2) + " ms";
    if (ms < 1000) return Math.round(ms) + " ms";
    const s = ms / 1000;
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m " + Math.round(s % 60) + "s";
    const h = Math.floor(m / 60);
    return h + "h " + (m % 60) + "m";
  }

  function ago(at) {
    if (!at) return "–";
    const s = Math.max(0, Date.now() / 1000 - at);
    if (s < 5) return "just now";
    if (s < 60) return Math.floor(s) + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }

  function clock(at) {
    if (!at) return "–";
    const d = new Date(at * 1000);
    return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }

  function datetime(at) {
    if (!at) return "–";
    const d = new Date(at * 1000);
    const time = d.toLocaleTimeString([], { hour12: false });
    if (d.toDateString() === new Date().toDateString()) return time;
    return d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + time;
  }

  function plural(n, one, many) {
    return number(n) + " " + (Number(n) === 1 ? one : many);
  }

  function number(n) {
    if (n === null || n === undefined) return "–";
    return Number(n).toLocaleString();
  }

  function short(text, width) {
    if (!text) return "";
    return text.length <= width ? text : text.slice(0, width - 1) + "…";
  }

  /* "3 s ago" texts: refreshed from the data the page holds (no request). */
  function refreshAges(root) {
    for (const node of (root || document).querySelectorAll("[data-ago]")) {
      node.textContent = ago(Number(node.dataset.ago));
    }
  }
  setInterval(() => refreshAges(document), 5000);

  let toastTimer = null;
  function toast(message, bad) {
    let node = document.getElementById("aw-toast");
    if (!node) {
      node = el("div", { id: "aw-toast", class: "toast" });
      document.body.append(node);
    }
    node.className = "toast" + (bad ? " bad" : "");
    node.textContent = message;
    node.classList.remove("hidden");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => node.classList.add("hidden"), bad ? 6000 : 3500);
  }

  /* --- the token: asked once, kept for the browser tab (sessionStorage) --------------- */
  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function askToken(reason) {
    return new Promise((resolve) => {
      let dialog = document.getElementById("aw-token");
      if (!dialog) {
        dialog = el("dialog", { id: "aw-token" },
          el("form", { method: "dialog" },
            el("h3", { text: "Token" }),
            el("p", { id: "aw-token-why" }),
            el("input", { type: "password", name: "token", autocomplete: "off", placeholder: "web.token" }),
            el("div", { class: "actions" },
              el("button", { value: "cancel", type: "submit" }, "Cancel"),
              el("button", { value: "ok", type: "submit", class: "primary" }, "Use token"))));
        document.body.append(dialog);
      }
      dialog.querySelector("#aw-token-why").textContent = reason ||
        "Changes (replay, cancel) need the dashboard's token (setting web.token). " +
        "It is kept for this tab only.";
      const input = dialog.querySelector("input");
      input.value = "";
      dialog.onclose = () => {
        if (dialog.returnValue === "ok" && input.value) {
          sessionStorage.setItem(TOKEN_KEY, input.value);
          resolve(input.value);
        } else {
          resolve(null);
        }
      };
      dialog.showModal();
      input.focus();
    });
  }

  /* POST with the token; asks for it when there is none, and once more when refused. */
  async function post(url, body) {
    let value = token() || (await askToken());
    if (!value) return null;
    for (let attempt = 0; attempt < 2; attempt++) {
      const response = await fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: "Bearer " + value },
        body: JSON.stringify(body || {}),
      });
      if (response.status === 401 || response.status === 403) {
        sessionStorage.removeItem(TOKEN_KEY);
        const text = await response.text();
        if (attempt === 1) throw new Error(text || "refused");
        value = await askToken("Refused: " + (text || response.status) + ". Type the token again.");
        if (!value) return null;
        continue;
      }
      const data = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(data.error || response.statusText);
      return data;
    }
    return null;
  }

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }

  /* --- the live feed ----------------------------------------------------------------- */
  function live(url, handlers) {
    const indicator = document.getElementById("live");
    const show = (state, text) => {
      if (!indicator) return;
      indicator.className = "live " + state;
      indicator.textContent = text;
    };
    show("retrying", "connecting");
    const source = new EventSource(url);
    source.onopen = () => show("on", "live");
    source.onerror = () => show(source.readyState === EventSource.CLOSED ? "down" : "retrying",
      source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting");
    for (const [name, handler] of Object.entries(handlers)) {
      source.addEventListener(name, (event) => {
        show("on", "live");
        handler(JSON.parse(event.data));
      });
    }
    return source;
  }

  function setBanner(text) {
    const node = document.getElementById("banner");
    if (!node) return;
    node.textContent = text || "";
    node.classList.toggle("hidden", !text);
  }

  return {
    el, badge, duration, ago, clock, datetime, number, plural, short, refreshAges, toast,
    token, askToken, post, getJSON, live, setBanner,
  };
})();
