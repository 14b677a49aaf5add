"""The page's inline style and script (no external asset, no CDN).

The script is optional: it only keeps the page live (server-sent events, ``/api/state``
polling where EventSource is missing), redraws the charts from the snapshot's points and
sends the controls' forms with ``fetch``. Every text it places was formatted on the
server (``page.texts``); it never builds HTML from data (``textContent`` only).
"""

STYLE = """
:root{color-scheme:light dark;--fg:#1b1f24;--bg:#f6f8fa;--card:#fff;--muted:#57606a;
--blue:#0b5cd5;--green:#137333;--warn:#b3261e;--line:#d0d7de}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--bg:#0d1117;--card:#161b22;
--muted:#9da7b3;--blue:#58a6ff;--green:#3fb950;--warn:#ff7b72;--line:#30363d}}
*{box-sizing:border-box}
body{margin:0;font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
.skip{position:absolute;left:-999px}.skip:focus{left:8px;top:8px;background:var(--card);padding:4px}
header,footer{padding:.75rem 1rem}
h1{font-size:1.3rem;margin:0}h1 .name{color:var(--muted);font-weight:400}
h2{font-size:1.05rem;margin:.2rem 0 .6rem}
#status{margin:.3rem 0 0;font-weight:600}
main{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:1rem;padding:0 1rem}
main.narrow{display:block;max-width:32rem}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:.8rem 1rem;
min-width:0}
.wide{grid-column:1/-1}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:.25rem .8rem;margin:0}
.facts dt{color:var(--muted)}.facts dd{margin:0;overflow-wrap:anywhere}
meter{width:8rem;vertical-align:middle}
.scroll{overflow-x:auto;margin-bottom:.8rem}
table{border-collapse:collapse;width:100%}
caption{text-align:left;color:var(--muted);padding-bottom:.3rem}
th,td{text-align:left;padding:.25rem .5rem;border-bottom:1px solid var(--line)}
.charts{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:.8rem}
figure{margin:0}figcaption{color:var(--muted);font-size:.85rem}
svg.chart{width:100%;height:auto;background:var(--bg);border-radius:4px}
svg .axis{stroke:var(--line)}svg text{fill:var(--muted);font-size:12px}
polyline{fill:none;stroke-width:2.5;stroke:var(--muted)}
polyline.blue{stroke:var(--blue)}polyline.green{stroke:var(--green);stroke-dasharray:7 3}
.audit{list-style:none;padding:0;margin:0;max-height:28rem;overflow:auto}
.audit li{padding:.3rem 0;border-bottom:1px solid var(--line);overflow-wrap:anywhere}
.audit time,.audit .step,.audit .actor{color:var(--muted)}
details.verb{border:1px solid var(--line);border-radius:6px;padding:.4rem .6rem;margin:.4rem 0}
summary{cursor:pointer;font-weight:600;min-height:2rem;line-height:2rem}
details.rollback summary,details.abort summary{color:var(--warn)}
label{display:block;margin:.4rem 0 .15rem}
input,select,textarea{width:100%;font:inherit;padding:.45rem;border:1px solid var(--line);
border-radius:4px;background:var(--bg);color:var(--fg)}
button{font:inherit;font-weight:600;margin-top:.6rem;min-height:44px;padding:.4rem 1.2rem;
border-radius:6px;border:1px solid var(--line);background:var(--card);color:var(--fg);
cursor:pointer}
details.rollback button,details.abort button{background:var(--warn);color:#fff;border:0}
button:disabled{opacity:.5}
:focus-visible{outline:3px solid var(--blue);outline-offset:2px}
#verb-result:empty{display:none}
#verb-result{padding:.4rem;border-left:4px solid var(--blue);background:var(--bg)}
@media (max-width:600px){main,.charts{grid-template-columns:1fr}main{padding:0 .5rem}
.facts{grid-template-columns:1fr}.facts dt{margin-top:.3rem}
th,td{padding:.2rem .3rem;font-size:.9rem}}
"""

SCRIPT = """
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var deadline = null, auditKey = "";
  function setText(id, v) { var e = $(id); if (e && e.textContent !== v) e.textContent = v; }
  function draw(svg, pts) {
    var keys = svg.getAttribute("data-keys").split(" "), w = 600, h = 150, pad = 28;
    var scale = Number(svg.getAttribute("data-scale")) || 1, top = 0, seen = false;
    pts.forEach(function (p) { keys.forEach(function (k) {
      if (p[k] !== null && p[k] !== undefined) { seen = true; top = Math.max(top, p[k] * scale); }
    }); });
    top = svg.getAttribute("data-top") ? Number(svg.getAttribute("data-top")) : (top || 1);
    var t0 = pts.length ? pts[0].t : 0;
    var span = Math.max(pts.length ? pts[pts.length - 1].t - t0 : 1, 1);
    var lines = svg.querySelectorAll("polyline");
    keys.forEach(function (k, i) {
      var out = [];
      pts.forEach(function (p) {
        if (p[k] === null || p[k] === undefined) return;
        out.push((pad + (w - 2 * pad) * (p.t - t0) / span).toFixed(1) + "," +
                 (h - pad - (h - 2 * pad) * p[k] * scale / top).toFixed(1));
      });
      if (lines[i]) lines[i].setAttribute("points", out.join(" "));
    });
    var y = svg.querySelector(".ymax");
    if (y) y.textContent = seen ? Number(top.toPrecision(3)) + " " +
      svg.getAttribute("data-unit") : "no data yet";
  }
  function rows(id, data) {
    var body = $(id).tBodies[0];
    body.textContent = "";
    data.forEach(function (r) {
      var tr = body.insertRow();
      r.forEach(function (c) { tr.insertCell().textContent = c; });
    });
  }
  function audit(list) {
    var key = list.length + (list.length ? list[0].ts + list[0].message : "");
    if (key === auditKey) return;
    auditKey = key;
    var ol = $("audit");
    ol.textContent = "";
    list.forEach(function (r) {
      var li = document.createElement("li"), tm = document.createElement("time");
      var kind = document.createElement("strong"), step = document.createElement("span");
      var who = document.createElement("span");
      tm.dateTime = r.ts; tm.textContent = r.ts.slice(11, 19);
      kind.textContent = r.kind; step.className = "step"; step.textContent = r.step;
      who.className = "actor"; who.textContent = "\\u2014 " + r.actor;
      li.append(tm, " ", kind, " ", step, " " + r.message + " ", who);
      ol.appendChild(li);
    });
  }
  function render(s) {
    var t = s.text;
    document.title = t.title;
    ["status_line:status", "status:f-status", "phase:f-phase", "weight:f-weight",
     "router_weight:f-router-weight", "sor:f-sor", "lag:f-lag", "controller:f-controller",
     "rollback:f-rollback", "approvals:f-approvals", "next:f-next", "updated:f-updated",
     "figures_window:sides-c"
    ].forEach(function (pair) { var kv = pair.split(":"); setText(kv[1], t[kv[0]]); });
    var m = $("m-weight");
    m.value = t.weight_value; m.textContent = t.weight + " %";
    var left = s.next ? s.next.seconds_left : null;
    deadline = (left === null || left === undefined) ? null : Date.now() / 1000 + left;
    if (deadline === null) setText("f-countdown", t.countdown);
    countdown();
    document.querySelectorAll("svg.chart").forEach(function (svg) { draw(svg, s.points || []); });
    rows("sides", t.sides);
    rows("steps", t.steps);
    audit(s.audit || []);
    document.body.setAttribute("data-seq", String(s.seq));
  }
  function countdown() {
    if (deadline === null) return;
    setText("f-countdown", Math.max(0, deadline - Date.now() / 1000).toFixed(0) + " s");
  }
  function poll() {
    fetch("/api/state", {credentials: "same-origin"})
      .then(function (r) { return r.json(); }).then(render)
      .catch(function () { setText("live", "unreachable, retrying"); })
      .finally(function () { setTimeout(poll, 2000); });
  }
  function connect() {
    if (!window.EventSource) { setText("live", "polling"); poll(); return; }
    var es = new EventSource("/events");
    es.onopen = function () { setText("live", "live"); };
    es.onmessage = function (m) { render(JSON.parse(m.data)); };
    es.onerror = function () { setText("live", "reconnecting"); };
  }
  document.querySelectorAll("form[data-verb]").forEach(function (f) {
    f.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var verb = f.getAttribute("data-verb"), btn = f.querySelector("button");
      var out = $("verb-result");
      btn.disabled = true;
      out.textContent = verb + ": sent, waiting for the engine";
      fetch("/api/verb", {method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", "Accept": "application/json"},
        body: JSON.stringify({verb: verb, reason: f.elements.reason.value,
                              confirm: f.elements.confirm ? f.elements.confirm.value : "",
                              role: f.elements.role ? f.elements.role.value : ""})})
        .then(function (r) { return r.json().then(function (j) { return [r.status, j]; }); })
        .then(function (a) {
          out.textContent = verb + ": " + (a[1].outcome || a[1].error || "HTTP " + a[0]);
          if (a[0] < 300) { f.reset(); f.parentNode.open = false; }
        })
        .catch(function (e) { out.textContent = verb + ": not sent (" + e + ")"; })
        .finally(function () { btn.disabled = false; });
    });
  });
  setInterval(countdown, 1000);
  connect();
})();
"""
