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

// @jupyter-widgets/controls typesets widget labels with the MathJax 2 API whenever
// `window.MathJax` exists (`MathJax.Hub.Queue(...)`), but the book loads MathJax 3, which has no
// Hub ("Uncaught TypeError: Cannot read properties of undefined (reading 'Queue')").
// This script runs before embed-amd.js renders any widget, so the shim is installed HERE, at
// once, on whatever `window.MathJax` is now:
//  * a page with maths: Sphinx's inline configuration object (MathJax 3 itself is deferred and
//    not running yet); MathJax 3 keeps the configuration but replaces `window.MathJax` with its
//    own object on start-up, so the startup hook below adds the Hub to that one as well;
//  * a page without maths (no MathJax at all): a bare object holding only the Hub, whose Queue
//    does nothing (there is nothing to typeset);
//  * MathJax 3 already running: its object gets the Hub.
// Queue typesets with MathJax 3 once it is ready; before that MathJax 3 typesets the whole page,
// widget labels included, at start-up anyway.
(function () {
  var hub = {
    Queue: function () {
      var mj = window.MathJax;
      if (!mj || !mj.typesetPromise) { return; }
      for (var i = 0; i < arguments.length; i++) {
        var job = arguments[i];
        var el = job && job[2];
        if (el && el.nodeType === 1) {
          mj.typesetPromise([el]).catch(function () {});
        }
      }
    }
  };
  var cfg = window.MathJax || {};
  if (!cfg.Hub) { cfg.Hub = hub; }
  if (!cfg.version) {           // a configuration: MathJax 3 has not started yet
    cfg.startup = cfg.startup || {};
    var ready = cfg.startup.ready;
    cfg.startup.ready = function () {
      if (ready) { ready(); } else { window.MathJax.startup.defaultReady(); }
      if (!window.MathJax.Hub) { window.MathJax.Hub = hub; }
    };
  }
  window.MathJax = cfg;
})();
