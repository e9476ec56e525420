// The feature browser: a block selector, a paged list of features (search, sort) and a
// card for the selected feature with its stats, label, icon and top images, each with the
// feature's heatmap drawn over it. All data is in the model's `data` (see
// repro/features/browser_data.py), so it works the same in a static page with no kernel.
// Live controls (regenerate with the feature on / painted / modulated / off) are shown
// only when the kernel side set `live`.

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
  if (x === undefined || x === null) return "–";
  if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e4)) return x.toExponential(digits - 1);
  return Number(x.toPrecision(digits)).toString();
}

function pct(x) {
  return x === undefined ? "–" : `${fmt(100 * x, 3)}%`;
}

function bytes(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

// zlib stream (Python's zlib.compress) -> Uint8Array, with the browser's own inflater
async function inflate(b64) {
  const stream = new Blob([bytes(b64)]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function save(model) {
  try {
    model.save_changes();
  } catch {
    // a static page has no kernel to sync with: the change stays in the page
  }
}

function options(select, values, labels) {
  select.replaceChildren(...values.map((v, i) => {
    const o = el("option", "", labels ? labels[i] : String(v));
    o.value = String(v);
    return o;
  }));
}

function render({ model, el: host }) {
  const root = el("div", "repro-fb");
  root.tabIndex = 0;
  root.innerHTML = `
    <div class="repro-fb-title"></div>
    <div class="repro-fb-bar">
      <label>block <select class="repro-fb-block"></select></label>
      <input class="repro-fb-search" type="search" placeholder="feature id or label" aria-label="search">
      <label>sort <select class="repro-fb-sort"></select></label>
      <button type="button" class="repro-fb-prev" aria-label="previous page">&#8249; prev</button>
      <span class="repro-fb-page"></span>
      <button type="button" class="repro-fb-next" aria-label="next page">next &#8250;</button>
      <label>heatmap <input class="repro-fb-alpha" type="range" min="0" max="1" step="0.05"></label>
    </div>
    <div class="repro-fb-main">
      <ol class="repro-fb-list"></ol>
      <div class="repro-fb-card"></div>
    </div>`;
  const q = (name) => root.querySelector(`.repro-fb-${name}`);
  const [title, blockSel, search, sortSel, prev, pageLabel, next, alphaIn, list, card] =
    ["title", "block", "search", "sort", "prev", "page", "next", "alpha", "list", "card"].map(q);
  options(sortSel, ["freq", "label", "id"], ["frequency", "label", "feature id"]);

  const ui = { query: "", sort: "freq", page: 0 };
  const images = new Map(); // pool index -> Promise<HTMLImageElement>
  const heats = new Map(); // "block/row" -> Promise<Uint8Array>
  let drawn = 0; // generation counter: late async draws of an old card are dropped

  const data = () => model.get("data");
  const blockData = () => data().blocks[model.get("block")];

  function poolImage(k) {
    if (!images.has(k)) {
      images.set(k, new Promise((resolve, reject) => {
        const img = new Image();
        img.onload = () => resolve(img);
        img.onerror = reject;
        img.src = `data:${data().mime};base64,${data().pool[k]}`;
      }));
    }
    return images.get(k);
  }

  function heat(row) {
    const key = `${model.get("block")}/${row}`;
    if (!heats.has(key)) heats.set(key, inflate(blockData().heat[row]));
    return heats.get(key);
  }

  // rows (indices into the block's arrays) matching the search, in the chosen order
  function rows() {
    const b = blockData();
    const labels = b.label || [];
    const query = ui.query.trim().toLowerCase();
    let out = b.ids.map((_, i) => i);
    if (query) {
      const asId = /^\d+$/.test(query) ? Number(query) : null;
      out = out.filter((i) => b.ids[i] === asId || (labels[i] || "").toLowerCase().includes(query));
    }
    if (ui.sort === "label") {
      out.sort((i, j) => ((labels[i] || "\uffff").localeCompare(labels[j] || "\uffff")) || b.ids[i] - b.ids[j]);
    } else if (ui.sort === "id") {
      out.sort((i, j) => b.ids[i] - b.ids[j]);
    } else {
      out.sort((i, j) => b.freq[j] - b.freq[i] || b.ids[i] - b.ids[j]);
    }
    return out;
  }

  const perPage = () => Math.max(1, model.get("page_size"));
  const pages = (n) => Math.max(1, Math.ceil(n / perPage()));

  function select(feature) {
    model.set("feature", feature);
    save(model);
  }

  function goPage(step) {
    const r = rows();
    ui.page = (ui.page + step + pages(r.length)) % pages(r.length);
    const first = r[ui.page * perPage()];
    select(first === undefined ? -1 : blockData().ids[first]);
    show();
  }

  function show() {
    const b = blockData();
    title.textContent = model.get("title");
    title.hidden = !model.get("title");
    const blocks = Object.keys(data().blocks);
    if (blockSel.options.length !== blocks.length) options(blockSel, blocks);
    blockSel.value = model.get("block");
    sortSel.value = ui.sort;
    alphaIn.value = String(model.get("alpha"));
    const r = rows();
    const n = pages(r.length);
    ui.page = Math.min(Math.max(ui.page, 0), n - 1);
    let feature = model.get("feature");
    let selected = r.find((i) => b.ids[i] === feature);
    if (selected !== undefined) {
      ui.page = Math.floor(r.indexOf(selected) / perPage()); // the page that holds it
    } else {
      selected = r[ui.page * perPage()];
      feature = selected === undefined ? -1 : b.ids[selected];
    }
    pageLabel.textContent = `page ${ui.page + 1} / ${n} · ${r.length} of ${b.n_live} live features`;
    const items = r.slice(ui.page * perPage(), (ui.page + 1) * perPage()).map((i) => {
      const li = el("li", i === selected ? "repro-fb-item repro-fb-selected" : "repro-fb-item");
      li.dataset.feature = b.ids[i];
      li.title = `feature ${b.ids[i]}${b.label && b.label[i] ? `: ${b.label[i]}` : ""}`;
      li.append(el("span", "repro-fb-item-id", `#${b.ids[i]}`),
        el("span", "repro-fb-item-label", (b.label && b.label[i]) || ""),
        el("span", "repro-fb-item-freq", pct(b.freq[i])));
      li.addEventListener("click", () => select(b.ids[i]));
      return li;
    });
    list.replaceChildren(...items);
    if (!items.length) list.append(el("li", "repro-fb-empty", "no feature matches"));
    showCard(selected);
  }

  function showCard(row) {
    const gen = ++drawn;
    const b = blockData();
    if (row === undefined) {
      card.replaceChildren(el("div", "repro-fb-empty", "no feature selected"));
      card.dataset.feature = "";
      return;
    }
    const f = b.ids[row];
    card.dataset.feature = String(f);
    const head = el("div", "repro-fb-head");
    head.append(el("span", "repro-fb-fid", `feature ${f}`));
    if (b.label && b.label[row]) head.append(el("span", "repro-fb-label", b.label[row]));
    const stats = el("div", "repro-fb-stats");
    const parts = [
      `${model.get("block")}`, `fires on ${pct(b.freq[row])} of positions`,
      `mean ${fmt(b.mean[row])}`, `std ${fmt(b.std[row])}`,
    ];
    if (b.purity) parts.push(`purity ${fmt(b.purity[row], 2)}`);
    stats.textContent = parts.join(" · ");

    const grid = el("div", "repro-fb-tops");
    const side = Math.round(Math.max(64, data().thumb) * 1.25);
    const icon = b.icon && b.icon[String(f)];
    if (icon) {
      const fig = el("figure", "repro-fb-icon");
      const img = el("img");
      img.src = `data:${data().mime};base64,${icon}`;
      img.alt = `icon of feature ${f}`;
      img.style.width = `${side}px`;
      fig.append(img, el("figcaption", "", "icon"));
      grid.append(fig);
    }
    const top = b.top[row];
    const canvases = top.map((k, j) => {
      const fig = el("figure", "repro-fb-top");
      const canvas = el("canvas");
      canvas.width = canvas.height = side;
      canvas.title = `image ${data().pool_ids[k]}, max ${fmt(b.val[row][j])}`;
      fig.append(canvas, el("figcaption", "", `${fmt(b.val[row][j])} · #${data().pool_ids[k]}`));
      grid.append(fig);
      return canvas;
    });
    if (!top.length) grid.append(el("div", "repro-fb-empty", "no top images kept"));
    card.replaceChildren(head, stats, grid, liveControls(f));

    const [h, w] = b.shape;
    heat(row).then((q) => {
      if (gen !== drawn) return;
      top.forEach((k, j) => poolImage(k).then((img) => {
        if (gen === drawn) draw(canvases[j], img, q.subarray(j * h * w, (j + 1) * h * w), h, w);
      }));
    }).catch((e) => console.error("repro feature browser: heatmap", e));
  }

  function draw(canvas, img, q, h, w) {
    const ctx = canvas.getContext("2d");
    const W = canvas.width;
    const H = Math.round((W * img.naturalHeight) / img.naturalWidth) || W;
    canvas.height = H;
    ctx.imageSmoothingEnabled = true;
    const alpha = model.get("alpha");
    // the photo muted under the heatmap, so the colour map stands out from the image's colours
    ctx.filter = alpha > 0 ? `saturate(${1 - 0.7 * alpha}) brightness(${1 - 0.25 * alpha})` : "none";
    ctx.drawImage(img, 0, 0, W, H);
    ctx.filter = "none";
    if (alpha <= 0) return;
    const small = document.createElement("canvas");
    small.width = w;
    small.height = h;
    const pix = small.getContext("2d").createImageData(w, h);
    let peak = 1; // each image's map is shown relative to its own maximum (the caption gives it)
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
  }

  // --- live mode ------------------------------------------------------------------------
  let lastRequest = 0;

  function liveControls(f) {
    const box = el("div", "repro-fb-live");
    const liveHere = model.get("live") && model.get("live_blocks").includes(model.get("block"));
    box.hidden = !liveHere;
    if (!liveHere) return box;
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
    const toggle = () => {
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
        id: ++lastRequest + Date.now(), block: model.get("block"), feature: f,
        action: get("action").value, strength: Number(get("strength").value),
        region: get("region").value, factor: Number(get("factor").value),
        prompt: get("prompt").value, seed: Number(get("seed").value) || 0,
      };
      model.set("prompt", request.prompt);
      model.set("seed", request.seed);
      model.set("request", request);
      get("status").textContent = "generating…";
      save(model);
    });
    showResult(box);
    return box;
  }

  function showResult(box = card.querySelector(".repro-fb-live")) {
    if (!box || box.hidden) return;
    const r = model.get("result") || {};
    const status = box.querySelector(".repro-fb-status");
    const out = box.querySelector(".repro-fb-result");
    status.textContent = model.get("busy") ? "generating…" : r.error ? `error: ${r.error}` : "";
    if (!r.image || r.block !== model.get("block") || r.feature !== model.get("feature")) {
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

  // --- events ----------------------------------------------------------------------------
  blockSel.addEventListener("change", () => {
    const block = blockSel.value; // read first: the change of `feature` redraws the selector
    ui.page = 0;
    ui.query = search.value = "";
    model.set({ feature: -1, block });
    save(model);
  });
  search.addEventListener("input", () => {
    ui.query = search.value;
    ui.page = 0;
    const first = rows()[0];
    select(first === undefined ? -1 : blockData().ids[first]);
    show();
  });
  sortSel.addEventListener("change", () => {
    ui.sort = sortSel.value;
    ui.page = 0;
    show();
  });
  alphaIn.addEventListener("input", () => {
    model.set("alpha", Number(alphaIn.value));
    save(model);
  });
  prev.addEventListener("click", () => goPage(-1));
  next.addEventListener("click", () => goPage(+1));
  root.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
    if (e.key === "ArrowLeft") goPage(-1);
    if (e.key === "ArrowRight") goPage(+1);
  });
  for (const name of ["data", "block", "feature", "page_size", "title", "alpha", "live", "live_blocks"]) {
    model.on(`change:${name}`, show);
  }
  model.on("change:result", () => showResult());
  model.on("change:busy", () => showResult());
  show();
  host.append(root);
}

export default { render };
