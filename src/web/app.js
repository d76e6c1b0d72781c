// onnxd status page: polls /status.json every 2 s and renders node, models, cameras and MQTT.
// Plain DOM (textContent only, never innerHTML with data). After the first successful render
// <body data-loaded="1">; each camera snapshot <img>, once loaded, carries
// data-natural-width / data-natural-height (for headless-browser checks).
"use strict";

const POLL_MS = 2000;
const STATES = { READY: "ok", LOADING: "warn", UNAVAILABLE: "bad" };
const cameraCards = new Map();

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function text(id, value) {
  document.getElementById(id).textContent = value;
}

function dash(value) {
  return value === null || value === undefined || value === "" ? "–" : value;
}

function fixed(value, digits) {
  return typeof value === "number" && isFinite(value) ? value.toFixed(digits) : "–";
}

function millis(value) {
  return fixed(value, typeof value === "number" && value < 10 ? 2 : 1);
}

function duration(secs) {
  if (typeof secs !== "number") return "–";
  const d = Math.floor(secs / 86400), h = Math.floor((secs % 86400) / 3600);
  const m = Math.floor((secs % 3600) / 60), s = Math.floor(secs % 60);
  if (d > 0) return `${d}d ${h}h ${m}m`;
  if (h > 0) return `${h}h ${m}m`;
  return m > 0 ? `${m}m ${s}s` : `${s}s`;
}

function badge(label, kind) {
  return el("span", { class: `badge ${kind || ""}` }, label);
}

function chips(items) {
  if (!items.length) return "none";
  return el("span", { class: "chips" }, ...items.map((item) => el("span", { class: "chip" }, item)));
}

function renderNode(node) {
  text("node-id", node.id || "");
  text("node-version", dash(node.version));
  text("node-uptime", duration(node.uptime_secs));
  text("node-engine", dash(node.engine_library));
  document.getElementById("node-providers").replaceChildren(chips(node.providers || []));
  document.title = node.id ? `onnxd · ${node.id}` : "onnxd";
}

function renderMqtt(mqtt) {
  const state = document.getElementById("mqtt-state");
  if (!mqtt || !mqtt.enabled) {
    state.replaceChildren(badge("DISABLED"));
    text("mqtt-outbox", "–");
    text("mqtt-dropped", "–");
    return;
  }
  state.replaceChildren(mqtt.connected ? badge("CONNECTED", "ok") : badge("DISCONNECTED", "bad"));
  text("mqtt-outbox", `${dash(mqtt.outbox_records)} messages`);
  text("mqtt-dropped", dash(mqtt.dropped));
}

function modelRows(model) {
  const versions = (model.versions || []).join(", ");
  const row = el("tr", model.error ? { class: "has-error" } : null,
    el("td", { class: "name" }, model.name),
    el("td", null, badge(dash(model.state), STATES[model.state])),
    el("td", null, dash(model.version), versions ? el("div", { class: "sub" }, `loaded: ${versions}`) : null),
    el("td", null, dash(model.engine), model.provider ? el("div", { class: "sub" }, model.provider) : null),
    el("td", { class: "num" }, fixed(model.inferences_per_sec, 1)),
    el("td", { class: "num" }, `${millis(model.p50_ms)} / ${millis(model.p99_ms)}`),
    el("td", { class: "mono", title: model.sha256 || "" }, model.sha256 ? model.sha256.slice(0, 12) : "–"));
  if (!model.error) return [row];
  const error = el("tr", { class: "error-row" },
    el("td", { colspan: "7" }, el("div", { class: "error" }, `Last error: ${model.error}`)));
  return [row, error];
}

function renderModels(models) {
  text("models-count", models.length);
  const body = document.getElementById("models");
  if (!models.length) {
    body.replaceChildren(el("tr", null, el("td", { colspan: "7", class: "empty" }, "No models")));
    return;
  }
  body.replaceChildren(...models.flatMap(modelRows));
}

function newCameraCard(name) {
  const img = el("img", { alt: `Latest annotated frame of ${name}` });
  img.hidden = true;
  const placeholder = el("span", null, "No snapshot yet");
  const card = {
    root: el("article", { class: "card camera", "data-camera": name }),
    status: el("span"),
    facts: el("dl", { class: "facts" }),
    img,
    placeholder,
    loading: false,
  };
  img.addEventListener("load", () => {
    card.loading = false;
    img.hidden = false;
    placeholder.hidden = true;
    img.dataset.naturalWidth = img.naturalWidth;
    img.dataset.naturalHeight = img.naturalHeight;
  });
  img.addEventListener("error", () => { card.loading = false; });
  card.root.append(
    el("div", { class: "camera-head" }, el("span", { class: "name" }, name), card.status),
    el("div", { class: "frame" }, img, placeholder),
    card.facts);
  return card;
}

function fact(term, value) {
  return [el("dt", null, term), el("dd", null, value)];
}

function updateCamera(card, camera) {
  card.status.replaceChildren(camera.online ? badge("ONLINE", "ok") : badge("OFFLINE", "bad"));
  const drops = Object.entries(camera.dropped || {}).map(([cause, n]) => `${cause} ${n}`);
  card.facts.replaceChildren(
    ...fact("Model", dash(camera.model)),
    ...fact("Frames/s", `${fixed(camera.fps_in, 1)} in · ${fixed(camera.fps_out, 1)} processed`),
    ...fact("Dropped", chips(drops)),
    ...(camera.detail ? fact("Detail", camera.detail) : []));
  if (camera.snapshot && !card.loading) {
    card.loading = true;
    const separator = camera.snapshot.includes("?") ? "&" : "?";
    card.img.src = `${camera.snapshot}${separator}t=${Date.now()}`;
  }
}

function renderCameras(cameras) {
  text("cameras-count", cameras.length);
  const container = document.getElementById("cameras");
  if (!cameras.length) {
    cameraCards.clear();
    container.replaceChildren(el("p", { class: "empty" }, "No cameras"));
    return;
  }
  const names = new Set(cameras.map((c) => c.name));
  for (const name of [...cameraCards.keys()]) {
    if (!names.has(name)) cameraCards.delete(name);
  }
  const cards = cameras.map((camera) => {
    if (!cameraCards.has(camera.name)) cameraCards.set(camera.name, newCameraCard(camera.name));
    const card = cameraCards.get(camera.name);
    updateCamera(card, camera);
    return card.root;
  });
  container.replaceChildren(...cards);
}

function setLive(ok, message) {
  const live = document.getElementById("live");
  live.className = `live ${ok ? "ok" : "stale"}`;
  live.textContent = message;
}

async function poll() {
  try {
    const response = await fetch("/status.json", { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) {
      location.reload(); // the server answers the page with its login form
      return;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const status = await response.json();
    renderNode(status.node || {});
    renderModels(status.models || []);
    renderCameras(status.cameras || []);
    renderMqtt(status.mqtt);
    setLive(true, `updated ${new Date().toLocaleTimeString()}`);
    document.body.dataset.loaded = "1";
  } catch (error) {
    setLive(false, `no answer (${error.message}); retrying`);
  }
  setTimeout(poll, POLL_MS);
}

poll();
