// require.js configuration for the static widget pages of the book.
//
// Loaded between require.js and @jupyter-widgets/html-manager's embed-amd.js
// (see `nb_ipywidgets_js` in _config.yml). The bundle's modules
// (`@jupyter-widgets/base`, `.../controls7`, `.../html-manager/dist/...`) load
// their icon fonts relative to their own require.js module URL, which by
// default is relative to the *page* (so `notebooks/@jupyter-widgets/x.woff2`:
// 404). This config maps both module prefixes to the folder this very script
// is served from (`_static/`), where the fonts are. The assets themselves come from the npm registry via
// book/fetch_widget_assets.sh; no CDN is contacted.
(function () {
  var script = document.currentScript;
  var src = script && script.src ? script.src : "";
  var dir = src.replace(/[?#].*$/, "").replace(/\/[^\/]*$/, "");
  if (typeof window.require !== "undefined" && window.require.config && dir) {
    window.require.config({
      paths: {
        "@jupyter-widgets/html-manager/dist": dir,
        "@jupyter-widgets": dir,
      },
    });
  }
})();
