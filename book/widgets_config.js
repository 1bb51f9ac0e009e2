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

// @jupyter-widgets/controls 1.x typesets widget labels with the MathJax 2 API
// (MathJax.Hub.Queue), but the book loads MathJax 3, which has no Hub ("Cannot read
// properties of undefined (reading 'Queue')"). Sphinx has already put MathJax 3's
// configuration in window.MathJax; MathJax (deferred) has not run yet. Add a minimal Hub
// that typesets with MathJax 3, installed from MathJax's own startup hook.
(function () {
  var hub = {
    Queue: function (job) {
      var el = job && job[2];
      if (el && window.MathJax && window.MathJax.typesetPromise) {
        window.MathJax.typesetPromise([el]).catch(function () {});
      }
    }
  };
  var cfg = window.MathJax || {};
  if (cfg.version) {            // MathJax 3 already running
    if (!cfg.Hub) { cfg.Hub = hub; }
    return;
  }
  cfg.startup = cfg.startup || {};
  var ready = cfg.startup.ready;
  cfg.startup.ready = function () {
    if (ready) { ready(); } else { window.MathJax.startup.defaultReady(); }
    window.MathJax.Hub = hub;
  };
  window.MathJax = cfg;
})();
