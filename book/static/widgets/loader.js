// Makes the book's widgets work offline. Loaded after require.js and before embed-amd.js
// (see nb_ipywidgets_js in _config.yml). Widget libraries are looked up in this folder,
// found from this script's own URL, so pages at any depth (and file:// copies) work.
(function () {
  var here = new URL(".", document.currentScript.src).href.replace(/\/$/, "");
  window.require.config({
    baseUrl: here, // a module with no entry in `paths` is looked for here, never on a CDN
    paths: {
      anywidget: here + "/anywidget", // anywidget.js: anywidget's front-end (AMD)
      // modules defined inside embed-amd.js: their URLs (hence its fonts) point here too
      "@jupyter-widgets": here,
      "@jupyter-widgets/html-manager/dist": here,
    },
  });
})();
