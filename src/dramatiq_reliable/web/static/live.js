// The support page's live refresh: every few seconds, fetch this page again and swap its
// <main> in place, so a page left open during an incident stays current.
//
// Only on pages marked <body data-live="SECONDS">. Nothing is refreshed while the reader
// types in a field, has a box ticked or text selected, or the tab is hidden; "Pause" stops
// it (remembered for this tab). A failed refresh keeps the last good page and says so.
// No inline script, no eval: the page's CSP allows this file only.
(function () {
  "use strict";
  var body = document.body;
  var every = parseInt(body.getAttribute("data-live") || "0", 10) * 1000;
  var stamp = document.getElementById("live-stamp");
  var state = document.getElementById("live-state");
  var button = document.getElementById("live-toggle");
  if (!every || !stamp || !state || !button) return;
  var KEY = "dramatiq-reliable-live-paused";
  var paused = window.sessionStorage.getItem(KEY) === "1";
  var timer = null;
  var inFlight = false;

  function clock() {
    return new Date().toISOString().slice(11, 19) + " UTC";
  }

  function show() {
    button.hidden = false;
    button.textContent = paused ? "Resume" : "Pause";
    button.setAttribute("aria-pressed", paused ? "true" : "false");
    body.classList.toggle("live-paused", paused);
    say(paused ? "paused" : "ok", paused ? "paused: this page does not update" : live());
  }

  function live() {
    return "updates itself every " + every / 1000 + "s";
  }

  function say(kind, text) {
    state.setAttribute("data-kind", kind);
    state.textContent = text;
  }

  function reading() {
    var main = document.querySelector("main");
    var active = document.activeElement;
    if (active && main.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName)) return true;
    if (main.querySelector("input[type=checkbox]:checked")) return true;
    var selection = window.getSelection();
    return Boolean(selection && !selection.isCollapsed && main.contains(selection.anchorNode));
  }

  function openDetails(root) {
    var open = [];
    root.querySelectorAll("details").forEach(function (d, i) { if (d.open) open.push(i); });
    return open;
  }

  function swap(html) {
    var fresh = new DOMParser().parseFromString(html, "text/html");
    var next = fresh.querySelector("main");
    var now = document.querySelector("main");
    if (!next) throw new Error("the answer is not a page");
    var open = openDetails(now);
    var replacement = document.importNode(next, true);
    now.replaceWith(replacement);
    var details = replacement.querySelectorAll("details");
    open.forEach(function (i) { if (details[i]) details[i].open = true; });
    var newStamp = fresh.getElementById("live-stamp");
    if (newStamp) {
      stamp.textContent = newStamp.textContent;
      stamp.setAttribute("datetime", newStamp.getAttribute("datetime"));
    }
    document.title = fresh.title;
  }

  function refresh() {
    timer = null;
    if (paused || inFlight) return;
    if (document.hidden || reading()) { later(); return; }
    inFlight = true;
    window.fetch(window.location.href, { credentials: "same-origin", cache: "no-store", redirect: "follow" })
      .then(function (response) {
        return response.text().then(function (html) {
          if (!response.ok) {
            var page = new DOMParser().parseFromString(html, "text/html");
            var why = page.querySelector("main .flash.error, main h1");
            throw new Error((why ? why.textContent.trim() : "") || "HTTP " + response.status);
          }
          if (paused) return;  // paused while this was under way: keep what the reader sees
          swap(html);
          say("ok", live());
        });
      })
      .catch(function (error) {
        if (paused) return;
        say("stale", "refresh failed at " + clock() + " (" + error.message + "); showing the page of the time above; retrying");
      })
      .then(function () { inFlight = false; later(); });
  }

  function later() {
    if (timer === null && !paused) timer = window.setTimeout(refresh, every);
  }

  button.addEventListener("click", function () {
    paused = !paused;
    window.sessionStorage.setItem(KEY, paused ? "1" : "0");
    if (timer !== null) { window.clearTimeout(timer); timer = null; }
    show();
    if (!paused) refresh();
  });
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && !paused && timer !== null) { window.clearTimeout(timer); timer = null; refresh(); }
  });
  show();
  later();
})();
