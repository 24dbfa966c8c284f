// gpstoken studio: the page. Talks to the JSON API of gpstoken/studio/server.py.
// Coordinates are working-image pixels (x = column, y = row), as in the API.
"use strict";

const $ = (id) => document.getElementById(id);
const S = {
  info: null,        // GET /api/info
  state: null,       // the session state of the last finished job
  boxes: [],         // priority boxes on the page (committed ones come from state.after.priority)
  edits: newEdits(), // pending Gaussian edits on state.after's layout
  drag: null,        // current mouse gesture
  hover: -1,
  scale: 1,          // canvas pixels per image pixel
  image: new Image(),
  busy: false,
};

function newEdits() { return { remove: new Set(), move: new Map(), add: [] }; }
function tool() { return document.querySelector("input[name=tool]:checked").value; }
function generated() { return S.state && S.state.kind === "generated"; }
function fmt(v) { return v === null || v === undefined ? "-" : v.toFixed(2); }

// ------------------------------------------------------------------ status and errors
function setBusy(busy, text) {
  S.busy = busy;
  document.body.dataset.state = busy ? "busy" : "idle";
  $("status-text").textContent = text || (busy ? "working…" : "ready");
  for (const id of ["encode", "generate", "file", "tokens"]) $(id).disabled = busy;
  updatePending();
}
function showError(msg) {
  const e = $("error");
  e.textContent = msg || "";
  e.hidden = !msg;
}

async function api(path, options) {
  let r;
  try { r = await fetch(path, options); } catch (err) { throw new Error("the studio server is not reachable (" + err.message + ")"); }
  let body = null;
  try { body = await r.json(); } catch (err) { body = null; }
  if (!r.ok) throw new Error((body && body.error) || ("HTTP " + r.status));
  return body;
}
function postJSON(path, obj) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(obj) });
}

// Start a job and poll it, showing its stage, until it ends.
async function runJob(path, request, label) {
  showError("");
  setBusy(true, label);
  try {
    const { job } = await postJSON(path, request);
    for (;;) {
      await new Promise((ok) => setTimeout(ok, 250));
      const st = await api("/api/jobs/" + job);
      if (st.state === "done") { applyState(st.result); setBusy(false, `${st.what} done in ${st.elapsed.toFixed(1)} s`); return; }
      if (st.state === "error") throw new Error(st.error);
      $("status-text").textContent = `${label}: ${st.stage} (${st.elapsed.toFixed(0)} s)`;
    }
  } catch (err) {
    setBusy(false, "ready");
    showError(err.message);
  }
}

// ------------------------------------------------------------------ loading
async function init() {
  try {
    S.info = await api("/api/info");
  } catch (err) { setBusy(false); showError(err.message); return; }
  const info = S.info;
  $("model").textContent = "model: " + info.model + (info.generator ? " · generator: " + info.generator.name : "");
  const sl = $("tokens");
  sl.min = info.min_tokens; sl.max = info.max_tokens; sl.value = info.default_tokens;
  $("tokens-value").textContent = sl.value;
  for (const name of info.examples) {
    const b = document.createElement("button");
    b.title = name; b.dataset.example = name;
    b.innerHTML = `<img src="/api/examples/${encodeURIComponent(name)}" alt="${name}">`;
    b.onclick = () => openImage(postJSON("/api/image", { example: name }));
    $("examples").appendChild(b);
  }
  if (info.generator) {
    $("gen-section").hidden = false;
    info.generator.classes.forEach((c, i) => {
      const o = document.createElement("option"); o.value = i; o.textContent = `${i}: ${c}`; $("class").appendChild(o);
    });
    $("steps").max = info.generator.max_steps;
  }
  setBusy(false, "load an image (upload or an example)" + (info.generator ? ", or generate one" : ""));
}

async function openImage(promise) {
  showError("");
  setBusy(true, "reading the image");
  try {
    const opened = await promise;
    $("note").textContent = opened.note || `${opened.name}: ${opened.width}x${opened.height}`;
    S.boxes = []; S.edits = newEdits();
    if (opened.state) { applyState(opened.state); setBusy(false, `opened ${opened.name}`); return; }  // a .gpst file
    await runJob("/api/encode", { session: opened.session, n_tokens: +$("tokens").value }, "encoding");
  } catch (err) { setBusy(false, "ready"); showError(err.message); }
}

function uploadFile(file) {
  if (!file) return;
  if (file.size > S.info.max_upload_bytes) {
    showError(`file too large: ${(file.size / 2 ** 20).toFixed(1)} MiB, the limit is ${(S.info.max_upload_bytes / 2 ** 20).toFixed(0)} MiB`);
    return;
  }
  const name = file.name.replace(/[^\w.\-]/g, "_").slice(0, 100) || "upload";
  openImage(api("/api/image", { method: "POST", headers: { "Content-Type": "application/octet-stream", "X-Filename": name }, body: file }));
}

// ------------------------------------------------------------------ results
function applyState(st) {
  S.state = st;
  S.edits = newEdits();
  S.boxes = st.after.priority.map((b) => b.slice());
  const base = `/api/sessions/${st.session}/`;
  const v = `?v=${st.after.version}`;
  if (st.kind === "photo") { $("tokens").value = st.after.n_tokens; $("tokens-value").textContent = st.after.n_tokens; }
  $("after").src = base + "after.png" + v;
  $("before").src = st.before ? base + "before.png" + v : "";
  $("after-caption").textContent = st.kind === "photo" ? "Reconstruction (after)" : "Generated (after)";
  const sameImage = S.image.dataset && S.image.dataset.session === st.session && st.kind === "photo" && S.image.complete;
  if (sameImage) { draw(); } else {  // a photo keeps its image across versions; a generated one changes
    S.image = new Image();
    S.image.dataset.session = st.session;
    S.image.onload = () => { resizeCanvas(); draw(); };
    S.image.src = base + "image.png" + v;
  }
  const a = st.after, b = st.before;
  $("tokens-after").textContent = a.total_tokens; $("tokens-before").textContent = b ? b.total_tokens : "-";
  for (const [key, id] of [["psnr", "psnr"], ["psnr_boxes", "psnr-box"]]) {
    const ea = $(id + "-after"), eb = $(id + "-before");
    ea.textContent = fmt(a[key]); eb.textContent = b ? fmt(b[key]) : "-";
    ea.dataset.value = a[key] ?? ""; eb.dataset.value = b ? (b[key] ?? "") : "";
    ea.classList.toggle("better", !!(b && a[key] !== null && b[key] !== null && a[key] > b[key]));
  }
  const links = [["after.png", "after PNG"], ["after.gpst", "after .gpst"], ["layout.png", "layout PNG"]];
  if (b) links.push(["before.png", "before PNG"], ["before.gpst", "before .gpst"]);
  $("downloads").innerHTML = links.map(([f, t]) => `<a href="${base}${f}?download=1" download="gpstoken-${f}">${t}</a>`).join(" ");
  document.body.dataset.version = a.version;
  document.body.dataset.session = st.session;
  $("token-section").classList.toggle("disabled", generated());
  updatePending();
}

function resizeCanvas() {
  const c = $("editor"), w = S.state.width, h = S.state.height;
  S.scale = Math.max(1, Math.floor(512 / Math.max(w, h)));
  c.width = w * S.scale; c.height = h * S.scale;
}

// ------------------------------------------------------------------ pending changes
function boxesChanged() {
  return !!S.state && JSON.stringify(S.boxes) !== JSON.stringify(S.state.after.priority);
}
function tokensChanged() { return !!S.state && !generated() && +$("tokens").value !== S.state.after.n_tokens; }
function editCount() { return S.edits.remove.size + S.edits.move.size + S.edits.add.length; }

function updatePending() {
  const parts = [];
  if (tokensChanged()) parts.push(`token count ${$("tokens").value}`);
  if (boxesChanged()) parts.push(`${S.boxes.length} priority box(es)`);
  if (S.edits.add.length) parts.push(`+${S.edits.add.length} added`);
  if (S.edits.move.size) parts.push(`${S.edits.move.size} moved`);
  if (S.edits.remove.size) parts.push(`-${S.edits.remove.size} removed`);
  let text = parts.length ? "pending: " + parts.join(", ") : "no pending changes";
  if (generated() && editCount()) {
    const n = S.state.after.total_tokens - S.edits.remove.size + S.edits.add.length;
    text += ` · ${n} tokens (the generator needs ${S.info.generator.n_tokens})`;
  }
  $("pending").textContent = text;
  const photoPending = !generated() && parts.length > 0;
  $("encode").classList.toggle("attention", photoPending);
  $("encode").disabled = S.busy || !S.state || generated();
  $("regenerate").disabled = S.busy || !generated() || editCount() === 0;
  $("regenerate").classList.toggle("attention", generated() && editCount() > 0);
  for (const r of document.querySelectorAll("input[name=tool][value=box]")) r.disabled = generated();
  if (generated() && tool() === "box") document.querySelector("input[name=tool][value=move]").checked = true;
}

function editsRequest() {
  const move = {};
  for (const [i, p] of S.edits.move) move[i] = p.map((v) => Math.round(v));
  return { base: S.state.after.version, remove: [...S.edits.remove], move, add: S.edits.add.map((b) => b.map(Math.round)),
           calibrate: $("calibrate").checked };
}

function reencode() {
  if (!S.state || generated()) return;
  const st = S.state;
  if (tokensChanged() || boxesChanged() || editCount() === 0) {
    if (editCount()) showError("");
    const note = editCount() ? " (Gaussian edits dropped: the partition is redone)" : "";
    runJob("/api/encode", { session: st.session, n_tokens: +$("tokens").value, priority: S.boxes }, "encoding" + note);
  } else {
    runJob("/api/encode", { session: st.session, edits: editsRequest() }, "re-encoding the edited layout");
  }
}

// ------------------------------------------------------------------ drawing
function ellipse(ctx, cx, cy, sx, sy, rho, k) {
  const s = S.scale, r = Math.sqrt(Math.max(1 - rho * rho, 0));
  ctx.beginPath();
  for (let j = 0; j <= 32; j++) {
    const t = (j / 32) * 2 * Math.PI;
    const x = cx + k * sx * Math.cos(t), y = cy + k * sy * (rho * Math.cos(t) + r * Math.sin(t));
    const px = (x + 0.5) * s, py = (y + 0.5) * s;
    j ? ctx.lineTo(px, py) : ctx.moveTo(px, py);
  }
  ctx.stroke();
}

function draw() {
  const c = $("editor"), ctx = c.getContext("2d"), s = S.scale;
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, c.width, c.height);
  if (!S.state) return;
  ctx.drawImage(S.image, 0, 0, c.width, c.height);
  const a = S.state.after;
  if ($("show-cells").checked) {
    ctx.strokeStyle = "rgba(255,255,255,0.35)"; ctx.lineWidth = 1;
    for (const [x0, y0, x1, y1] of a.cells) ctx.strokeRect(x0 * s + 0.5, y0 * s + 0.5, (x1 - x0 + 1) * s - 1, (y1 - y0 + 1) * s - 1);
  }
  const gs = $("show-refined").checked ? a.refined : a.gaussians;
  gs.forEach(([cx, cy, sx, sy, rho], i) => {
    const removed = S.edits.remove.has(i), moved = S.edits.move.get(i);
    ctx.lineWidth = i === S.hover ? 2.5 : 1.25;
    ctx.strokeStyle = removed ? "rgba(150,150,150,0.8)" : moved ? "#39d0ff" : i === S.hover ? "#ffe14d" : "#ff3b3b";
    const [x, y] = moved || [cx, cy];
    ellipse(ctx, x, y, sx, sy, rho, 1);
    ctx.fillStyle = ctx.strokeStyle;
    ctx.fillRect((x + 0.5) * s - 2, (y + 0.5) * s - 2, 4, 4);
    if (removed) {
      ctx.beginPath(); ctx.moveTo((x - 4) * s, (y - 4) * s); ctx.lineTo((x + 4) * s, (y + 4) * s);
      ctx.moveTo((x + 4) * s, (y - 4) * s); ctx.lineTo((x - 4) * s, (y + 4) * s); ctx.stroke();
    }
  });
  ctx.strokeStyle = "#5dff8f"; ctx.lineWidth = 2;
  for (const [x0, y0, x1, y1] of S.edits.add) {
    const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2, sx = (x1 - x0) / 3, sy = (y1 - y0) / 3;
    ellipse(ctx, cx, cy, sx, sy, 0, 1);
    ctx.fillStyle = ctx.strokeStyle; ctx.fillRect((cx + 0.5) * s - 2, (cy + 0.5) * s - 2, 4, 4);
  }
  ctx.setLineDash([]);
  for (const [x0, y0, x1, y1] of S.boxes) { ctx.strokeStyle = "#00ff66"; ctx.lineWidth = 2; ctx.strokeRect(x0 * s, y0 * s, (x1 - x0 + 1) * s, (y1 - y0 + 1) * s); }
  if (S.drag && S.drag.kind === "box") {
    const b = dragBox();
    ctx.setLineDash([6, 4]); ctx.strokeStyle = "#00ff66"; ctx.strokeRect(b[0] * s, b[1] * s, (b[2] - b[0] + 1) * s, (b[3] - b[1] + 1) * s);
    ctx.setLineDash([]);
  }
}

// ------------------------------------------------------------------ mouse
function imagePoint(ev) {
  const c = $("editor"), r = c.getBoundingClientRect();
  const x = ((ev.clientX - r.left) * (c.width / r.width)) / S.scale - 0.5;
  const y = ((ev.clientY - r.top) * (c.height / r.height)) / S.scale - 0.5;
  return [Math.min(Math.max(x, 0), S.state.width - 1), Math.min(Math.max(y, 0), S.state.height - 1)];
}
function nearest([x, y]) {
  let best = -1, bestD = Infinity;
  S.state.after.gaussians.forEach(([cx, cy], i) => {
    const [px, py] = S.edits.move.get(i) || [cx, cy];
    const d = Math.hypot(px - x, py - y);
    if (d < bestD) { bestD = d; best = i; }
  });
  return bestD <= Math.max(10 / S.scale, 4) ? best : -1;
}
function nearestAdded([x, y]) {
  return S.edits.add.findIndex(([x0, y0, x1, y1]) => Math.hypot((x0 + x1) / 2 - x, (y0 + y1) / 2 - y) <= Math.max(10 / S.scale, 4));
}
function dragBox() {
  const [ax, ay] = S.drag.start, [bx, by] = S.drag.end;
  return [Math.round(Math.min(ax, bx)), Math.round(Math.min(ay, by)), Math.round(Math.max(ax, bx)), Math.round(Math.max(ay, by))];
}
function addBoxAt([x, y]) {
  // a new Gaussian about the size of an average cell: sqrt(patch area / tokens per patch)
  const side = Math.min(64, Math.max(8, Math.round(Math.sqrt((256 * 256) / S.state.after.tokens_per_patch))));
  const w = S.state.width - 1, h = S.state.height - 1;
  const x0 = Math.max(0, Math.min(w - side, Math.round(x - side / 2))), y0 = Math.max(0, Math.min(h - side, Math.round(y - side / 2)));
  return [x0, y0, Math.min(w, x0 + side), Math.min(h, y0 + side)];
}

function onDown(ev) {
  if (!S.state || S.busy || ev.button !== 0) return;
  const p = imagePoint(ev), t = tool();
  ev.preventDefault();
  if (t === "box" && !generated()) S.drag = { kind: "box", start: p, end: p };
  else if (t === "move") { const i = nearest(p); if (i >= 0) S.drag = { kind: "move", index: i }; }
  else if (t === "add") S.edits.add.push(addBoxAt(p));
  else if (t === "remove") {
    const j = nearestAdded(p);
    if (j >= 0) S.edits.add.splice(j, 1);
    else { const i = nearest(p); if (i >= 0) S.edits.remove.has(i) ? S.edits.remove.delete(i) : S.edits.remove.add(i); }
  }
  updatePending(); draw();
}
function onMove(ev) {
  if (!S.state) return;
  const p = imagePoint(ev);
  if (S.drag && S.drag.kind === "box") S.drag.end = p;
  else if (S.drag && S.drag.kind === "move") S.edits.move.set(S.drag.index, p);
  else S.hover = (tool() === "move" || tool() === "remove") ? nearest(p) : -1;
  draw();
}
function onUp() {
  if (!S.drag) return;
  if (S.drag.kind === "box") {
    const b = dragBox();
    if (b[2] - b[0] >= 3 && b[3] - b[1] >= 3) S.boxes.push(b);
  }
  S.drag = null;
  updatePending(); draw();
}

// ------------------------------------------------------------------ wiring
$("file").addEventListener("change", (ev) => uploadFile(ev.target.files[0]));
$("tokens").addEventListener("input", () => { $("tokens-value").textContent = $("tokens").value; updatePending(); });
$("tokens").addEventListener("change", () => { if (S.state && !generated() && tokensChanged()) reencode(); });
$("encode").addEventListener("click", reencode);
$("clear").addEventListener("click", () => { S.boxes = []; S.edits = newEdits(); updatePending(); draw(); });
$("show-cells").addEventListener("change", draw);
$("show-refined").addEventListener("change", draw);
$("generate").addEventListener("click", () => runJob("/api/generate",
  { class_id: +$("class").value, seed: +$("seed").value, steps: +$("steps").value }, "generating"));
$("regenerate").addEventListener("click", () => runJob("/api/generate",
  { session: S.state.session, class_id: +$("class").value, seed: +$("seed").value, steps: +$("steps").value, edits: editsRequest() },
  "regenerating the texture"));
const canvas = $("editor");
canvas.addEventListener("mousedown", onDown);
window.addEventListener("mousemove", (ev) => { if (S.drag || ev.target === canvas) onMove(ev); });
window.addEventListener("mouseup", onUp);
canvas.addEventListener("mouseleave", () => { S.hover = -1; draw(); });
document.addEventListener("dragover", (ev) => ev.preventDefault());
document.addEventListener("drop", (ev) => { ev.preventDefault(); uploadFile(ev.dataTransfer.files[0]); });
init();
