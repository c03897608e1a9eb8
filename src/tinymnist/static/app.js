// The draw-a-digit page: pointer strokes on a canvas, sent to /api/predict as a PNG (canvas.toDataURL encodes
// at once; Chromium may postpone canvas.toBlob by seconds). While drawing, a quick answer without feature maps
// at most every PREVIEW_MS, one request in flight at a time; on pen-up the answer with its feature maps. Every
// request has a number: an answer to any but the latest, or one that comes after Clear, is dropped.
"use strict";

const PREVIEW_MS = 150;
const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ctx = pad.getContext("2d");
const state = {
  models: {},
  drawn: false, // ink on the pad
  last: null, // the pen's last point while it is down
  seq: 0, // the latest request's number; Clear moves it on too
  inFlight: null, // the AbortController of the request in flight
  timer: null, // a preview waiting for PREVIEW_MS to pass
  sentAt: -Infinity,
  changed: false, // strokes drawn since the last request was sent
};

function blank() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
}

function pointAt(ev) {
  // the pad may be shown smaller or larger than its 280x280 pixels: map the pointer onto them
  const r = pad.getBoundingClientRect();
  return [(ev.clientX - r.left) * pad.width / r.width, (ev.clientY - r.top) * pad.height / r.height];
}

pad.addEventListener("pointerdown", (ev) => {
  ev.preventDefault();
  pad.setPointerCapture(ev.pointerId);
  state.last = pointAt(ev);
  ctx.lineWidth = 18;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.strokeStyle = ctx.fillStyle = "#111";
  ctx.beginPath();
  ctx.arc(state.last[0], state.last[1], ctx.lineWidth / 2, 0, 2 * Math.PI);
  ctx.fill();
  state.drawn = true;
  state.seq += 1; // an answer still on its way is for the pad before this stroke
  stop();
  $("features").replaceChildren(); // and so are the maps shown
  inked();
});

pad.addEventListener("pointermove", (ev) => {
  if (state.last === null) return;
  const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev];
  ctx.beginPath();
  ctx.moveTo(state.last[0], state.last[1]);
  for (const e of events.length ? events : [ev]) {
    state.last = pointAt(e);
    ctx.lineTo(state.last[0], state.last[1]);
  }
  ctx.stroke();
  inked();
});

function endStroke() {
  if (state.last === null) return;
  state.last = null;
  send(true); // always one answer, with its feature maps, for the digit as it now stands
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

$("clear").addEventListener("click", () => {
  blank();
  state.drawn = false;
  state.changed = false;
  state.seq += 1; // whatever is still on its way is for the drawing just cleared
  stop();
  showNothing("Draw a digit with a mouse, a finger or a pen.");
});

$("model").addEventListener("change", () => {
  showModel();
  if (state.drawn) send(true);
});

// --- requests

function inked() {
  // a stroke grew: a preview now, or once PREVIEW_MS have passed since the last request and it is answered
  state.changed = true;
  busy();
  if (state.inFlight || state.timer) return;
  const wait = state.sentAt + PREVIEW_MS - performance.now();
  if (wait > 0) state.timer = setTimeout(() => { state.timer = null; send(false); }, wait);
  else send(false);
}

function stop() {
  clearTimeout(state.timer);
  state.timer = null;
  if (state.inFlight) state.inFlight.abort();
  state.inFlight = null;
  busy();
}

function busy() {
  document.body.dataset.busy = state.inFlight !== null || state.timer !== null ? "1" : "0";
}

function canvasPng() {
  const bytes = atob(pad.toDataURL("image/png").split(",")[1]);
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) out[i] = bytes.charCodeAt(i);
  return out;
}

async function send(final) {
  if (!state.drawn) return;
  stop(); // a newer request replaces a preview in flight or waiting
  const seq = ++state.seq;
  const control = new AbortController();
  const url = "/api/predict?model=" + encodeURIComponent($("model").value) + (final ? "" : "&features=0");
  const body = canvasPng();
  state.inFlight = control;
  state.sentAt = performance.now();
  state.changed = false;
  busy();
  let answer = null;
  let failure = null;
  try {
    const resp = await fetch(url, { method: "POST", headers: { "Content-Type": "image/png" }, body,
      signal: control.signal });
    const json = await resp.json();
    if (resp.ok) answer = json;
    else failure = json.error || ("error " + resp.status);
  } catch (err) {
    failure = "no answer from the server (" + err.message + ")";
  }
  if (seq !== state.seq) { // cleared, or a newer request was sent: this answer is stale
    document.body.dataset.dropped = String(Number(document.body.dataset.dropped || 0) + 1);
    return;
  }
  state.inFlight = null;
  if (answer) render(answer, final);
  else showNothing(failure);
  const counter = final ? "answers" : "previews";
  document.body.dataset[counter] = String(Number(document.body.dataset[counter] || 0) + 1);
  if (state.changed && state.last !== null) inked(); // the pen is still down and drew meanwhile
  busy();
}

// --- what is shown

function showNothing(message) {
  // no answer for the pad as it is: nothing of an earlier one stays beside it
  $("digit").textContent = "?";
  $("digit").className = "";
  $("confidence").textContent = "";
  $("features").replaceChildren();
  $("seen").getContext("2d").clearRect(0, 0, 28, 28);
  renderBars(null);
  $("status").textContent = message;
}

function render(answer, final) {
  const p = answer.probabilities;
  const name = state.models[answer.model].model;
  drawSeen(answer.image);
  $("digit").className = final ? "" : "preview";
  if (answer.doubt) { // not like one digit: no digit to show, only why
    $("digit").textContent = "?";
    $("confidence").textContent = answer.doubt.message;
    $("status").textContent = "Model " + name + ": " + answer.doubt.message + ".";
    renderBars(answer.doubt.kind === "unsure" ? p : null, answer.digit);
  } else {
    $("digit").textContent = String(answer.digit);
    $("confidence").textContent = (100 * p[answer.digit]).toFixed(1) + " %";
    $("status").textContent = "Model " + name + " says " + answer.digit + (final ? "." : " so far.");
    renderBars(p, answer.digit);
  }
  if (final) renderFeatures(state.models[answer.model], answer.features || []);
}

function renderBars(p, top) {
  const items = [];
  for (let d = 0; d < 10; d++) {
    const li = document.createElement("li");
    const q = p ? p[d] : 0;
    li.dataset.p = String(q);
    if (p && d === top) li.className = "top";
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("i");
    fill.style.width = (100 * q).toFixed(2) + "%";
    bar.append(fill);
    const num = document.createElement("span");
    num.className = "p";
    num.textContent = p ? (100 * q).toFixed(1) + " %" : "";
    const digit = document.createElement("b");
    digit.textContent = String(d);
    li.append(digit, bar, num);
    items.push(li);
  }
  $("bars").replaceChildren(...items);
}

function drawSeen(rows) {
  const g = $("seen").getContext("2d");
  const img = g.createImageData(28, 28);
  rows.forEach((row, y) => row.forEach((v, x) => {
    const i = 4 * (28 * y + x);
    img.data[i] = img.data[i + 1] = img.data[i + 2] = v;
    img.data[i + 3] = 255;
  }));
  g.putImageData(img, 0, 0);
}

function fieldText(rf) {
  return "receptive field " + rf + ": each value of these maps depends on a " + rf + "x" + rf +
    " square of the 28x28 input";
}

function renderFeatures(model, layers) {
  const kinds = Object.fromEntries(model.layers.map((la) => [la.name, la.type]));
  const rows = layers.map((layer) => {
    const div = document.createElement("div");
    div.className = "layer";
    const name = document.createElement("div");
    name.className = "name";
    name.title = layer.layer + ": " + kinds[layer.layer] + "; " + fieldText(layer.rf);
    const b = document.createElement("b");
    b.textContent = layer.layer + "  RF " + layer.rf;
    const kind = document.createElement("small");
    kind.textContent = kinds[layer.layer];
    name.append(b, layer.shape[0] + " channels, " + layer.shape[1] + "x" + layer.shape[2], kind);
    div.append(name);
    layer.maps.forEach((src, i) => {
      const img = document.createElement("img");
      img.src = src;
      img.alt = layer.layer + " channel " + layer.channels[i];
      img.title = layer.layer + ", channel " + layer.channels[i] + "; " + fieldText(layer.rf);
      div.append(img);
    });
    return div;
  });
  $("features").replaceChildren(...rows);
}

function whyField(m) {
  // the model's field is its answer's: larger than its last map's when a pooling layer sees the whole map
  const last = m.layers[m.layers.length - 1];
  if (!last || !m.head || m.rf <= last.rf) return "the answer depends on a " + m.rf + "x" + m.rf + " square of the input";
  return "each value of the last feature maps (" + last.name + ", RF " + last.rf + ") depends on a " + last.rf +
    "x" + last.rf + " square of the input; " + m.head.name + " (" + m.head.type + ") then combines every " +
    "position of the maps, so the answer depends on all " + m.rf + "x" + m.rf + " pixels";
}

function showModel() {
  const m = state.models[$("model").value];
  const acc = m.test_acc == null ? "no recorded test accuracy" : "test accuracy " + m.test_acc.toFixed(2) + " %";
  const rf = document.createElement("abbr");
  rf.textContent = "receptive field " + m.rf;
  rf.title = whyField(m);
  $("model-info").replaceChildren(m.model + (m.role ? " (" + m.role + ")" : "") + ": " +
    m.params.toLocaleString("en") + " parameters, ", rf, ", " + acc + " (" + m.source + ")");
  $("model-info").title = m.about;
  $("legend-field").textContent = "For " + m.model + ": " + whyField(m) + ".";
}

async function start() {
  blank();
  renderBars(null);
  const resp = await fetch("/api/models");
  const list = await resp.json();
  const select = $("model");
  const about = [];
  for (const m of list.models) {
    state.models[m.key] = m;
    const opt = document.createElement("option");
    opt.value = m.key;
    opt.textContent = m.key === m.model ? m.key : m.key + ": " + m.model;
    opt.title = m.about;
    select.append(opt);
    const dt = document.createElement("dt");
    dt.textContent = m.key === m.model ? m.key : m.key + " (" + m.model + ")";
    const dd = document.createElement("dd");
    dd.textContent = m.about;
    about.push(dt, dd);
  }
  $("legend-models").replaceChildren(...about);
  select.value = list.default;
  showModel();
  document.body.dataset.ready = "1";
}

start();
