#!/usr/bin/env bash
# Fetch the static widget assets of the book from the npm registry.
#
#   book/widgets_static/embed-amd.js (+ its icon fonts)  <- @jupyter-widgets/html-manager
#   book/widgets_static/require.js                       <- requirejs
#
# The 3.6 MB bundle is NOT committed (book/widgets_static/ is git-ignored);
# `make book` runs this script before building. Needs `npm` (Debian: nodejs/npm).
# Idempotent: does nothing when the assets are already there (FORCE=1 refetches).
set -euo pipefail

HTML_MANAGER_VERSION="${HTML_MANAGER_VERSION:-1.0.15}"
REQUIREJS_VERSION="${REQUIREJS_VERSION:-2.3.8}"
# MathJax 3 for the chapters' formulas (a local copy: the CDN is unreachable offline)
MATHJAX_VERSION="${MATHJAX_VERSION:-3.2.2}"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${here}/widgets_static"

if [[ "${FORCE:-0}" != "1" && -s "${dest}/embed-amd.js" && -s "${dest}/require.js" && -s "${dest}/mathjax/tex-mml-chtml.js" ]]; then
  echo "widget assets already in ${dest} (FORCE=1 to refetch)"
  exit 0
fi

command -v npm >/dev/null || { echo "error: npm not found (apt-get install -y npm)" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT
(
  cd "${tmp}"
  npm pack --silent "@jupyter-widgets/html-manager@${HTML_MANAGER_VERSION}" >/dev/null
  npm pack --silent "requirejs@${REQUIREJS_VERSION}" >/dev/null
  npm pack --silent "mathjax@${MATHJAX_VERSION}" >/dev/null
  mkdir hm rj mj
  tar -xzf jupyter-widgets-html-manager-*.tgz -C hm
  tar -xzf requirejs-*.tgz -C rj
  tar -xzf mathjax-*.tgz -C mj
)

rm -rf "${dest}"
mkdir -p "${dest}"
cp "${tmp}/hm/package/dist/embed-amd.js" "${dest}/"
# icon fonts (Font Awesome) that embed-amd.js loads relative to its own URL
for f in "${tmp}"/hm/package/dist/*.{eot,svg,ttf,woff,woff2}; do
  [[ -e "${f}" ]] && cp "${f}" "${dest}/"
done
cp "${tmp}/rj/package/require.js" "${dest}/"
mkdir -p "${dest}/mathjax"
cp "${tmp}/mj/package/es5/tex-mml-chtml.js" "${dest}/mathjax/"
cp -r "${tmp}/mj/package/es5/output" "${dest}/mathjax/"   # CHTML fonts, loaded relative to the script
cp "${tmp}/hm/package/LICENSE" "${dest}/LICENSE.html-manager" 2>/dev/null || true
cp "${tmp}/rj/package/LICENSE" "${dest}/LICENSE.requirejs" 2>/dev/null || true
echo "fetched html-manager ${HTML_MANAGER_VERSION} + requirejs ${REQUIREJS_VERSION} into ${dest}:"
ls -la "${dest}"
