// genops web page: plain JavaScript, no build step, no third-party code; talks to the same origin.
"use strict";

const $ = (id) => document.getElementById(id);
const SIDE = 28;
let metadata = null;

// ---- API -----------------------------------------------------------------------------------
async function api(path, options = {}) {
  const response = await fetch(path, options);
  const text = await response.text();
  let body = null;
  try { body = JSON.parse(text); } catch { body = text; }
  if (!response.ok) {
    const detail = Array.isArray(body) ? body.map((e) => e.error || JSON.stringify(e)).join("; ")
      : (body && body.error) ? body.error : text;
    const retry = response.headers.get("Retry-After");
    throw new Error(`${response.status}: ${detail}${retry ? ` (retry after ${retry} s)` : ""}`);
  }
  return body;
}
const postJSON = (path, payload) => api(path, {
  method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload),
});

// ---- models and cards ----------------------------------------------------------------------
const KEY_METRICS = { generation: "fd_judge", anomaly: "anomaly_auroc_mean" };

function metricText(role, model) {
  const name = KEY_METRICS[role] || (model.metrics.anomaly_auroc_mean !== undefined
    ? "anomaly_auroc_mean" : Object.keys(model.metrics)[0]);
  const value = model.metrics[name];
  return value === undefined ? "–" : `${name} ${Number(value).toFixed(3)}`;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

// "anomaly challenger · canary 10 % of clients · shadow 120 requests, 98 % verdict agreement,
// p99 12 ms" (this worker's shadow figures; `genops champions --url` sums every worker)
function challengerText(task, model) {
  const parts = [`${task} challenger`];
  const canary = (metadata.canaries || {})[task];
  if (canary && canary.live) parts.push(`canary ${Math.round(canary.share * 100)} % of clients`);
  const shadow = ((metadata.shadow || {}).challengers || [])
    .find((e) => e.task === task && e.version === model.version);
  if (shadow && shadow.requests) {
    const agree = shadow.verdict_agreement === null ? "–"
      : `${Math.round(shadow.verdict_agreement * 100)} %`;
    parts.push(`shadow ${shadow.requests} requests, ${shadow.errors} errors, ${agree} verdict `
      + `agreement, p99 ${Math.round(shadow.latency_ms_p99)} ms`);
  }
  return parts.join(" · ");
}

function renderModels() {
  const body = $("models").querySelector("tbody");
  body.replaceChildren();
  for (const [role, model] of Object.entries(metadata.models)) {
    const row = document.createElement("tr");
    cell(row, role.startsWith("families/") ? `latest ${role.slice(9)}`
      : role.startsWith("challengers/") ? challengerText(role.slice(12), model)
      : `${role} champion`);
    cell(row, `${model.name} v${model.version}`);
    cell(row, model.family);
    cell(row, model.data_version);
    cell(row, metricText(role, model));
    const td = cell(row, "");
    if (model.has_card) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "card-link";
      button.dataset.role = role;
      button.textContent = "open";
      button.addEventListener("click", () => openCard(role, model));
      td.appendChild(button);
    } else {
      td.textContent = "none";
      td.className = "muted";
    }
    body.appendChild(row);
  }
}

function openCard(role, model) {
  $("card-title").textContent = `Model card: ${model.name} v${model.version} (${model.family})`;
  $("card-md").href = `/ui/cards/${role}?format=md`;
  $("card-frame").src = `/ui/cards/${role}`;
  $("card-panel").hidden = false;
  $("card-panel").scrollIntoView({ block: "nearest" });
}

function fillSelect(select, options) {
  select.replaceChildren();
  for (const [value, text] of options) {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = text;
    select.appendChild(option);
  }
}

function modelFor(task, choice) {
  if (choice === "champion") return metadata.models[task];
  if (choice === "challenger") return metadata.models[`challengers/${task}`];
  return metadata.models[`families/${choice}`];
}

function setupControls() {
  const families = Object.keys(metadata.models)
    .filter((role) => role.startsWith("families/")).map((role) => role.slice(9));
  const describe = (task, name) => {
    const m = modelFor(task, name);
    return m ? `${name} (${m.family} v${m.version})` : name;
  };
  const challenger = (task) => (modelFor(task, "challenger")
    ? [["challenger", describe(task, "challenger")]] : []);
  const choices = (task) => [["champion", describe(task, "champion")], ...challenger(task),
    ...families.map((f) => [f, describe(task, f)])];
  fillSelect($("score-model"), choices("anomaly"));
  fillSelect($("gen-model"), choices("generation"));
  fillSelect($("gen-label"), [["", "any"], ...[...Array(10).keys()].map((d) => [d, String(d)])]);
  updateGenerateControls();
  updateScoreControls();
}

// /reconstruct's `denoise_strength` only for a model that declares denoising (its capabilities)
function updateScoreControls() {
  const model = modelFor("anomaly", $("score-model").value);
  const denoises = Boolean(model && model.capabilities && model.capabilities.denoising);
  $("denoise-strength").disabled = !denoises;
  if (!denoises) $("denoise-strength").value = "";
}

// The strength to send (a number in [0, 1]), or null: the model's plain reconstruction.
function denoiseStrength() {
  const input = $("denoise-strength");
  if (input.disabled || input.value === "") return null;
  const value = Number(input.value);
  if (!(value >= 0 && value <= 1)) throw new Error("denoise strength must be between 0 and 1");
  return value;
}

function updateGenerateControls() {
  const model = modelFor("generation", $("gen-model").value);
  if (!model) return;
  $("gen-label").disabled = !model.conditional;
  $("gen-steps").disabled = !model.supports_steps;
  if (!model.conditional) $("gen-label").value = "";
  if (!model.supports_steps) $("gen-steps").value = "";
  const budget = metadata.limits.max_generate_cost;
  $("gen-note").textContent = `${model.family} v${model.version}: `
    + `${model.conditional ? "conditional" : "unconditional"}`
    + `${model.supports_steps ? ", sampling steps adjustable" : ""}; `
    + `budget n × steps ≤ ${budget}`;
}

async function loadMetadata() {
  metadata = await api("/metadata");
  $("status").textContent = metadata.ready ? "ready" : "not ready";
  $("status").className = `pill ${metadata.ready ? "ready" : "down"}`;
  renderModels();
  setupControls();
}

// ---- drawing pad ---------------------------------------------------------------------------
const pad = $("pad");
const ink = pad.getContext("2d", { willReadFrequently: true });
let drawing = false;
let last = null;

function clearPad() {
  ink.fillStyle = "#000";
  ink.fillRect(0, 0, pad.width, pad.height);
}

function position(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * (pad.width / box.width),
    (event.clientY - box.top) * (pad.height / box.height)];
}

function stroke(to) {
  ink.strokeStyle = "#fff";
  ink.lineWidth = 22;
  ink.lineCap = "round";
  ink.lineJoin = "round";
  ink.beginPath();
  ink.moveTo(...(last || to));
  ink.lineTo(...to);
  ink.stroke();
  last = to;
}

pad.addEventListener("pointerdown", (e) => { drawing = true; last = null; stroke(position(e)); });
pad.addEventListener("pointermove", (e) => { if (drawing) stroke(position(e)); });
for (const name of ["pointerup", "pointerleave", "pointercancel"]) {
  pad.addEventListener(name, () => { drawing = false; last = null; });
}

// The drawing as MNIST-like 28x28 uint8: crop to the ink, scale the longer side to 20 pixels,
// centre it in 28x28 (MNIST's digits sit in a 20x20 box inside a 28x28 frame).
function padPixels() {
  const { data, width, height } = ink.getImageData(0, 0, pad.width, pad.height);
  let x0 = width, y0 = height, x1 = -1, y1 = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (data[4 * (y * width + x)] > 20) {
        x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
  }
  const small = document.createElement("canvas");
  small.width = small.height = SIDE;
  const ctx = small.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, SIDE, SIDE);
  if (x1 < 0) return null;
  const w = x1 - x0 + 1, h = y1 - y0 + 1, scale = 20 / Math.max(w, h);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(pad, x0, y0, w, h, (SIDE - w * scale) / 2, (SIDE - h * scale) / 2,
    w * scale, h * scale);
  const rgba = ctx.getImageData(0, 0, SIDE, SIDE).data;
  const pixels = new Uint8Array(SIDE * SIDE);
  for (let i = 0; i < pixels.length; i++) pixels[i] = rgba[4 * i];
  return pixels;
}

function base64(bytes) {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text);
}

// ---- showing 28x28 arrays ------------------------------------------------------------------
function paint(canvas, values, colour) {
  const img = new ImageData(SIDE, SIDE);
  for (let i = 0; i < SIDE * SIDE; i++) {
    const [r, g, b] = colour(values[i]);
    img.data.set([r, g, b, 255], 4 * i);
  }
  const tmp = document.createElement("canvas");
  tmp.width = tmp.height = SIDE;
  tmp.getContext("2d").putImageData(img, 0, 0);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(tmp, 0, 0, canvas.width, canvas.height);
}
const gray = (v) => { const g = Math.round(255 * Math.min(1, Math.max(0, v))); return [g, g, g]; };
function heat(max) {
  return (v) => {
    const t = max > 0 ? Math.min(1, v / max) : 0;  // black -> red -> yellow -> white
    return [Math.round(255 * Math.min(1, 3 * t)), Math.round(255 * Math.min(1, Math.max(0, 3 * t - 1))),
      Math.round(255 * Math.max(0, 3 * t - 2))];
  };
}

// ---- scoring -------------------------------------------------------------------------------
function showScore(result) {
  const r = result.results[0];
  $("score-value").textContent = r.score.toPrecision(4);
  $("threshold").textContent = r.threshold.toPrecision(4);
  const low = result.raw_low_threshold === null ? "" : `${result.raw_low_threshold.toPrecision(3)} – `;
  $("raw-score").textContent =
    `${r.raw_score.toPrecision(4)} (normal range ${low}${result.raw_threshold.toPrecision(3)})`;
  $("verdict").textContent = r.is_anomaly ? "anomalous" : "normal";
  $("verdict").className = r.is_anomaly ? "verdict-anomaly" : "verdict-normal";
  $("percentile").textContent = `${r.percentile.toFixed(1)} % of validation digits score lower or equal`;
  $("score-by").textContent = `${result.model.name} v${result.model.version} (${result.model.family})`;
  $("score-result").hidden = false;
}

// `request(model, extra)` gives the fetch options of one request, so /score and /reconstruct
// get the same input (JSON `pixels` for a drawing, the uploaded file as multipart for an
// upload); `extra` holds further fields (/reconstruct's `denoise_strength`).
async function scoreWith(request, inputValues) {
  $("score-error").textContent = "";
  const choice = $("score-model").value;
  const model = modelFor("anomaly", choice);
  try {
    const strength = denoiseStrength();
    showScore(await api("/score", request(choice, {})));
    if (inputValues) paint($("input-view"), inputValues, gray);
    for (const id of ["recon", "errmap"]) $(id).getContext("2d").clearRect(0, 0, 112, 112);
    const canReconstruct = model && model.has_reconstruction;
    $("recon-note").textContent = canReconstruct ? "" : `${model ? model.family : choice} has no reconstruction`;
    if (canReconstruct) {
      const extra = strength === null ? {} : { denoise_strength: strength };
      const r = (await api("/reconstruct", request(choice, extra))).results[0];
      paint($("recon"), r.reconstruction.flat(), gray);
      const errors = r.error_map.flat();
      paint($("errmap"), errors, heat(Math.max(...errors)));
      const how = strength === null ? "reconstruction" : `denoised at strength ${strength}`;
      $("recon-note").textContent = `${how}; largest squared error ${Math.max(...errors).toFixed(3)}`;
    }
  } catch (error) {
    $("score-error").textContent = error.message;
  }
}

$("score-btn").addEventListener("click", () => {
  const pixels = padPixels();
  if (!pixels) { $("score-error").textContent = "draw a digit first"; return; }
  const encoded = base64(pixels);
  scoreWith((model, extra) => ({
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ pixels: encoded, model, ...extra }),
  }), Array.from(pixels, (p) => p / 255));
});
$("clear-btn").addEventListener("click", () => { clearPad(); $("score-result").hidden = true; });
$("score-model").addEventListener("change", updateScoreControls);

$("upload").addEventListener("change", async () => {
  const file = $("upload").files[0];
  if (!file) return;
  // a preview of what the server scores: grayscale, resized to 28x28
  const bitmap = await createImageBitmap(file);
  const small = document.createElement("canvas");
  small.width = small.height = SIDE;
  const ctx = small.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0, SIDE, SIDE);
  const rgba = ctx.getImageData(0, 0, SIDE, SIDE).data;
  const preview = [];
  for (let i = 0; i < SIDE * SIDE; i++) {
    preview.push((0.299 * rgba[4 * i] + 0.587 * rgba[4 * i + 1] + 0.114 * rgba[4 * i + 2]) / 255);
  }
  scoreWith((model, extra) => {
    const form = new FormData();
    form.append("files", file, file.name);
    for (const [name, value] of Object.entries({ model, ...extra })) {
      form.append(name, JSON.stringify(value));
    }
    return { method: "POST", body: form };
  }, preview);
});

// ---- generating ----------------------------------------------------------------------------
$("gen-model").addEventListener("change", updateGenerateControls);
$("gen-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("gen-error").textContent = "";
  const payload = {
    n: Number($("gen-n").value), seed: Number($("gen-seed").value), model: $("gen-model").value,
    format: "png_grid",
  };
  if (!$("gen-label").disabled && $("gen-label").value !== "") payload.label = Number($("gen-label").value);
  if (!$("gen-steps").disabled && $("gen-steps").value !== "") payload.steps = Number($("gen-steps").value);
  $("gen-btn").disabled = true;
  try {
    const result = await postJSON("/generate", payload);
    $("grid").src = `data:image/png;base64,${result.png_grid}`;
    $("grid").hidden = false;
    $("grid").dataset.model = `${result.model.name}:${result.model.version}`;
  } catch (error) {
    $("gen-error").textContent = error.message;
  } finally {
    $("gen-btn").disabled = false;
  }
});

$("card-close").addEventListener("click", () => { $("card-panel").hidden = true; });

clearPad();
loadMetadata().catch((error) => {
  $("status").textContent = `metadata unavailable: ${error.message}`;
  $("status").className = "pill down";
});
