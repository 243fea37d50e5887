"use strict";
// The review page: one capture at a time, the model's box in blue, the reviewer's box in
// green. Boxes are kept normalised to the image ([0, 1] on both axes), so the size the
// image is shown at never matters; the canvas only converts for drawing and the mouse.
(() => {
  const $ = (id) => document.getElementById(id);
  const token = new URLSearchParams(location.search).get("token");
  const HANDLE = 8; // px around a corner that grab it
  const MIN_SIZE = 5; // px; a smaller drag is a click, not a box
  // The queue is fetched whole; past this many captures, narrow it with the filters.
  const QUEUE_LIMIT = 500;
  const MODEL = "#1f77b4";
  const HUMAN = "#2ca02c";

  const state = { items: [], index: 0, draft: null, drag: null, ready: false, lastSaved: null };
  window.review = state; // read by the browser test

  const photo = $("photo");
  const canvas = $("overlay");
  const ctx = canvas.getContext("2d");

  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers || {});
    if (token) headers.Authorization = "Bearer " + token;
    const res = await fetch("/api" + path, Object.assign({}, options, { headers }));
    const text = await res.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
    if (!res.ok) throw new Error(body && body.error ? body.error : "HTTP " + res.status);
    return body;
  }

  function status(text, kind) {
    const el = $("status");
    el.textContent = text;
    el.className = kind || "";
  }

  function current() { return state.items[state.index]; }

  async function loadMeta() {
    const meta = await api("/meta");
    fill($("f-device"), meta.devices);
    fill($("f-model"), meta.model_versions);
    const scale = $("scale");
    scale.replaceChildren(...meta.scale.map((line) => {
      const li = document.createElement("li");
      li.textContent = line.replace(/^\d+\s*:\s*/, "");
      li.dataset.rating = line.match(/^\d+/) ? line.match(/^\d+/)[0] : "";
      return li;
    }));
  }

  function fill(select, values) {
    for (const v of values) {
      const o = document.createElement("option");
      o.value = v;
      o.textContent = v;
      select.append(o);
    }
  }

  async function loadQueue() {
    const q = new URLSearchParams();
    const add = (key, id) => { if ($(id).value !== "") q.set(key, $(id).value); };
    add("device", "f-device");
    add("model_version", "f-model");
    add("reviewed", "f-reviewed");
    add("rating", "f-rating");
    q.set("limit", String(QUEUE_LIMIT));
    try {
      state.items = await api("/queue?" + q.toString());
      state.index = 0;
      show();
    } catch (e) {
      status("Could not load the queue: " + e.message, "error");
    }
  }

  function show() {
    const item = current();
    $("empty").hidden = !!item;
    $("frame").hidden = !item;
    $("position").textContent = item ? `${state.index + 1} / ${state.items.length}` : "0 / 0";
    if (!item) { $("info").replaceChildren(); return; }
    const c = item.capture;
    const f = item.feedback;
    // `fromModel`: the box is still the model's own, untouched by the reviewer.
    state.draft = f
      ? {
        face: f.face ? f.face.slice() : null, noFace: f.face === null,
        rating: f.rating, comment: f.comment, fromModel: false,
      }
      : {
        face: c.model_face && c.model_box ? c.model_box.slice() : null,
        noFace: false, rating: null, comment: "", fromModel: true,
      };
    info(c, f);
    $("comment").value = state.draft.comment;
    const src = "/api/captures/" + c.id + "/image" +
      (token ? "?token=" + encodeURIComponent(token) : "");
    if (photo.complete && photo.src.endsWith(src)) {
      sizeCanvas(); // the same image again fires no load event
    } else {
      state.ready = false;
      photo.src = src;
    }
    controls();
  }

  function info(c, f) {
    const rows = [
      ["capture", "#" + c.id],
      ["device", c.device + (c.seq === null ? "" : " seq " + c.seq)],
      ["model", c.model_version],
      ["score", c.model_score.toFixed(3) + (c.model_face ? " (face)" : " (no face)")],
      ["reason", c.reason || "imported"],
      // Imported records carry no capture time; the store keeps their review time there.
      ["captured", c.reason
        ? new Date(c.time_ms).toISOString().replace("T", " ").slice(0, 19)
        : "not recorded (imported)"],
      ["size", c.width + " x " + c.height],
      ["reviewed", f ? `rating ${f.rating}, ${f.time.slice(0, 16)}` : "not yet"],
    ];
    $("info").replaceChildren(...rows.flatMap(([k, v]) => {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      return [dt, dd];
    }));
  }

  function controls() {
    const d = state.draft;
    $("no-face").setAttribute("aria-pressed", d.noFace ? "true" : "false");
    for (const b of $("ratings").children) b.classList.toggle("on", Number(b.value) === d.rating);
    for (const li of $("scale").children) li.classList.toggle("on", Number(li.dataset.rating) === d.rating);
    draw();
  }

  // Scales the image to the free space, up or down, keeping its aspect ratio.
  function fit() {
    const stage = $("stage");
    const nw = photo.naturalWidth;
    const nh = photo.naturalHeight;
    if (!nw || !nh) return;
    const s = Math.min((stage.clientWidth - 24) / nw, (stage.clientHeight - 24) / nh);
    photo.style.width = Math.max(1, Math.floor(nw * s)) + "px";
    photo.style.height = Math.max(1, Math.floor(nh * s)) + "px";
  }

  function sizeCanvas() {
    fit();
    canvas.width = photo.clientWidth;
    canvas.height = photo.clientHeight;
    canvas.style.width = photo.clientWidth + "px";
    canvas.style.height = photo.clientHeight + "px";
    draw();
  }

  function toPx(b) {
    return [b[0] * canvas.width, b[1] * canvas.height, b[2] * canvas.width, b[3] * canvas.height];
  }

  function draw() {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const item = current();
    if (!item || !state.draft) return;
    const c = item.capture;
    if (c.model_box) {
      const [x1, y1, x2, y2] = toPx(c.model_box);
      ctx.setLineDash([8, 5]);
      ctx.lineWidth = 2;
      ctx.strokeStyle = MODEL;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      ctx.setLineDash([]);
      label("model " + c.model_score.toFixed(2), x1, y1, MODEL);
    } else {
      label("model: no face (" + c.model_score.toFixed(2) + ")", 6, 6, MODEL);
    }
    const d = state.draft;
    if (d.noFace) {
      ctx.fillStyle = "rgba(198, 40, 40, 0.25)";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      label("NO FACE", canvas.width / 2 - 35, canvas.height / 2, "#c62828");
    } else if (d.face) {
      const [x1, y1, x2, y2] = toPx(d.face);
      ctx.lineWidth = 3;
      ctx.strokeStyle = HUMAN;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      ctx.fillStyle = HUMAN;
      for (const [x, y] of corners(d.face)) ctx.fillRect(x - 5, y - 5, 10, 10);
    }
  }

  function label(text, x, y, colour) {
    ctx.font = "bold 14px sans-serif";
    const w = ctx.measureText(text).width + 8;
    const top = y >= 20 ? y - 20 : y;
    ctx.fillStyle = colour;
    ctx.fillRect(x, top, w, 20);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x + 4, top + 15);
  }

  // Top-left, top-right, bottom-right, bottom-left, in canvas pixels.
  function corners(b) {
    const [x1, y1, x2, y2] = toPx(b);
    return [[x1, y1], [x2, y1], [x2, y2], [x1, y2]];
  }

  function pointer(e) {
    const r = canvas.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top];
  }

  const clamp = (v) => Math.min(1, Math.max(0, v));

  function onDown(e) {
    if (e.button !== 0 || !state.draft) return;
    e.preventDefault();
    const [px, py] = pointer(e);
    const d = state.draft;
    const before = d.face ? d.face.slice() : null;
    if (d.face && !d.noFace) {
      const hit = corners(d.face).findIndex(([x, y]) =>
        Math.abs(x - px) <= HANDLE && Math.abs(y - py) <= HANDLE);
      if (hit >= 0) { state.drag = { mode: "corner", corner: hit, before }; return; }
      const [x1, y1, x2, y2] = toPx(d.face);
      if (px > x1 && px < x2 && py > y1 && py < y2) {
        state.drag = { mode: "move", start: [px, py], before };
        return;
      }
    }
    state.drag = { mode: "new", start: [px, py], before, beforeNoFace: d.noFace };
  }

  function onMove(e) {
    const drag = state.drag;
    if (!drag) return;
    const [px, py] = pointer(e);
    const nx = clamp(px / canvas.width);
    const ny = clamp(py / canvas.height);
    const d = state.draft;
    d.fromModel = false;
    if (drag.mode === "new") {
      const sx = clamp(drag.start[0] / canvas.width);
      const sy = clamp(drag.start[1] / canvas.height);
      d.face = [Math.min(sx, nx), Math.min(sy, ny), Math.max(sx, nx), Math.max(sy, ny)];
      d.noFace = false;
    } else if (drag.mode === "corner") {
      const b = d.face;
      const xi = drag.corner === 0 || drag.corner === 3 ? 0 : 2;
      const yi = drag.corner <= 1 ? 1 : 3;
      b[xi] = nx;
      b[yi] = ny;
    } else {
      const b = drag.before;
      let dx = (px - drag.start[0]) / canvas.width;
      let dy = (py - drag.start[1]) / canvas.height;
      dx = Math.min(1 - b[2], Math.max(-b[0], dx));
      dy = Math.min(1 - b[3], Math.max(-b[1], dy));
      d.face = [b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy];
    }
    controls();
  }

  function onUp() {
    const drag = state.drag;
    if (!drag) return;
    state.drag = null;
    const d = state.draft;
    if (d.face) {
      const [a, b, c, e] = d.face;
      d.face = [Math.min(a, c), Math.min(b, e), Math.max(a, c), Math.max(b, e)];
      const tooSmall = (d.face[2] - d.face[0]) * canvas.width < MIN_SIZE ||
        (d.face[3] - d.face[1]) * canvas.height < MIN_SIZE;
      if (tooSmall) {
        d.face = drag.before;
        if (drag.mode === "new") d.noFace = drag.beforeNoFace;
      }
    }
    controls();
  }

  function setRating(r) {
    if (!state.draft) return;
    state.draft.rating = r;
    controls();
  }

  function toggleNoFace() {
    if (!state.draft) return;
    state.draft.noFace = !state.draft.noFace;
    controls();
  }

  function move(step) {
    const i = state.index + step;
    if (i < 0 || i >= state.items.length) {
      status(i < 0 ? "This is the first capture." : "End of the queue.", "");
      return;
    }
    state.index = i;
    status("", "");
    show();
  }

  async function save() {
    const item = current();
    const d = state.draft;
    if (!item || !d) return;
    if (d.rating === null) { status("Choose a rating (0-5) first.", "error"); return; }
    if (!d.noFace && !d.face) { status("Draw the face box, or press N for no face.", "error"); return; }
    // A low rating says the model's box is wrong; saving it as the correction would teach
    // the model its own mistake.
    if (!d.noFace && d.fromModel && d.rating <= 2) {
      status(`A rating of ${d.rating} says the model's box is wrong: draw the right box, ` +
        "or press N for no face.", "error");
      return;
    }
    const body = {
      face: d.noFace ? null : d.face,
      no_face: d.noFace,
      rating: d.rating,
      comment: $("comment").value,
      reviewer: $("reviewer").value,
    };
    try {
      const res = await api(`/captures/${item.capture.id}/feedback`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      item.feedback = {
        id: res.feedback_id, face: body.face, rating: body.rating, comment: body.comment,
        reviewer: body.reviewer, time: new Date().toISOString(),
      };
      state.lastSaved = { capture: item.capture.id, feedback: res.feedback_id };
      const last = state.index + 1 >= state.items.length;
      if (!last) move(1);
      status(`Saved capture #${item.capture.id}` + (last ? "; end of the queue." : "."), "ok");
    } catch (e) {
      status("Not saved: " + e.message, "error");
    }
  }

  function onKey(e) {
    const typing = e.target.matches("input, select, textarea");
    if (e.key === "Enter") {
      if (e.target.matches("select")) return;
      e.preventDefault();
      save();
      return;
    }
    if (typing) {
      if (e.key === "Escape") e.target.blur();
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (/^[0-5]$/.test(e.key)) setRating(Number(e.key));
    else if (e.key === "n" || e.key === "N") toggleNoFace();
    else if (e.key === "ArrowRight" || e.key === "ArrowDown") move(1);
    else if (e.key === "ArrowLeft" || e.key === "ArrowUp") move(-1);
    else if (e.key === "Escape" && state.draft) { state.draft.face = null; controls(); }
    else return;
    e.preventDefault();
  }

  function init() {
    for (let r = 0; r <= 5; r++) {
      const b = document.createElement("button");
      b.type = "button";
      b.value = String(r);
      b.textContent = String(r);
      b.addEventListener("click", () => setRating(r));
      $("ratings").append(b);
    }
    $("reviewer").value = localStorage.getItem("reviewer") || "";
    $("reviewer").addEventListener("change", () =>
      localStorage.setItem("reviewer", $("reviewer").value));
    $("comment").addEventListener("input", () => { if (state.draft) state.draft.comment = $("comment").value; });
    $("no-face").addEventListener("click", toggleNoFace);
    $("save").addEventListener("click", save);
    $("prev").addEventListener("click", () => move(-1));
    $("next").addEventListener("click", () => move(1));
    for (const id of ["f-device", "f-model", "f-reviewed", "f-rating"]) {
      $(id).addEventListener("change", loadQueue);
    }
    canvas.addEventListener("mousedown", onDown);
    window.addEventListener("mousemove", onMove);
    window.addEventListener("mouseup", onUp);
    document.addEventListener("keydown", onKey);
    window.addEventListener("resize", sizeCanvas);
    photo.addEventListener("load", () => { sizeCanvas(); state.ready = true; });
    photo.addEventListener("error", () => status("Could not load the image.", "error"));
    loadMeta().then(loadQueue).catch((e) => status("Could not load: " + e.message, "error"));
  }

  init();
})();
