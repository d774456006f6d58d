// The page of `deepfake serve`: every file is posted to /api/predict and its answer drawn with DOM calls only
// (text goes in through textContent, never as HTML). No library, nothing from the internet.
"use strict";

const state = { model: null, token: sessionStorage.getItem("deepfake-token") || "", queue: [], running: 0 };
const PARALLEL = 4;
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function headers() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

function megabytes(bytes) {
  return (bytes / 1e6).toFixed(0) + " MB";
}

async function loadModel() {
  const summary = document.getElementById("model-summary");
  let response;
  try {
    response = await fetch("/api/model", { headers: headers() });
  } catch (err) {
    summary.textContent = "The server cannot be reached.";
    return;
  }
  if (response.status === 401) {
    document.getElementById("auth").hidden = false;
    summary.textContent = "Give the token to see the model and check pictures.";
    return;
  }
  document.getElementById("auth").hidden = true;
  const model = await response.json();
  state.model = model;
  const name = model.name ? model.name + (model.version ? " v" + model.version : "") : "a local model";
  summary.textContent = "Serving " + name + ": a picture is called " + model.class_names[1] +
    " when its fake probability is at least " + model.threshold.toFixed(3) + ".";
  const details = document.getElementById("model-details");
  details.replaceChildren();
  const rows = [
    ["trained on", model.datasets.length ? model.datasets.join(", ") : "not recorded"],
    ["backbone", model.backbone + ", " + model.image_size + " px" + (model.faces ? ", face crops" : "") +
      (model.fit === "crop" ? ", crops at full resolution" : "")],
    ["threshold", model.threshold.toFixed(4) + " (" + model.threshold_method + ", chosen on validation)"],
    ["format", model.format + (model.runtime !== model.format ? ", scored by " + model.runtime : "") +
      (model.explains ? "" : " (no heat maps)")],
    ["videos", model.video.frames + " frames sampled, " + model.video.aggregate + " of their probabilities"],
  ];
  const m = model.metrics || {};
  const shown = [["ROC-AUC", m.test_roc_auc], ["AP", m.test_average_precision], ["accuracy", m.test_accuracy],
    ["EER", m.test_eer]].filter(([, value]) => value !== undefined);
  if (shown.length) {
    rows.push(["test split", shown.map(([key, value]) => key + " " + value.toFixed(3)).join(", ") +
      (m.test_n ? " (" + m.test_n + " images)" : "")]);
  }
  if (model.uri) rows.push(["uri", model.uri]);
  for (const [key, value] of rows) details.append(el("dt", {}, key), el("dd", {}, value));
  const limits = model.limits;
  document.getElementById("limits").textContent = "Up to " + limits.max_files + " files at once; images up to " +
    megabytes(limits.max_image_bytes) + ", videos up to " + megabytes(limits.max_video_bytes) + ".";
}

function frameChart(probabilities, threshold) {
  const width = 520, height = 130, pad = 22;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "frames");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "fake probability of each sampled frame");
  const n = probabilities.length, slot = (width - 2 * pad) / n, plot = height - 2 * pad;
  probabilities.forEach((p, i) => {
    const bar = document.createElementNS(SVG, "rect");
    bar.setAttribute("x", pad + i * slot + slot * 0.1);
    bar.setAttribute("width", Math.max(1, slot * 0.8));
    bar.setAttribute("y", pad + plot * (1 - p));
    bar.setAttribute("height", Math.max(1, plot * p));
    if (p >= threshold) bar.setAttribute("class", "over");
    const title = document.createElementNS(SVG, "title");
    title.textContent = "frame " + (i + 1) + ": " + p.toFixed(3);
    bar.append(title);
    svg.append(bar);
  });
  const line = document.createElementNS(SVG, "line");
  const y = pad + plot * (1 - threshold);
  line.setAttribute("x1", pad); line.setAttribute("x2", width - pad);
  line.setAttribute("y1", y); line.setAttribute("y2", y);
  svg.append(line);
  for (const [text, ty] of [["1", pad + 4], ["threshold", y - 3], ["0", height - pad]]) {
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", 2); label.setAttribute("y", ty);
    label.textContent = text;
    svg.append(label);
  }
  return svg;
}

function showResult(card, file, result) {
  const body = card.querySelector(".body");
  body.replaceChildren(el("div", { class: "name" }, file.name));
  if (result.error) {
    card.dataset.status = "error";
    body.append(el("p", { class: "error" }, "Could not check it: " + result.error.message));
    return;
  }
  card.dataset.status = "done";
  const fake = result.label === state.model.class_names[1];
  body.append(el("div", { class: "verdict " + (fake ? "fake" : "real") }, result.label.toUpperCase()));
  const p = result.fake_probability;
  const bar = el("div", { class: "bar", title: "fake probability" }, el("span"), el("i"));
  bar.querySelector("span").style.width = (100 * p).toFixed(1) + "%";
  bar.querySelector("i").style.left = (100 * result.threshold).toFixed(1) + "%";
  body.append(el("p", { class: "probability" }, "fake probability " + p.toFixed(4) + " (threshold " +
    result.threshold.toFixed(3) + ")"), bar);
  if (result.kind === "video") {
    body.append(el("p", { class: "note" }, result.frames + " frames scored; the video's probability is their " +
      state.model.video.aggregate + ":"), frameChart(result.frame_probabilities, result.threshold));
  } else if (result.frames > 1) {
    body.append(el("p", { class: "note" }, result.frames + " faces scored"));
  }
  if (result.note) body.append(el("p", { class: "note" }, result.note));
  if (result.gradcam) {
    const heat = el("img", { class: "heat", alt: "Grad-CAM heat map: the regions that drove the verdict" });
    heat.src = result.gradcam;
    card.querySelector(".media").append(el("figure", {}, heat, el("figcaption", {}, "what the model looked at")));
    body.append(el("p", { class: "note" }, "Heat map (Grad-CAM): red regions drove the fake probability most."));
  } else if (result.kind === "image" && !state.model.explains) {
    body.append(el("p", { class: "note" }, "This model (" + state.model.format + ") has no heat maps: serve the " +
      "Keras model to see them."));
  }
}

function newCard(file) {
  const media = el("div", { class: "media" });
  if (file.type.startsWith("video/")) {
    media.append(el("video", { src: URL.createObjectURL(file), controls: "", muted: "", preload: "metadata" }));
  } else if (file.type.startsWith("image/")) {
    const picture = el("img", { alt: "uploaded picture" });
    picture.src = URL.createObjectURL(file);
    media.append(el("figure", {}, picture, el("figcaption", {}, "uploaded")));
  } else {
    media.append(el("div", { class: "placeholder" }));
  }
  const card = el("article", { class: "card result", "data-status": "pending" }, media,
    el("div", { class: "body" }, el("div", { class: "name" }, file.name), el("p", { class: "note" }, "checking…")));
  document.getElementById("results").prepend(card);
  return card;
}

async function check(file, card, attempt = 0) {
  const form = new FormData();
  form.append("file", file);
  const explain = state.model && state.model.explains && !file.type.startsWith("video/");
  let response;
  try {
    response = await fetch("/api/predict" + (explain ? "?explain=true" : ""),
      { method: "POST", body: form, headers: headers() });
  } catch (err) {
    showResult(card, file, { error: { message: "the server cannot be reached" } });
    return;
  }
  if (response.status === 503 && attempt < 20) {
    const wait = Number(response.headers.get("Retry-After") || "1");
    card.querySelector(".body .note").textContent = "the server is busy; retrying in " + wait + " s…";
    await new Promise((resolve) => setTimeout(resolve, wait * 1000));
    return check(file, card, attempt + 1);
  }
  let data;
  try {
    data = await response.json();
  } catch (err) {
    showResult(card, file, { error: { message: "the server answered " + response.status } });
    return;
  }
  if (response.status === 401) {
    document.getElementById("auth").hidden = false;
  }
  showResult(card, file, data.results ? data.results[0] : { error: data.error });
}

function pump() {
  while (state.running < PARALLEL && state.queue.length) {
    const [file, card] = state.queue.shift();
    state.running += 1;
    check(file, card).finally(() => { state.running -= 1; pump(); });
  }
}

function add(files) {
  for (const file of files) state.queue.push([file, newCard(file)]);
  pump();
}

document.addEventListener("DOMContentLoaded", () => {
  const drop = document.getElementById("drop");
  const input = document.getElementById("files");
  input.addEventListener("change", () => { add(input.files); input.value = ""; });
  for (const kind of ["dragenter", "dragover"]) {
    drop.addEventListener(kind, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const kind of ["dragleave", "drop"]) {
    drop.addEventListener(kind, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => { event.preventDefault(); add(event.dataTransfer.files); });
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = document.getElementById("token").value.trim();
    sessionStorage.setItem("deepfake-token", state.token);
    loadModel();
  });
  loadModel();
});
