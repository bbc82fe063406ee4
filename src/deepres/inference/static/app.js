// The deepres serve page: plain JavaScript, no dependencies. Talks to /v1/model, /v1/predict and /v1/cam.
"use strict";

let card = null;

function percent(x) { return (100 * x).toFixed(1) + "%"; }

function field(list, name, value) {
  const dt = document.createElement("dt");
  const dd = document.createElement("dd");
  dt.textContent = name;
  dd.textContent = value;
  list.append(dt, dd);
}

function showCard(model) {
  const pp = model.preprocessing;
  const precision = model.precision;
  document.getElementById("model-line").textContent =
    `${model.name} · ${model.task} · ${model.num_classes} classes · input ${pp.input_size.join("×")}`;
  const list = document.getElementById("card-fields");
  list.replaceChildren();
  field(list, "model", `${model.name} (${model.architecture})`);
  field(list, "task", model.task);
  field(list, "preprocessing", pp.crop_size
    ? `shorter side to ${pp.resize}, centre ${pp.crop_size}px crop (${pp.interpolation}), ${pp.in_chans} channel(s)`
    : `${pp.resize_side} side to ${pp.resize} (${pp.interpolation}), ${pp.in_chans} channel(s)`);
  field(list, "normalisation", `${pp.normalize}: mean ${pp.mean.join(", ")}; std ${pp.std.join(", ")}`);
  const error = precision.max_abs_error == null ? ""
    : `, max logit error vs fp32 ${precision.max_abs_error.toPrecision(3)}`;
  field(list, "precision", `${precision.mode}${precision.dtype ? " → " + precision.dtype : ""}${error}`);
  const accuracy = Object.entries(model.accuracy || {})
    .map(([k, v]) => `${k} ${typeof v === "number" ? +v.toFixed(4) : v}`);
  field(list, "recorded accuracy", accuracy.length ? accuracy.join(", ") : "none recorded with these weights");
  field(list, "source", Object.entries(model.source).filter(([, v]) => v != null)
    .map(([k, v]) => `${k}: ${v}`).join("; "));
  field(list, "limits", `${model.limits.max_images} images per request, ${model.limits.max_upload_mb} MiB, ` +
    `batches of up to ${model.limits.max_batch} within ${model.limits.max_wait_ms} ms`);
  const classes = document.getElementById("card-classes");
  classes.replaceChildren(...model.classes.map((name) => {
    const li = document.createElement("li");
    li.textContent = name;
    return li;
  }));
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${body.error}: ${body.detail}`;
  } catch (e) {
    return `HTTP ${response.status}`;
  }
}

function newResult(file) {
  const node = document.getElementById("result-template").content.firstElementChild.cloneNode(true);
  node.querySelector(".name").textContent = file.name;
  node.querySelector(".input").src = URL.createObjectURL(file);
  document.getElementById("results").append(node);
  return node;
}

function showBars(node, result) {
  const bars = node.querySelector(".bars");
  result.top_k_classes.forEach((name, i) => {
    const li = document.createElement("li");
    li.className = "prediction";
    li.dataset.class = name;
    const label = document.createElement("span");
    label.className = "class-name";
    label.textContent = name;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = percent(result.top_k_scores[i]);
    bar.append(fill);
    const score = document.createElement("span");
    score.textContent = percent(result.top_k_scores[i]);
    li.append(label, bar, score);
    bars.append(li);
  });
  node.dataset.top1 = result.pred_class;
}

function showSegmentation(node, result) {
  // the class map over the image, half transparent: the overlay; the legend names the colours
  const overlay = node.querySelector(".overlay");
  const under = node.querySelector(".input").cloneNode();
  under.className = "under";
  overlay.before(under);
  overlay.parentElement.classList.add("stack");
  overlay.src = "data:image/png;base64," + result.class_map_png;
  node.querySelector(".overlay-caption").textContent = "class map over the image";
  const legend = node.querySelector(".legend");
  Object.entries(result.class_shares).sort((a, b) => b[1] - a[1]).forEach(([name, share]) => {
    const li = document.createElement("li");
    const swatch = document.createElement("i");
    const colour = card.palette[card.classes.indexOf(name)] || [0, 0, 0];
    swatch.style.background = `rgb(${colour.join(",")})`;
    li.append(swatch, `${name} ${percent(share)}`);
    legend.append(li);
  });
  node.dataset.top1 = Object.entries(result.class_shares).sort((a, b) => b[1] - a[1])[0][0];
}

async function showCam(node, file) {
  const response = await fetch("/v1/cam", { method: "POST", body: file,
                                            headers: { "Content-Type": "application/octet-stream" } });
  if (!response.ok) throw new Error(await errorText(response));
  node.querySelector(".overlay").src = URL.createObjectURL(await response.blob());
  node.querySelector(".overlay-caption").textContent =
    `Grad-CAM: ${response.headers.get("X-Deepres-Class")} (${response.headers.get("X-Deepres-Stage")})`;
}

async function classify(file) {
  const node = newResult(file);
  try {
    const form = new FormData();
    form.append("files", file, file.name);
    const response = await fetch("/v1/predict?top_k=5", { method: "POST", body: form });
    if (!response.ok) throw new Error(await errorText(response));
    const result = (await response.json()).results[0];
    if (card.task === "segmentation") {
      showSegmentation(node, result);
    } else {
      showBars(node, result);
      await showCam(node, file);
    }
    node.classList.add("done");
  } catch (error) {
    node.querySelector(".error").textContent = error.message;
    node.classList.add("failed");
  }
}

async function handle(files) {
  const images = Array.from(files);
  const status = document.getElementById("status");
  status.textContent = `running ${images.length} image(s)…`;
  await Promise.all(images.map(classify));
  status.textContent = `${images.length} image(s) done`;
}

async function main() {
  const response = await fetch("/v1/model");
  card = await response.json();
  showCard(card);
  const drop = document.getElementById("drop");
  document.getElementById("files").addEventListener("change", (event) => handle(event.target.files));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    handle(event.dataTransfer.files);
  });
  document.body.dataset.ready = "true";
}

main();
