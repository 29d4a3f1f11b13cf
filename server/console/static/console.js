/* latentguard review console: the token hover of a trace page and the live alert list.
   Vendored, no dependencies, no build step. */
(function () {
  "use strict";

  function fmt(v) {
    return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(3);
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /* ---- trace page: hover a token for its top features (with catalog labels) ---- */
  function traceHover() {
    var holder = document.getElementById("trace-data");
    var tokens = document.getElementById("tokens");
    var tip = document.getElementById("tooltip");
    if (!holder || !tokens || !tip) return;
    var data = JSON.parse(holder.textContent);

    function show(tok) {
      var p = tok.getAttribute("data-p");
      tip.replaceChildren();
      tip.appendChild(el("div", "tip-head", "token #" + p + " " + JSON.stringify(tok.textContent)));
      if (data.signal && data.values[p] !== undefined) {
        tip.appendChild(el("div", "tip-signal", data.signal + ": " + fmt(data.values[p])));
      }
      var feats = data.features[p] || [];
      if (!feats.length) tip.appendChild(el("div", "tip-none", "no active feature kept"));
      var list = el("table", "tip-features");
      feats.forEach(function (fv) {
        var row = el("tr");
        var index = el("td", "tip-index");
        var link = el("a", "", String(fv[0]));
        link.href = "/features/" + fv[0];
        index.appendChild(link);
        row.appendChild(index);
        row.appendChild(el("td", "tip-value", fmt(fv[1])));
        row.appendChild(el("td", "tip-label", data.labels[String(fv[0])] || ""));
        list.appendChild(row);
      });
      tip.appendChild(list);
      var box = tok.getBoundingClientRect();
      tip.hidden = false;
      tip.style.left = Math.min(window.scrollX + box.left, window.scrollX + window.innerWidth - tip.offsetWidth - 12) + "px";
      tip.style.top = (window.scrollY + box.bottom + 6) + "px";
    }

    var pinned = false;  // a click keeps the tooltip, so its feature links can be followed
    tokens.addEventListener("mouseover", function (ev) {
      var tok = ev.target.closest(".tok");
      if (tok && !pinned) show(tok);
    });
    tokens.addEventListener("mouseleave", function () { if (!pinned) tip.hidden = true; });
    document.addEventListener("click", function (ev) {
      var tok = ev.target.closest(".tok");
      if (tok) { pinned = true; show(tok); return; }
      if (!ev.target.closest("#tooltip")) { pinned = false; tip.hidden = true; }
    });
  }

  /* ---- live alerts: server-sent events ---- */
  function liveAlerts() {
    var table = document.getElementById("alerts");
    if (!table || !window.EventSource) return;
    var body = table.querySelector("tbody");
    var status = document.getElementById("live-status");
    var empty = document.getElementById("no-alerts");
    var source = new EventSource(table.getAttribute("data-source"));
    source.onopen = function () { status.textContent = "live"; status.className = "live-status on"; };
    source.onerror = function () { status.textContent = "reconnecting…"; status.className = "live-status off"; };
    source.addEventListener("alert", function (ev) {
      var a = JSON.parse(ev.data);
      var row = el("tr", "alert sev-" + a.severity);
      row.setAttribute("data-alert-id", a.id);
      [a.at, a.rule].forEach(function (v) { row.appendChild(el("td", "", v)); });
      var sev = el("td");
      sev.appendChild(el("span", "sev sev-" + a.severity, a.severity));
      row.appendChild(sev);
      [a.action, "#" + a.position, a.policy].forEach(function (v) { row.appendChild(el("td", "", v)); });
      row.appendChild(el("td", "explanation", a.explanation));
      var link = el("a", "mono trace-link", a.trace_id.slice(0, 13) + "…");
      link.href = "/traces/" + a.trace_id;
      var cell = el("td");
      cell.appendChild(link);
      row.appendChild(cell);
      body.insertBefore(row, body.firstChild);
      while (body.children.length > 500) body.removeChild(body.lastChild);
      if (empty) empty.hidden = true;
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    traceHover();
    liveAlerts();
  });
})();
