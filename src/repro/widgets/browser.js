// The feature browser: a block selector, a paged list of features (search, sort) and a
// card for the selected feature with its stats, label, icon and top images, each with the
// feature's heatmap drawn over it. All data is in the model's `data` (see
// repro/features/browser_data.py), so it works the same in a static page with no kernel.
// Live controls (regenerate with the feature on / painted / modulated / off) are shown
// only when the kernel side set `live`.

// Helpers, the heatmap and the live controls come from common.js (in front of this file).

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
    const live = model.get("live") && model.get("live_blocks").includes(model.get("block"));
    card.replaceChildren(head, stats, grid, liveControls(model, model.get("block"), f, live));

    const [h, w] = b.shape;
    heat(row).then((q) => {
      if (gen !== drawn) return;
      top.forEach((k, j) => poolImage(k).then((img) => {
        if (gen === drawn) drawHeat(canvases[j], img, q.subarray(j * h * w, (j + 1) * h * w), h, w, model.get("alpha"));
      }));
    }).catch((e) => console.error("repro feature browser: heatmap", e));
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
  const result = () => showResult(model, card.querySelector(".repro-fb-live"));
  model.on("change:result", result);
  model.on("change:busy", result);
  show();
  host.append(root);
}

export default { render };
