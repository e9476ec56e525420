// A paged image gallery: `per_page` images at a time, prev/next buttons, a "page / pages"
// label and a caption under each image. Everything it shows is in the model's state
// (images as base64), so it renders the same live in Jupyter and in a static page.

function figure(src, caption, width) {
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  img.src = src;
  img.alt = caption;
  fig.style.width = img.style.width = `${width}px`;
  const cap = document.createElement("figcaption");
  cap.textContent = caption;
  fig.append(img, cap);
  return fig;
}

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "repro-gallery";
  root.tabIndex = 0;
  root.innerHTML = `
    <div class="repro-gallery-bar">
      <button type="button" class="repro-gallery-prev" aria-label="previous">&#8249; prev</button>
      <span class="repro-gallery-label"></span>
      <button type="button" class="repro-gallery-next" aria-label="next">next &#8250;</button>
      <span class="repro-gallery-title"></span>
    </div>
    <div class="repro-gallery-page"></div>`;
  const [prev, label, next, title, page] = ["prev", "label", "next", "title", "page"].map(
    (name) => root.querySelector(`.repro-gallery-${name}`),
  );

  const pages = () => Math.max(1, Math.ceil(model.get("images").length / model.get("per_page")));

  function show() {
    const images = model.get("images");
    const captions = model.get("captions");
    const per = model.get("per_page");
    const i = Math.min(Math.max(model.get("index"), 0), pages() - 1);
    const mime = model.get("mime");
    label.textContent = `${i + 1} / ${pages()}`;
    title.textContent = model.get("title");
    const shown = [];
    for (let k = i * per; k < Math.min(images.length, (i + 1) * per); k++) {
      shown.push(figure(`data:${mime};base64,${images[k]}`, captions[k] ?? "", model.get("width")));
    }
    page.replaceChildren(...shown);
  }

  function go(step) {
    model.set("index", (model.get("index") + step + pages()) % pages()); // wraps around
    try {
      model.save_changes();
    } catch {
      // a static page has no kernel to sync with: the change stays in the page
    }
  }

  prev.addEventListener("click", () => go(-1));
  next.addEventListener("click", () => go(+1));
  root.addEventListener("keydown", (e) => {
    if (e.key === "ArrowLeft") go(-1);
    if (e.key === "ArrowRight") go(+1);
  });
  for (const name of ["index", "images", "captions", "per_page", "title", "width"]) {
    model.on(`change:${name}`, show);
  }
  show();
  el.append(root);
}

export default { render };
