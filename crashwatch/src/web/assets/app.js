// crashwatch's crash page: live updates. The agent sends an event each time it stored
// reports (/api/events); the page then fetches its own list again as HTML the server
// rendered (fragment=1) and puts it in place, marking the clusters whose count changed.
// Without JavaScript the page is the same, only not live.
(function () {
  "use strict";
  var region = document.querySelector("[data-live]");
  var badge = document.getElementById("live");
  if (!region || !window.EventSource || !window.fetch) return;
  var url = region.getAttribute("data-live");
  // The store's batch count the page was rendered at: events up to it are in the page.
  var shown = Number(region.getAttribute("data-generation") || 0);
  var timer = null;

  function counts() {
    var seen = {};
    region.querySelectorAll("[data-id]").forEach(function (el) {
      seen[el.getAttribute("data-id")] = el.getAttribute("data-count");
    });
    return seen;
  }

  function refresh() {
    timer = null;
    var before = counts();
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        region.innerHTML = html;
        region.querySelectorAll("[data-id]").forEach(function (el) {
          if (before[el.getAttribute("data-id")] !== el.getAttribute("data-count")) {
            el.classList.add("changed");
          }
        });
        document.body.setAttribute("data-updated", String(Date.now()));
      })
      .catch(function () { if (badge) badge.classList.add("off"); });
  }

  var events = null;
  function follow() {
    events = new EventSource("/api/events");
    events.addEventListener("open", function () {
      if (badge) { badge.hidden = false; badge.classList.remove("off"); }
    });
    events.addEventListener("error", function () {
      if (badge) badge.classList.add("off");
    });
    events.addEventListener("stored", function (e) {
      var generation = Number(e.data);
      if (generation <= shown) return;
      shown = generation;
      // Reports come in bursts: one fetch for a burst.
      if (timer === null) timer = setTimeout(refresh, 250);
    });
  }
  // A page left for another stays open in the back-forward cache with its stream: a
  // browser keeps six connections per host on HTTP/1.1, and a few pages' streams would
  // take them all. Close on leaving, follow again on coming back.
  window.addEventListener("pagehide", function () {
    if (events) { events.close(); events = null; }
  });
  window.addEventListener("pageshow", function (e) {
    if (e.persisted && !events) { follow(); refresh(); }
  });
  follow();
})();
