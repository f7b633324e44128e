// porthole-web's terminal page. Protocol (ARCHITECTURE.md "web shell"):
// binary frames carry terminal bytes both ways; the browser sends
// {"type":"resize","cols":C,"rows":R} as text; the server's last text
// frame is {"type":"end","reason":"...","code":N}, then it closes with the
// same code and the reason cut to 123 bytes. No reconnect: a new session
// starts only when the user picks an instance.
(function () {
  "use strict";
  const cfg = JSON.parse(document.getElementById("porthole-config").textContent);
  const status = document.getElementById("status");
  const pick = document.getElementById("instance");
  const term = new Terminal({ cursorBlink: true, convertEol: false, scrollback: 5000 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  window.portholeTerm = term; // for tests and the benchmark
  let ws = null;
  let ended = false;

  function show(text, isEnd) {
    status.textContent = text;
    status.className = isEnd ? "ended" : "live";
  }

  function connect() {
    if (ws) { ws.onclose = null; ws.close(1000, "instance changed"); }
    ended = false;
    const q = new URLSearchParams({ page: cfg.page, instance: pick.value,
      cols: String(term.cols), rows: String(term.rows) });
    // Relative to this page, so that a reverse proxy's prefix is kept.
    const url = new URL(cfg.base + "ws/" + cfg.service + "?" + q, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const sock = new WebSocket(url.href);
    sock.binaryType = "arraybuffer";
    ws = sock;
    let endReason = null;
    show("connecting to " + cfg.service + (pick.value ? "-" + pick.value : "") + " …", false);
    sock.onopen = function () { show("connected", false); term.focus(); };
    sock.onmessage = function (ev) {
      if (typeof ev.data === "string") {
        try {
          const m = JSON.parse(ev.data);
          if (m.type === "end") { endReason = m.reason; }
          if (m.type === "instance") { show("connected to " + m.name, false); }
        } catch (e) { /* not ours */ }
        return;
      }
      term.write(new Uint8Array(ev.data));
    };
    sock.onclose = function (ev) {
      if (ws !== sock) { return; }
      ended = true;
      const why = endReason || ev.reason || "the connection was closed";
      show("session ended: " + why, true);
      document.body.dataset.closeCode = String(ev.code);
      term.write("\r\n\x1b[1m[" + why + "]\x1b[0m\r\n");
    };
  }

  const enc = new TextEncoder();
  term.onData(function (d) {
    if (ws && ws.readyState === WebSocket.OPEN) { ws.send(enc.encode(d)); }
  });
  term.onBinary(function (d) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      const b = new Uint8Array(d.length);
      for (let i = 0; i < d.length; i++) { b[i] = d.charCodeAt(i) & 255; }
      ws.send(b);
    }
  });
  term.onResize(function (s) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "resize", cols: s.cols, rows: s.rows }));
    }
  });
  window.addEventListener("resize", function () { fit.fit(); });
  pick.addEventListener("change", function () { term.reset(); connect(); });
  if (!cfg.refusal) { connect(); } else { show(cfg.refusal, true); }
})();
