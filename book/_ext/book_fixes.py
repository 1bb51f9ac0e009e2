"""Small Sphinx fixes for the book's HTML (loaded via `local_extensions` in _config.yml).

Sphinx 7.4 (pinned by jupyter-book 1.x) emits every *inline* script that an
extension registers after the builder started (sphinx-thebe's
``const THEBE_JS_URL = ...``, sphinx-togglebutton's selector) twice: once as
registered (``filename=None``) and once re-added in ``prepare_writing``
(``filename=''``). The second ``const`` declaration raises
``Uncaught SyntaxError: Identifier 'THEBE_JS_URL' has already been declared``
on every page. This extension drops such duplicates from each page's script
list. Harmless once Sphinx stops producing them.

It also drops hand-written section numbers that the table of contents already
gives: in a chapter of a ``numbered`` part of ``_toc.yml`` Sphinx numbers every
section, so a heading written as ``## 1. Prompt length ...`` would read
"6.1. 1. Prompt length ...". A leading ``N.`` is removed from a section title
when the document is numbered by the toc and ``N`` is the section's own
position among its sibling sections (i.e. exactly the number Sphinx prints);
any other leading number is left alone.

Finally it checks the theme versions against pyproject's ``book`` extra
(sphinx-book-theme 1.1.x with pydata-sphinx-theme 0.15.x): with
sphinx-book-theme 1.3 / pydata-sphinx-theme 0.17 the phone navigation is dead
(see pyproject.toml), so an environment that still has them gets a build
warning (an error under ``-W``) naming the command that fixes it.
"""

from __future__ import annotations

import re
from typing import Any

from docutils import nodes

_MANUAL_NUMBER = re.compile(r"^(\d+)\.\s+")


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


def _numbered_docs(app) -> set[str]:
    """Docnames that sit in a ``numbered`` toctree of the external (``_toc.yml``) site map."""
    site_map = getattr(app.env, "external_site_map", None)
    if site_map is None:
        return set()
    found: set[str] = set()
    todo = [site_map.root.docname]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in site_map:
            continue
        seen.add(name)
        doc = site_map[name]
        for tree in getattr(doc, "subtrees", None) or []:
            for child in tree.files():
                if tree.numbered:
                    found.add(child)
                todo.append(child)
    return found


def _strip_manual_section_numbers(app, doctree) -> None:
    docname = app.env.docname
    if docname not in _numbered_docs(app):
        return
    for section in doctree.findall(nodes.section):
        parent = section.parent
        if parent is None or isinstance(parent, nodes.document):
            continue  # the document title: it carries the chapter's number
        if not section.children or not isinstance(section[0], nodes.title):
            continue
        siblings = [c for c in parent.children if isinstance(c, nodes.section)]
        position = siblings.index(section) + 1
        title = section[0]
        if not title.children or not isinstance(title[0], nodes.Text):
            continue
        text = str(title[0])
        m = _MANUAL_NUMBER.match(text)
        if m and int(m.group(1)) == position:
            title.replace(title[0], nodes.Text(text[m.end():]))


#: (package, lowest allowed, first excluded) as pinned in pyproject.toml's `book` extra
_THEME_PINS = (("sphinx-book-theme", (1, 1, 4), (1, 2)), ("pydata-sphinx-theme", (0, 15, 4), (0, 16)))


def _check_theme_versions(app) -> None:
    from importlib.metadata import PackageNotFoundError, version

    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    for name, low, high in _THEME_PINS:
        try:
            found = version(name)
        except PackageNotFoundError:
            continue
        parts = tuple(int(x) for x in re.findall(r"\d+", found)[:3])
        if not (low <= parts < high):
            logger.warning(
                "%s %s is installed, the book needs >=%s,<%s (phone navigation is dead otherwise): "
                "run `make venv` (pip install -e '.[book,test]')",
                name, found, ".".join(map(str, low)), ".".join(map(str, high)))


def setup(app) -> dict[str, Any]:
    app.connect("builder-inited", _check_theme_versions)
    # run late, after the theme and myst-nb have added their page scripts
    app.connect("html-page-context", _dedup_scripts, priority=900)
    # before Sphinx's toctree collector (priority 500) reads the section titles
    app.connect("doctree-read", _strip_manual_section_numbers, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
