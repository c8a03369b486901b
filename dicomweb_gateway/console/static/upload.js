// Upload: files and folders (dropped or chosen) go to the archive one STOW-RS
// request each, a few at a time, each with its progress bar and outcome.
(function () {
  "use strict";
  var PARALLEL = 3;
  var root = document.querySelector('meta[name="dicomweb-root"]').content;
  var queue = [], running = 0, counts = { stored: 0, warning: 0, failed: 0 }, total = 0;

  function csrf() { return window.dicomserverCsrf ? window.dicomserverCsrf() : ""; }

  function tag(obj, t) { var v = obj && obj[t] && obj[t].Value; return v && v.length ? v[0] : undefined; }

  var REASONS = {
    0xA700: "out of resources", 0xA900: "the data set does not match its SOP class",
    0xC000: "cannot understand the object", 0x0110: "processing failure", 0x0122: "SOP class not supported",
    0x0111: "duplicate SOP instance", 0xB000: "coercion of data elements", 0xB006: "elements discarded",
    0xB007: "data set does not match SOP class"
  };
  function reasonText(code) {
    if (code === undefined) { return ""; }
    var hex = "0x" + ("0000" + code.toString(16).toUpperCase()).slice(-4);
    return REASONS[code] ? REASONS[code] + " (" + hex + ")" : hex;
  }

  // What STOW-RS said about the one object sent.
  function outcome(xhr) {
    var body = null;
    try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
    if (xhr.status === 200 || xhr.status === 202 || xhr.status === 409) {
      var failed = tag(body, "00081198"), ok = tag(body, "00081199");
      if (failed) {
        return { kind: "failed", text: "failed: " + (reasonText(tag(failed, "00081197")) || "refused") + (tag(body, "00081196") ? "" : "") };
      }
      if (ok) {
        var warning = tag(ok, "00081196");
        var other = body && body["00081196"];
        if (warning !== undefined || xhr.status === 202) {
          return { kind: "warning", text: "stored with a warning" + (warning !== undefined ? ": " + reasonText(warning) : "") };
        }
        return { kind: "stored", text: "stored" };
      }
    }
    var message = body && body.error ? body.error : (xhr.statusText || "no answer");
    return { kind: "failed", text: "failed: " + message + " (HTTP " + xhr.status + ")" };
  }

  function summary() {
    var done = counts.stored + counts.warning + counts.failed;
    document.getElementById("upload-summary").textContent =
      done + " of " + total + " files done: " + counts.stored + " stored, " + counts.warning + " with a warning, " + counts.failed + " failed.";
  }

  function row(file) {
    var table = document.getElementById("uploads");
    table.hidden = false;
    var tr = document.createElement("tr");
    var name = document.createElement("td"); name.textContent = file.relativePath || file.webkitRelativePath || file.name;
    var prog = document.createElement("td"); var bar = document.createElement("progress"); bar.max = 1; bar.value = 0;
    bar.setAttribute("aria-label", "Upload of " + name.textContent); prog.appendChild(bar);
    var out = document.createElement("td"); out.textContent = "waiting"; out.className = "muted";
    tr.appendChild(name); tr.appendChild(prog); tr.appendChild(out);
    table.tBodies[0].appendChild(tr);
    return { bar: bar, out: out };
  }

  function next() {
    while (running < PARALLEL && queue.length) {
      running++;
      send(queue.shift());
    }
  }

  function finish(item, result) {
    item.ui.out.textContent = result.text;
    item.ui.out.className = result.kind;
    counts[result.kind]++;
    running--;
    summary();
    next();
  }

  function send(item) {
    var xhr = new XMLHttpRequest();
    xhr.open("POST", root + "/studies");
    xhr.setRequestHeader("Content-Type", "application/dicom");
    xhr.setRequestHeader("Accept", "application/dicom+json");
    xhr.setRequestHeader("X-CSRF-Token", csrf());
    xhr.upload.onprogress = function (e) { if (e.lengthComputable) { item.ui.bar.max = e.total; item.ui.bar.value = e.loaded; } };
    xhr.onload = function () { item.ui.bar.max = 1; item.ui.bar.value = 1; finish(item, outcome(xhr)); };
    xhr.onerror = function () { finish(item, { kind: "failed", text: "failed: the connection broke" }); };
    item.ui.out.textContent = "sending"; item.ui.out.className = "muted";
    xhr.send(item.file);
  }

  function add(files) {
    files.forEach(function (file) {
      if (file.name === ".DS_Store" || file.name === "Thumbs.db") { return; }
      total++;
      queue.push({ file: file, ui: row(file) });
    });
    summary();
    next();
  }

  // Folders dropped as entries: every file below them.
  function walk(entry, path) {
    return new Promise(function (resolve) {
      if (entry.isFile) {
        entry.file(function (f) { f.relativePath = path + f.name; resolve([f]); }, function () { resolve([]); });
      } else if (entry.isDirectory) {
        var reader = entry.createReader(), all = [];
        (function more() {
          reader.readEntries(function (entries) {
            if (!entries.length) {
              Promise.all(all).then(function (lists) { resolve([].concat.apply([], lists)); });
              return;
            }
            entries.forEach(function (e) { all.push(walk(e, path + entry.name + "/")); });
            more();
          }, function () { resolve([]); });
        })();
      } else { resolve([]); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var drop = document.getElementById("drop");
    if (!drop) { return; }
    ["files", "folder"].forEach(function (id) {
      var input = document.getElementById(id);
      input.addEventListener("change", function () { add(Array.prototype.slice.call(input.files)); input.value = ""; });
    });
    drop.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); document.getElementById("files").click(); }
    });
    drop.addEventListener("dragover", function (e) { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", function () { drop.classList.remove("over"); });
    drop.addEventListener("drop", function (e) {
      e.preventDefault(); drop.classList.remove("over");
      var items = e.dataTransfer.items;
      if (items && items.length && items[0].webkitGetAsEntry) {
        var entries = Array.prototype.map.call(items, function (i) { return i.webkitGetAsEntry(); }).filter(Boolean);
        Promise.all(entries.map(function (en) { return walk(en, ""); })).then(function (lists) { add([].concat.apply([], lists)); });
      } else {
        add(Array.prototype.slice.call(e.dataTransfer.files));
      }
    });
  });
})();
