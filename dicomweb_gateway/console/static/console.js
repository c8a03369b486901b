// Small comforts: thumbnails that cannot be rendered say so, revoking asks
// first, and a study's send shows its progress as it goes.
(function () {
  "use strict";
  function csrf() { var m = document.querySelector('meta[name="csrf-token"]'); return m ? m.content : ""; }
  window.dicomserverCsrf = csrf;

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("img[data-fallback]").forEach(function (img) {
      function fallback() {
        var box = document.createElement("div");
        box.className = "no-image";
        box.setAttribute("role", "img");
        box.setAttribute("aria-label", img.alt + ": " + img.dataset.fallback);
        box.textContent = img.dataset.fallback;
        img.replaceWith(box);
      }
      if (img.complete && img.naturalWidth === 0) { fallback(); } else { img.addEventListener("error", fallback); }
    });

    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (e) { if (!window.confirm(form.dataset.confirm)) { e.preventDefault(); } });
    });

    var send = document.getElementById("send-form");
    if (send && window.fetch && window.TextDecoder) {
      send.addEventListener("submit", function (e) {
        e.preventDefault();
        var block = document.getElementById("send-progress");
        var bar = block.querySelector("progress");
        var outcome = block.querySelector(".outcome");
        var button = send.querySelector("button");
        block.hidden = false; button.disabled = true;
        outcome.className = "outcome"; outcome.textContent = "Connecting to " + send.peer.value + "…";
        var last = null;
        function show(p) {
          last = p;
          if (p.total) { bar.max = p.total; bar.value = (p.completed || 0) + (p.failed || 0) + (p.warning || 0); }
          var text = (p.completed || 0) + " of " + (p.total || 0) + " sent";
          if (p.warning) { text += ", " + p.warning + " with a warning"; }
          if (p.failed) { text += ", " + p.failed + " failed"; }
          if (p.error) { text += " — " + p.error; }
          outcome.textContent = (p.done ? "Done: " : "") + text + (p.done ? "." : "…");
          if (p.done) { outcome.className = "outcome " + (p.failed || p.error ? "failed" : "stored"); }
        }
        fetch(send.action, {
          method: "POST", body: new URLSearchParams(new FormData(send)), credentials: "same-origin",
          headers: { "Accept": "application/x-ndjson", "X-CSRF-Token": csrf() }
        }).then(function (resp) {
          if (!resp.ok || !(resp.headers.get("content-type") || "").startsWith("application/x-ndjson")) {
            return resp.text().then(function (t) {
              var doc = new DOMParser().parseFromString(t, "text/html");
              var msg = doc.querySelector(".alert");
              throw new Error(msg ? msg.textContent.trim() : "HTTP " + resp.status);
            });
          }
          var reader = resp.body.getReader(), decoder = new TextDecoder(), buffer = "";
          function pump() {
            return reader.read().then(function (r) {
              buffer += decoder.decode(r.value || new Uint8Array(), { stream: !r.done });
              var lines = buffer.split("\n"); buffer = lines.pop();
              lines.forEach(function (l) { if (l.trim()) { show(JSON.parse(l)); } });
              if (!r.done) { return pump(); }
              if (!last || !last.done) { show(Object.assign({}, last || {}, { done: true, error: (last && last.error) || "the send ended early" })); }
            });
          }
          return pump();
        }).catch(function (err) {
          outcome.className = "outcome failed"; outcome.textContent = "Not sent: " + err.message;
        }).then(function () { button.disabled = false; });
      });
    }
  });
})();
