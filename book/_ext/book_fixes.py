"""Small Sphinx fixes for the book's HTML (loaded via `local_extensions` in _config.yml).

Sphinx 7.4 (pinned by jupyter-book 1.x) emits every *inline* script that an
extension registers after the builder started (sphinx-thebe's
``const THEBE_JS_URL = ...``, sphinx-togglebutton's selector) twice: once as
registered (``filename=None``) and once re-added in ``prepare_writing``
(``filename=''``). The second ``const`` declaration raises
``Uncaught SyntaxError: Identifier 'THEBE_JS_URL' has already been declared``
on every page. This extension drops such duplicates from each page's script
list. Harmless once Sphinx stops producing them.
"""

from __future__ import annotations

from typing import Any


def _dedup_scripts(app, pagename: str, templatename: str, context: dict[str, Any], doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set = set()
    kept = []
    for js in scripts:
        filename = getattr(js, "filename", js) or ""
        attrs = getattr(js, "attributes", {}) or {}
        key = (filename, getattr(js, "priority", 500), tuple(sorted((k, str(v)) for k, v in attrs.items())))
        if key in seen:
            continue
        seen.add(key)
        kept.append(js)
    context["script_files"] = kept


def setup(app) -> dict[str, Any]:
    # run late, after the theme and myst-nb have added their page scripts
    app.connect("html-page-context", _dedup_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
