// The page of `xmask serve`: upload an image once (POST /predict with a low floor), then filter
// the heads by score, draw their masks (COCO RLE, decoded here) and count the heads inside a
// zone drawn with clicks (POST /zones) without running the model again.
"use strict";

const FLOOR = 0.05; // every candidate head down to this score comes back once
const $ = (id) => document.getElementById(id);
const view = $("view");
const context = view.getContext("2d");
const state = {
  answer: null, // the JSON of POST /predict
  base: null, // ImageData of the image
  labels: null, // Int32Array H×W, row-major: 0 background, k: head k - 1
  colours: [], // [r, g, b] per head
  zone: [], // [[x, y], ...] image pixels
  drawing: false,
  summary: "", // the status line of the last prediction
  zoneAsk: 0, // the latest zone request (older answers are dropped)
};

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

// The counts of a compressed COCO RLE string (pycocotools' rleFrString).
function rleCounts(text) {
  const counts = [];
  let value = 0;
  let shift = 0;
  for (const char of text) {
    const code = char.charCodeAt(0) - 48;
    value |= (code & 0x1f) << shift;
    shift += 5;
    if (code & 0x20) continue;
    if (code & 0x10) value -= 2 ** shift;
    if (counts.length > 2) value += counts[counts.length - 2];
    counts.push(value);
    value = 0;
    shift = 0;
  }
  return counts;
}

// One label map of the masks (runs are column-major: pixel p is row p % H, column p / H).
function decodeLabels(masks, width, height) {
  const labels = new Int32Array(width * height);
  masks.forEach((mask, k) => {
    let position = 0;
    rleCounts(mask.counts).forEach((run, i) => {
      if (i % 2 === 1) {
        for (let p = position; p < position + run; p++) {
          labels[(p % height) * width + Math.floor(p / height)] = k + 1;
        }
      }
      position += run;
    });
  });
  return labels;
}

function colour(k) {
  const hue = (k * 137.508) % 360; // golden angle: neighbours get distant hues
  const f = (n) => {
    const a = (n + hue / 30) % 12;
    return Math.round(255 * (0.55 - 0.45 * Math.max(-1, Math.min(a - 3, 9 - a, 1))));
  };
  return [f(0), f(8), f(4)];
}

function shownHeads() {
  const conf = Number($("conf").value);
  return state.answer.scores.map((score) => score >= conf);
}

function render() {
  const answer = state.answer;
  if (!answer) return;
  const shown = shownHeads();
  const picture = new ImageData(new Uint8ClampedArray(state.base.data), answer.width);
  if ($("masks").checked && state.labels) {
    const data = picture.data;
    state.labels.forEach((label, i) => {
      if (label === 0 || !shown[label - 1]) return;
      const [r, g, b] = state.colours[label - 1];
      data[4 * i] = (data[4 * i] + r) >> 1;
      data[4 * i + 1] = (data[4 * i + 1] + g) >> 1;
      data[4 * i + 2] = (data[4 * i + 2] + b) >> 1;
    });
  }
  context.putImageData(picture, 0, 0);
  const radius = Math.max(2, Math.round(Math.max(answer.width, answer.height) / 400));
  context.fillStyle = "#ff2020";
  answer.points.forEach(([x, y], k) => {
    if (!shown[k]) return;
    context.beginPath();
    context.arc(x, y, radius, 0, 2 * Math.PI);
    context.fill();
  });
  drawZone(radius);
  const count = shown.filter(Boolean).length;
  $("count").textContent = count.toLocaleString("en");
  $("count").dataset.count = String(count);
  $("conf-value").textContent = Number($("conf").value).toFixed(2);
}

function drawZone(radius) {
  if (state.zone.length === 0) return;
  context.lineWidth = Math.max(1, radius / 2);
  context.strokeStyle = "#ffd400";
  context.fillStyle = "rgba(255, 212, 0, 0.15)";
  context.beginPath();
  state.zone.forEach(([x, y], i) => (i ? context.lineTo(x, y) : context.moveTo(x, y)));
  if (!state.drawing) {
    context.closePath();
    context.fill();
  }
  context.stroke();
  context.fillStyle = "#ffd400";
  state.zone.forEach(([x, y]) => context.fillRect(x - radius, y - radius, 2 * radius, 2 * radius));
}

async function countZone() {
  const label = $("zone-count");
  if (state.drawing || state.zone.length < 3 || !state.answer) {
    label.textContent = "";
    label.dataset.count = "";
    return;
  }
  const shown = shownHeads();
  const ask = ++state.zoneAsk;
  const body = {
    points: state.answer.points.filter((_, k) => shown[k]),
    zones: [{ name: "zone", polygon: state.zone }],
  };
  const response = await fetch("/zones", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await response.json();
  if (ask !== state.zoneAsk) return;
  if (!response.ok) {
    setStatus(answer.error, true);
    return;
  }
  const count = answer.zones.zone;
  label.textContent = `${count.toLocaleString("en")} in the zone`;
  label.dataset.count = String(count);
  label.dataset.polygon = JSON.stringify(state.zone);
}

async function upload(file) {
  setStatus(`Counting ${file.name}…`);
  $("count").dataset.count = "";
  let response;
  let answer;
  try {
    response = await fetch(`/predict?floor=${FLOOR}`, {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    answer = await response.json();
  } catch (error) {
    setStatus(`${file.name}: no answer from the server (${error})`, true);
    return;
  }
  if (!response.ok) {
    setStatus(`${file.name}: ${answer.error}`, true);
    return;
  }
  const bitmap = await createImageBitmap(file);
  view.width = answer.width;
  view.height = answer.height;
  context.drawImage(bitmap, 0, 0, answer.width, answer.height);
  state.base = context.getImageData(0, 0, answer.width, answer.height);
  state.labels = answer.masks ? decodeLabels(answer.masks, answer.width, answer.height) : null;
  state.colours = answer.points.map((_, k) => colour(k));
  state.answer = answer;
  $("masks").disabled = !answer.masks;
  $("conf").min = String(Math.min(FLOOR, answer.conf));
  $("conf").value = String(answer.conf);
  $("controls").hidden = false;
  render();
  countZone();
  const seconds = answer.network_s + answer.post_s;
  state.summary = `${file.name}: ${answer.count} heads at score ≥ ${answer.conf.toFixed(2)}, ` +
    `${answer.width}×${answer.height}, ${seconds.toFixed(2)} s (${answer.model})`;
  setStatus(state.summary);
}

$("file").addEventListener("change", () => $("file").files[0] && upload($("file").files[0]));
$("drop").addEventListener("dragover", (event) => {
  event.preventDefault();
  $("drop").classList.add("over");
});
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (event) => {
  event.preventDefault();
  $("drop").classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) upload(file);
});
$("masks").addEventListener("change", render);
$("conf").addEventListener("input", () => {
  render();
  countZone();
});
view.addEventListener("click", (event) => {
  if (!state.drawing) return;
  const box = view.getBoundingClientRect();
  const x = ((event.clientX - box.left) * view.width) / box.width;
  const y = ((event.clientY - box.top) * view.height) / box.height;
  state.zone.push([x, y]);
  $("finish-zone").disabled = state.zone.length < 3;
  render();
});
$("draw-zone").addEventListener("click", () => {
  state.zone = [];
  state.drawing = true;
  view.classList.add("drawing");
  $("finish-zone").disabled = true;
  $("clear-zone").disabled = false;
  setStatus("Click the zone's corners on the image, then Finish zone.");
  render();
  countZone();
});
$("finish-zone").addEventListener("click", () => {
  state.drawing = false;
  setStatus(state.summary);
  view.classList.remove("drawing");
  $("finish-zone").disabled = true;
  render();
  countZone();
});
$("clear-zone").addEventListener("click", () => {
  state.zone = [];
  state.drawing = false;
  view.classList.remove("drawing");
  $("finish-zone").disabled = true;
  $("clear-zone").disabled = true;
  setStatus(state.summary);
  render();
  countZone();
});
