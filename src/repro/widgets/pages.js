// Feature pages: a list of a block's features (search by label or id, sort by density,
// purity or causal effect) and, for the selected feature, a page like a token dashboard's:
// density, activation histogram, top images with heatmaps, samples from lower activation
// quantiles, icons and a painted example, mean activation per step, nearest features by
// decoder cosine, label / purity / causal result, RIEBench selections.
// Data are static files written by repro.features.site.FeatureSite, loaded lazily per
// block and page: in a static page through <script> tags (a page opened from disk may not
// fetch() JSON), in a live notebook through the widget's messages. `#block/feature` links
// to a feature; back and forward move between the features shown.

// --- helpers, the heatmap, the live controls --------------------------------------------------
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

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#1a4f8b", "#c2410c", "#15803d", "#7e22ce", "#a16207", "#0e7490"];

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

// Whether a kernel is on the other side to serve the files. Not whether save_changes()
// throws: ipywidgets 8's does nothing without a live comm, so in the static book it returns
// quietly. The widget manager knows: JupyterLab's (and Voila's) has a kernel, the book's
// HTML manager none. A model that cannot sync at all (a standalone page) still counts as static.
function hasKernel(model) {
  const manager = model.widget_manager;
  return Boolean(manager && manager.kernel) && save(model);
}

// --- data sources ----------------------------------------------------------------------------
const waiting = (window.__reproFeaturesWaiting ||= new Map()); // path -> resolve
window.__reproFeatures ||= (path, data) => {
  const resolve = waiting.get(path);
  if (resolve) resolve(data);
};

function staticSource(base) {
  const parts = new Map();
  return {
    part(path) {
      if (!parts.has(path)) {
        parts.set(path, new Promise((resolve, reject) => {
          waiting.set(path, (data) => { waiting.delete(path); resolve(data); });
          const s = document.createElement("script");
          s.src = `${base}/${path}.js`;
          s.onerror = () => reject(new Error(`cannot load ${s.src}`));
          document.head.append(s);
        }));
      }
      return parts.get(path);
    },
    url: async (path) => `${base}/${path}`,
  };
}

function kernelSource(model, mime) {
  const pending = new Map();
  const got = new Map();
  let next = 0;
  model.on("msg:custom", (msg) => {
    const p = pending.get(msg.id);
    if (!p) return;
    pending.delete(msg.id);
    if (msg.error) p.reject(new Error(msg.error));
    else p.resolve(msg.data !== undefined ? msg.data : `data:${mime()};base64,${msg.b64}`);
  });
  const ask = (path) => {
    if (!got.has(path)) {
      got.set(path, new Promise((resolve, reject) => {
        const id = ++next;
        pending.set(id, { resolve, reject });
        model.send({ id, want: path });
      }));
    }
    return got.get(path);
  };
  return { part: ask, url: ask };
}

// --- drawing ---------------------------------------------------------------------------------
function histogram(hist, spec) {
  const W = 320, H = 90, pad = 16;
  const box = svg("svg", { class: "repro-fp-hist", width: W, height: H + pad, viewBox: `0 0 ${W} ${H + pad}` });
  const n = hist.counts.length;
  const peak = Math.max(1, ...hist.counts);
  const bw = (W - 2) / Math.max(n, 1);
  const edge = (i) => 2 ** ((spec.low_exp * spec.per_octave + hist.lo + i) / spec.per_octave);
  hist.counts.forEach((c, i) => {
    const h = Math.max(c ? 1 : 0, Math.round((H * c) / peak));
    const r = svg("rect", { x: 1 + i * bw, y: H - h, width: Math.max(1, bw - 1), height: h, fill: "#1a4f8b" });
    r.append(svg("title"));
    r.firstChild.textContent = `${fmt(edge(i))}–${fmt(edge(i + 1))}: ${c} positions`;
    box.append(r);
  });
  const lab = (x, anchor, text) => {
    const t = svg("text", { x, y: H + pad - 3, "font-size": 10, "text-anchor": anchor, fill: "#444" });
    t.textContent = text;
    box.append(t);
  };
  if (n) {
    lab(1, "start", fmt(edge(0)));
    lab(W - 1, "end", fmt(edge(n)));
    lab(W / 2, "middle", "activation when firing (log scale)");
  }
  return box;
}

function stepChart(steps) {
  const W = 320, H = 110, padL = 34, padB = 16;
  const box = svg("svg", { class: "repro-fp-steps", width: W, height: H + padB, viewBox: `0 0 ${W} ${H + padB}` });
  const series = [];
  for (const [setting, halves] of Object.entries(steps)) {
    for (const [half, ys] of Object.entries(halves)) series.push({ name: half === "all" ? setting : `${setting} (${half})`, ys });
  }
  const top = Math.max(1e-9, ...series.flatMap((s) => s.ys));
  series.forEach((s, k) => {
    const n = s.ys.length;
    const pts = s.ys.map((y, i) => `${padL + (n > 1 ? (i * (W - padL - 4)) / (n - 1) : 0)},${H - (H - 6) * (y / top)}`);
    box.append(svg("polyline", { points: pts.join(" "), fill: "none", stroke: COLOURS[k % COLOURS.length], "stroke-width": 1.5 }));
    const t = svg("text", { x: W - 4, y: 12 + 12 * k, "font-size": 10, "text-anchor": "end", fill: COLOURS[k % COLOURS.length] });
    t.textContent = s.name;
    box.append(t);
  });
  const ax = (y, text) => {
    const t = svg("text", { x: padL - 3, y, "font-size": 10, "text-anchor": "end", fill: "#444" });
    t.textContent = text;
    box.append(t);
  };
  ax(10, fmt(top, 2));
  ax(H, "0");
  const t = svg("text", { x: (W + padL) / 2, y: H + padB - 3, "font-size": 10, "text-anchor": "middle", fill: "#444" });
  t.textContent = "denoising step (first to last)";
  box.append(t);
  return box;
}

function render({ model, el: host }) {
  const root = el("div", "repro-fb repro-fp");
  root.innerHTML = `
    <div class="repro-fb-title"></div>
    <div class="repro-fb-bar">
      <label>block <select class="repro-fp-block"></select></label>
      <input class="repro-fp-search" type="search" placeholder="label or feature id" aria-label="search">
      <label>sort <select class="repro-fp-sort"></select></label>
      <button type="button" class="repro-fp-prev" aria-label="previous page">&#8249; prev</button>
      <span class="repro-fb-page repro-fp-page"></span>
      <button type="button" class="repro-fp-next" aria-label="next page">next &#8250;</button>
    </div>
    <div class="repro-fb-main">
      <ol class="repro-fb-list repro-fp-list"></ol>
      <div class="repro-fb-card repro-fp-card"><div class="repro-fb-empty">loading…</div></div>
    </div>`;
  const q = (name) => root.querySelector(`.repro-fp-${name}`);
  const [title, blockSel, search, sortSel, prev, pageLabel, next, list, card] =
    [root.querySelector(".repro-fb-title"), ...["block", "search", "sort", "prev", "page", "next", "list", "card"].map(q)];
  const kernel = hasKernel(model);
  let manifest = null;
  const source = kernel ? kernelSource(model, () => (manifest ? manifest.mime : "image/webp")) : staticSource(model.get("src"));
  const ui = { query: "", sort: "id", page: 0 };
  let drawn = 0;

  const fail = (what) => (e) => {
    console.error(`repro feature pages: ${what}`, e);
    card.replaceChildren(el("div", "repro-fb-empty", `could not load ${what}`));
  };

  function rows(index) {
    const query = ui.query.trim().toLowerCase();
    let out = index.ids.map((_, i) => i);
    if (query) {
      const asId = /^\d+$/.test(query) ? Number(query) : null;
      out = out.filter((i) => index.ids[i] === asId || ((index.label || [])[i] || "").toLowerCase().includes(query));
    }
    const key = { freq: index.freq, dens: index.dens, purity: index.purity, causal: index.causal }[ui.sort];
    if (key) {
      const v = (i) => (key[i] === null || key[i] === undefined ? -Infinity : key[i]);
      out.sort((i, j) => v(j) - v(i) || index.ids[i] - index.ids[j]);
    } else {
      out.sort((i, j) => index.ids[i] - index.ids[j]);
    }
    return out;
  }

  // the feature shown: `#block/feature` in a static page (history entries), else the model
  function current() {
    if (!kernel) {
      const m = /^#([^/]+)\/(\d+)$/.exec(decodeURIComponent(location.hash));
      if (m && manifest.blocks[m[1]]) return { block: m[1], feature: Number(m[2]) };
    }
    return { block: model.get("block") || Object.keys(manifest.blocks)[0], feature: model.get("feature") };
  }

  function go(block, feature) {
    if (!kernel) {
      const hash = `#${block}/${feature}`;
      if (location.hash !== hash) {
        location.hash = hash; // a history entry; hashchange shows it
        return;
      }
    } else {
      model.set({ block, feature });
      save(model);
    }
    show();
  }

  async function show() {
    const gen = ++drawn;
    const { block, feature } = current();
    const index = await source.part(`${block}/index`);
    if (gen !== drawn) return;
    blockSel.value = block;
    const r = rows(index);
    const per = Math.max(1, model.get("page_size"));
    const pages = Math.max(1, Math.ceil(r.length / per));
    const pos = r.findIndex((i) => index.ids[i] === feature);
    if (pos >= 0) ui.page = Math.floor(pos / per);
    ui.page = Math.min(Math.max(ui.page, 0), pages - 1);
    const shown = pos >= 0 || index.ids.includes(feature) ? feature : index.ids[r[ui.page * per]];
    pageLabel.textContent = `page ${ui.page + 1} / ${pages} · ${r.length} of ${index.ids.length} live features`;
    const items = r.slice(ui.page * per, (ui.page + 1) * per).map((i) => {
      const f = index.ids[i];
      const li = el("li", f === shown ? "repro-fb-item repro-fb-selected" : "repro-fb-item");
      li.dataset.feature = f;
      const metric = ui.sort === "purity" && index.purity ? fmt(index.purity[i], 2)
        : ui.sort === "causal" && index.causal ? fmt(index.causal[i], 2)
          : ui.sort === "dens" && index.dens ? pct(index.dens[i]) : pct((index.freq || [])[i]);
      li.append(el("span", "repro-fb-item-id", `#${f}`), el("span", "repro-fb-item-label", (index.label || [])[i] || ""),
        el("span", "repro-fb-item-freq", metric));
      li.addEventListener("click", () => go(block, f));
      return li;
    });
    list.replaceChildren(...items);
    if (!items.length) list.append(el("li", "repro-fb-empty", "no feature matches"));
    if (shown === undefined) {
      card.replaceChildren(el("div", "repro-fb-empty", "no feature selected"));
      return;
    }
    const size = manifest.blocks[block].page_size;
    const page = await source.part(`${block}/p${Math.floor(shown / size)}`);
    if (gen !== drawn) return;
    const rec = page.features[String(shown)];
    if (!rec) {
      card.replaceChildren(el("div", "repro-fb-empty", `feature ${shown} of ${block} never fired: no page`));
      card.dataset.feature = String(shown);
      return;
    }
    showCard(block, rec, gen);
  }

  function section(name, cls) {
    const s = el("section", `repro-fp-section ${cls || ""}`);
    s.append(el("h4", "repro-fp-h", name));
    return s;
  }

  function imageRow(block, group, gen, caption) {
    const side = Math.round(Math.max(64, manifest.thumb) * 1.25);
    const row = el("div", "repro-fb-tops");
    const canvases = group.img.map((id, j) => {
      const fig = el("figure", "repro-fb-top");
      const canvas = el("canvas");
      canvas.width = canvas.height = side;
      canvas.title = `image ${id}, max ${fmt(group.val[j])}`;
      fig.append(canvas, el("figcaption", "", caption(id, j)));
      row.append(fig);
      return canvas;
    });
    if (!group.img.length) row.append(el("div", "repro-fb-empty", "none"));
    if (group.heat) {
      const [h, w] = group.shape;
      inflate(group.heat).then((qm) => group.img.forEach((id, j) => source.url(`img/${id}.${manifest.ext}`).then((src) => {
        const img = new Image();
        img.onload = () => {
          if (gen === drawn) drawHeat(canvases[j], img, qm.subarray(j * h * w, (j + 1) * h * w), h, w, model.get("alpha"));
        };
        img.src = src;
      }))).catch(fail("heatmaps"));
    }
    return row;
  }

  function picture(path, caption, cls) {
    const fig = el("figure", cls);
    const img = el("img");
    img.alt = caption;
    source.url(path).then((src) => { img.src = src; }).catch(fail(path));
    fig.append(img, el("figcaption", "", caption));
    return fig;
  }

  function showCard(block, rec, gen) {
    card.dataset.feature = String(rec.f);
    card.dataset.block = block;
    const head = el("div", "repro-fb-head");
    head.append(el("span", "repro-fb-fid", `feature ${rec.f}`));
    if (rec.label) head.append(el("span", "repro-fb-label", rec.label));
    else head.append(el("span", "repro-fp-note", rec.label_note));
    const stats = el("div", "repro-fb-stats");
    const parts = [block, `fires on ${pct(rec.freq)} of positions`];
    if (rec.dens !== undefined) parts.push(`in ${pct(rec.dens)} of images`);
    parts.push(`mean ${fmt(rec.mean)}`, `std ${fmt(rec.std)}`);
    if (rec.purity !== undefined && rec.purity !== null) parts.push(`purity ${fmt(rec.purity, 2)}`);
    if (rec.f1 !== undefined && rec.f1 !== null) parts.push(`F1 ${fmt(rec.f1, 2)}`);
    if (rec.label_score !== undefined && rec.label_score !== null) parts.push(`label score ${fmt(rec.label_score, 2)}`);
    stats.textContent = parts.join(" · ");
    const out = [head, stats];

    if (rec.hist) {
      const s = section("Activation histogram", "repro-fp-histogram");
      s.append(histogram(rec.hist, manifest.hist));
      out.push(s);
    }
    const top = section("Top images", "repro-fp-top");
    top.append(imageRow(block, { ...rec.top, shape: rec.shape }, gen, (id, j) => `${fmt(rec.top.val[j])} · #${id}`));
    out.push(top);
    if (rec.bands) {
      const s = section("Weaker activations: samples from lower quantiles", "repro-fp-bands");
      for (const band of [...rec.bands].reverse()) {
        const row = el("div", "repro-fp-band");
        row.append(el("div", "repro-fp-band-name", `quantile ${fmt(100 * band.q[0], 2)}–${fmt(100 * band.q[1], 2)}%`),
          imageRow(block, { ...band, shape: rec.shape }, gen, (id, j) => `${fmt(band.val[j])} · #${id}`));
        s.append(row);
      }
      out.push(s);
    }
    if (rec.icons || rec.painted) {
      const s = section("Switched on", "repro-fp-on");
      const row = el("div", "repro-fb-tops");
      for (const icon of rec.icons || []) row.append(picture(icon.src, `icon, s = ${icon.s}`, "repro-fb-icon"));
      if (rec.painted) {
        row.append(picture(rec.painted.plain, `“${rec.painted.prompt}”`, "repro-fp-paint"),
          picture(rec.painted.edited, `painted (${rec.painted.region})`, "repro-fp-paint"));
      }
      s.append(row);
      out.push(s);
    }
    if (rec.steps) {
      const s = section("Mean activation per denoising step", "repro-fp-transfer");
      s.append(stepChart(rec.steps));
      out.push(s);
    }
    if (rec.nbr) {
      const s = section("Nearest features by decoder cosine", "repro-fp-nbrs");
      const row = el("div", "repro-fp-nbr-blocks");
      for (const [other, list_] of Object.entries(rec.nbr)) {
        const col = el("div", "repro-fp-nbr");
        col.append(el("div", "repro-fp-nbr-block", other === block ? `${other} (own block)` : other));
        const ul = el("ul");
        for (const [g, c] of list_) {
          const li = el("li");
          const a = el("a", "repro-fp-link", `#${g}`);
          a.href = `#${other}/${g}`;
          a.addEventListener("click", (e) => { e.preventDefault(); go(other, g); });
          li.append(a, el("span", "repro-fp-cos", ` ${fmt(c, 2)}`));
          ul.append(li);
        }
        col.append(ul);
        row.append(col);
      }
      s.append(row);
      out.push(s);
    }
    if (rec.causal) {
      const c = rec.causal;
      const s = section("Causal test (ShapesWorld oracle)", "repro-fp-causal");
      s.append(el("div", "", `switching it on makes the oracle read “${c.label}” with the rest kept in ${pct(c.on)} of ` +
        `scenes at s = ${c.s} (random direction: ${pct(c.control_on)}` + (c.p != null ? `; paired p = ${fmt(c.p, 3)})` : ")") +
        (c.off != null ? `; switching it off removes it in ${pct(c.off)}` : "")));
      out.push(s);
    }
    out.push(riebench(block, rec.f, gen));
    out.push(liveControls(model, block, rec.f, kernel && model.get("live") && model.get("live_blocks").includes(block)));
    card.replaceChildren(...out);
  }

  // RIEBench's counts: their own file per block, written by 06_riebench after these pages
  function riebench(block, f, gen) {
    const s = section("RIEBench: times selected, per category", "repro-fp-riebench");
    const body = el("div", "repro-fb-empty", "loading…");
    s.append(body);
    const say = (text) => body.replaceWith(el("div", "repro-fp-note repro-fp-rie-note", text));
    source.part(`${block}/riebench`).then((r) => {
      if (gen !== drawn) return;
      if (!r.ran) {
        say(r.note);
        return;
      }
      const cats = Object.keys(r.edits);
      const times = (cat) => ((r.counts[cat] || {})[String(f)] || 0);
      const total = cats.reduce((n, cat) => n + times(cat), 0);
      const edits = cats.reduce((n, cat) => n + r.edits[cat], 0);
      const what = `${r.method === "transport" ? "joint transport" : r.method}${r.k ? `, k = ${r.k}` : ""}${r.sae ? `, ${r.sae}` : ""}`;
      const head = el("div", "repro-fp-rie-total", `selected ${total} times in ${edits} edits (${what})`);
      head.dataset.total = String(total);
      const t = el("table", "repro-fp-table");
      const hr = el("tr");
      hr.append(el("th", "", "category"), el("th", "", "times selected"), el("th", "", "edits run"));
      t.append(hr);
      for (const cat of cats) {
        const tr = el("tr");
        tr.append(el("td", "", cat), el("td", "", String(times(cat))), el("td", "", String(r.edits[cat])));
        t.append(tr);
      }
      body.replaceWith(head, t);
    }, () => say("RIEBench has not run: no counts beside these pages (06_riebench writes them)"));
    return s;
  }

  // --- events --------------------------------------------------------------------------------
  options(sortSel, ["id", "freq", "dens", "purity", "causal"],
    ["feature id", "density (positions)", "density (images)", "purity", "causal effect"]);
  blockSel.addEventListener("change", async () => {
    ui.page = 0;
    ui.query = search.value = "";
    const index = await source.part(`${blockSel.value}/index`);
    go(blockSel.value, index.ids[0]);
  });
  const first = async () => {
    const { block } = current();
    const index = await source.part(`${block}/index`);
    const r = rows(index);
    if (r.length) go(block, index.ids[r[0]]);
    else show();
  };
  search.addEventListener("input", () => { ui.query = search.value; ui.page = 0; first(); });
  sortSel.addEventListener("change", () => { ui.sort = sortSel.value; ui.page = 0; first(); });
  const turn = async (step) => {
    const { block } = current();
    const index = await source.part(`${block}/index`);
    const r = rows(index);
    const per = Math.max(1, model.get("page_size"));
    const pages = Math.max(1, Math.ceil(r.length / per));
    const p = (ui.page + step + pages) % pages;
    if (r[p * per] !== undefined) go(block, index.ids[r[p * per]]);
  };
  prev.addEventListener("click", () => turn(-1));
  next.addEventListener("click", () => turn(+1));
  if (!kernel) window.addEventListener("hashchange", () => show().catch(fail("the feature")));
  const result = () => showResult(model, card.querySelector(".repro-fb-live"));
  model.on("change:result", result);
  model.on("change:busy", result);
  host.append(root);

  source.part("manifest").then((m) => {
    manifest = m;
    title.textContent = model.get("title") || m.title;
    title.hidden = !title.textContent;
    const blocks = Object.keys(m.blocks);
    options(blockSel, blocks);
    const sorts = ["id", "freq", "dens", "purity", "causal"];
    sortSel.value = ui.sort = sorts.includes(model.get("sort")) ? model.get("sort") : "id";
    return show();
  }).catch(fail("the feature pages"));
}

export default { render };
