// The draw-a-digit page: pointer strokes on a canvas, sent as a PNG to /api/predict while drawing.
// At most one request is in flight; strokes drawn meanwhile are sent as soon as it returns.
"use strict";

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ctx = pad.getContext("2d");
const state = { models: {}, drawn: false, inFlight: false, dirty: false, last: null };

function blank() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
}

function pointAt(ev) {
  const r = pad.getBoundingClientRect();
  return [(ev.clientX - r.left) * pad.width / r.width, (ev.clientY - r.top) * pad.height / r.height];
}

pad.addEventListener("pointerdown", (ev) => {
  ev.preventDefault();
  pad.setPointerCapture(ev.pointerId);
  state.last = pointAt(ev);
  ctx.lineWidth = 18;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.strokeStyle = "#111";
  ctx.beginPath();
  ctx.arc(state.last[0], state.last[1], ctx.lineWidth / 2, 0, 2 * Math.PI);
  ctx.fillStyle = "#111";
  ctx.fill();
  state.drawn = true;
  schedule();
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
  schedule();
});

function endStroke() {
  if (state.last === null) return;
  state.last = null;
  schedule();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

$("clear").addEventListener("click", () => {
  blank();
  state.drawn = false;
  state.dirty = false;
  $("digit").textContent = "?";
  $("confidence").textContent = "";
  $("features").replaceChildren();
  $("seen").getContext("2d").clearRect(0, 0, 28, 28);
  renderBars(null);
  $("status").textContent = "Draw a digit with a mouse, a finger or a pen.";
});

$("model").addEventListener("change", () => {
  showModel();
  if (state.drawn) schedule();
});

function schedule() {
  if (!state.drawn) return;
  state.dirty = true;
  if (!state.inFlight) send();
}

function send() {
  state.dirty = false;
  state.inFlight = true;
  document.body.dataset.busy = "1";
  const model = $("model").value;
  pad.toBlob(async (blob) => {
    try {
      const resp = await fetch("/api/predict?model=" + encodeURIComponent(model),
        { method: "POST", headers: { "Content-Type": "image/png" }, body: blob });
      const answer = await resp.json();
      if (resp.ok) render(answer);
      else $("status").textContent = answer.error || ("error " + resp.status);
    } catch (err) {
      $("status").textContent = "no answer from the server (" + err.message + ")";
    }
    document.body.dataset.answers = String(Number(document.body.dataset.answers) + 1);
    state.inFlight = false;
    if (state.dirty && state.drawn) send();
    else document.body.dataset.busy = "0";
  }, "image/png");
}

function render(answer) {
  const p = answer.probabilities;
  $("digit").textContent = String(answer.digit);
  $("confidence").textContent = (100 * p[answer.digit]).toFixed(1) + " %";
  $("status").textContent = "Model " + state.models[answer.model].model + " says " + answer.digit + ".";
  renderBars(p, answer.digit);
  drawSeen(answer.image);
  renderFeatures(answer.features || []);
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

function renderFeatures(layers) {
  const rows = layers.map((layer) => {
    const div = document.createElement("div");
    div.className = "layer";
    const name = document.createElement("div");
    name.className = "name";
    const b = document.createElement("b");
    b.textContent = layer.layer + "  RF " + layer.rf;
    name.append(b, layer.shape[0] + " channels, " + layer.shape[1] + "x" + layer.shape[2]);
    div.append(name);
    layer.maps.forEach((src, i) => {
      const img = document.createElement("img");
      img.src = src;
      img.alt = layer.layer + " channel " + layer.channels[i];
      img.title = layer.layer + ", channel " + layer.channels[i] + ", receptive field " + layer.rf + " pixels";
      div.append(img);
    });
    return div;
  });
  $("features").replaceChildren(...rows);
}

function showModel() {
  const m = state.models[$("model").value];
  const acc = m.test_acc == null ? "no recorded test accuracy" : "test accuracy " + m.test_acc.toFixed(2) + " %";
  $("model-info").textContent = m.model + (m.role ? " (" + m.role + ")" : "") + ": " +
    m.params.toLocaleString("en") + " parameters, receptive field " + m.rf + ", " + acc + " (" + m.source + ")";
}

async function start() {
  blank();
  renderBars(null);
  const resp = await fetch("/api/models");
  const list = await resp.json();
  const select = $("model");
  for (const m of list.models) {
    state.models[m.key] = m;
    const opt = document.createElement("option");
    opt.value = m.key;
    opt.textContent = m.key === m.model ? m.key : m.key + ": " + m.model;
    select.append(opt);
  }
  select.value = list.default;
  showModel();
  document.body.dataset.ready = "1";
}

start();
