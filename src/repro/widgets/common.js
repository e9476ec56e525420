// Shared by the feature browser (browser.js) and the feature pages (pages.js): small DOM
// helpers, the heatmap drawn over an image, and the live controls whose images come from
// the kernel. The Python side puts this file in front of each widget's own code
// (repro.widgets.browser.esm), so both see these names at the top level of one module.

// a "hot" colour map: even its low end stands out over a (muted) photograph
const HOT = [[110, 0, 20], [200, 20, 10], [245, 90, 0], [255, 170, 0], [255, 235, 60], [255, 255, 210]];

// 256-entry RGB lookup table interpolated from the stops above
const LUT = (() => {
  const lut = new Uint8Array(256 * 3);
  for (let v = 0; v < 256; v++) {
    const x = (v / 255) * (HOT.length - 1);
    const i = Math.min(Math.floor(x), HOT.length - 2);
    const f = x - i;
    for (let c = 0; c < 3; c++) lut[v * 3 + c] = Math.round(HOT[i][c] * (1 - f) + HOT[i + 1][c] * f);
  }
  return lut;
})();

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(x, digits = 3) {
  if (x === undefined || x === null || Number.isNaN(x)) return "–";
  if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e4)) return x.toExponential(digits - 1);
  return Number(x.toPrecision(digits)).toString();
}

const pct = (x) => (x === undefined || x === null ? "–" : `${fmt(100 * x, 3)}%`);

// zlib stream (Python's zlib.compress), base64 -> Uint8Array, with the browser's own inflater
async function inflate(b64) {
  const s = atob(b64);
  const raw = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) raw[i] = s.charCodeAt(i);
  const stream = new Blob([raw]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function options(select, values, labels) {
  select.replaceChildren(...values.map((v, i) => {
    const o = el("option", "", labels ? labels[i] : String(v));
    o.value = String(v);
    return o;
  }));
}

// Sync the model to the kernel. Without one the change stays in the page: the static book's
// widget manager (ipywidgets 8) then does nothing, older managers and test pages throw.
// Returns false when it threw.
function save(model) {
  try {
    model.save_changes();
    return true;
  } catch {
    return false;
  }
}

// Draw `img` muted on `canvas`, the quantised map q (uint8 [h * w], row-major) over it in the
// hot colours, each map relative to its own maximum (the caption gives the value).
function drawHeat(canvas, img, q, h, w, alpha) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width;
  const H = Math.round((W * img.naturalHeight) / img.naturalWidth) || W;
  canvas.height = H;
  ctx.imageSmoothingEnabled = true;
  // the photo muted under the heatmap, so the colour map stands out from the image's colours
  ctx.filter = alpha > 0 ? `saturate(${1 - 0.7 * alpha}) brightness(${1 - 0.25 * alpha})` : "none";
  ctx.drawImage(img, 0, 0, W, H);
  ctx.filter = "none";
  if (alpha <= 0) return;
  const small = document.createElement("canvas");
  small.width = w;
  small.height = h;
  const pix = small.getContext("2d").createImageData(w, h);
  let peak = 1;
  for (let p = 0; p < h * w; p++) peak = Math.max(peak, q[p]);
  for (let p = 0; p < h * w; p++) {
    const v = Math.round((255 * q[p]) / peak);
    pix.data[4 * p] = LUT[3 * v];
    pix.data[4 * p + 1] = LUT[3 * v + 1];
    pix.data[4 * p + 2] = LUT[3 * v + 2];
    pix.data[4 * p + 3] = v ? Math.round(255 * alpha * (0.45 + 0.55 * (v / 255))) : 0; // zero: transparent
  }
  small.getContext("2d").putImageData(pix, 0, 0);
  ctx.drawImage(small, 0, 0, W, H);
  canvas.dataset.drawn = "heat"; // pixels of images opened from disk (file: URLs) cannot be read back: say it was drawn
}

// --- live mode: the kernel regenerates with the feature on / painted / modulated / off ------
let lastRequest = 0;

// The controls of one feature's card (hidden unless `shown`). "generate" writes `request`;
// the kernel answers in `result` and `showResult` puts it under the controls.
function liveControls(model, block, feature, shown) {
  const box = el("div", "repro-fb-live");
  box.dataset.block = block;
  box.dataset.feature = String(feature);
  box.hidden = !shown;
  if (!shown) return box;
  box.innerHTML = `
    <div class="repro-fb-live-bar">
      <select class="repro-fb-action"></select>
      <label class="repro-fb-opt-prompt">prompt <input class="repro-fb-prompt" type="text"></label>
      <label class="repro-fb-opt-seed">seed <input class="repro-fb-seed" type="number" step="1"></label>
      <label class="repro-fb-opt-strength">strength &times; mean&middot;k <select class="repro-fb-strength"></select></label>
      <label class="repro-fb-opt-region">region <select class="repro-fb-region"></select></label>
      <label class="repro-fb-opt-factor">s <select class="repro-fb-factor"></select></label>
      <button type="button" class="repro-fb-go">generate</button>
      <span class="repro-fb-status"></span>
    </div>
    <div class="repro-fb-result"></div>`;
  const get = (name) => box.querySelector(`.repro-fb-${name}`);
  options(get("action"), ["icon", "paint", "modulate", "off"],
    ["icon (empty prompt)", "paint into a region", "modulate where it fires", "switch off"]);
  options(get("strength"), [0.5, 1, 1.5]);
  get("strength").value = "1";
  options(get("region"), ["all", "left", "right", "top", "bottom", "centre"]);
  options(get("factor"), [-10, -5, 5, 10]);
  get("factor").value = "5";
  get("prompt").value = model.get("prompt");
  get("seed").value = String(model.get("seed"));
  const toggle = () => { // only the settings the chosen action reads
    const a = get("action").value;
    box.querySelector(".repro-fb-opt-prompt").hidden = a === "icon";
    box.querySelector(".repro-fb-opt-strength").hidden = !(a === "icon" || a === "paint");
    box.querySelector(".repro-fb-opt-region").hidden = a !== "paint";
    box.querySelector(".repro-fb-opt-factor").hidden = a !== "modulate";
  };
  get("action").addEventListener("change", toggle);
  toggle();
  get("go").addEventListener("click", () => {
    const request = {
      id: ++lastRequest + Date.now(), block, feature, action: get("action").value,
      strength: Number(get("strength").value), region: get("region").value, factor: Number(get("factor").value),
      prompt: get("prompt").value, seed: Number(get("seed").value) || 0,
    };
    model.set({ prompt: request.prompt, seed: request.seed, request });
    get("status").textContent = "generating…";
    save(model);
  });
  showResult(model, box);
  return box;
}

// The kernel's latest `result` under the controls `box`, if it is for the box's feature.
function showResult(model, box) {
  if (!box || box.hidden) return;
  const r = model.get("result") || {};
  box.querySelector(".repro-fb-status").textContent = model.get("busy") ? "generating…" : r.error ? `error: ${r.error}` : "";
  const out = box.querySelector(".repro-fb-result");
  if (!r.image || r.block !== box.dataset.block || String(r.feature) !== box.dataset.feature) {
    out.replaceChildren();
    return;
  }
  const fig = (b64, caption) => {
    const f = el("figure");
    const img = el("img");
    img.src = `data:${r.mime};base64,${b64}`;
    img.alt = caption;
    f.append(img, el("figcaption", "", caption));
    return f;
  };
  const what = r.action === "icon" ? "empty prompt" : `“${r.prompt}”`;
  out.replaceChildren(fig(r.plain, `${what}, seed ${r.seed}`), fig(r.image, `${r.action}: feature ${r.feature}`));
}
