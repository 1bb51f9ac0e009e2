"""Every "Chapter:" back-link of a library module names a chapter (or README/book page) that really
shows that module: it imports it, names its file, or uses one of its public names."""
import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p for p in (ROOT / "cl_peft_lib").rglob("*.py") if p.name != "__main__.py")


def _chapter_line(doc: str) -> str | None:
    m = re.search(r"^Chapters?: (.+?)(?:\n\n|\Z)", doc, re.M | re.S)
    return " ".join(m.group(1).split()) if m else None


def _targets(line: str) -> list[Path]:
    out = []
    for name in re.findall(r"(?:notebooks/)?(\d\d_[a-z_]+)\.ipynb", line):
        out.append(ROOT / "notebooks" / f"{name}.ipynb")
    out += [ROOT / p for p in re.findall(r"(book/[a-z_]+\.md)", line)]
    if "README" in line:
        out.append(ROOT / "README.md")
    if "every notebook" in line:
        out += sorted((ROOT / "notebooks").glob("0*.ipynb"))
    return out


def _text(path: Path) -> str:
    if path.suffix == ".ipynb":
        return "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
    return path.read_text()


def _public_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name) and not t.id.startswith("_")}
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_chapter_backlink_names_a_page_that_shows_the_module(path):
    tree = ast.parse(path.read_text())
    doc = ast.get_docstring(tree) or ""
    line = _chapter_line(doc)
    assert line, f"{path.relative_to(ROOT)}: its docstring has no 'Chapter:' line"
    if "(planned)" in line:
        return
    pages = _targets(line)
    assert pages, f"{path.relative_to(ROOT)}: 'Chapter: {line}' names no notebook, book page or README"
    rel = path.relative_to(ROOT).with_suffix("")
    dotted = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
    names = _public_names(tree)
    for page in pages:
        assert page.is_file(), f"{path.relative_to(ROOT)} links to {page.relative_to(ROOT)}, which does not exist"
        text = _text(page)
        shown = (dotted in text or path.name in text and path.name != "__init__.py"
                 or any(re.search(rf"\b{re.escape(n)}\b", text) for n in names))
        assert shown, f"{path.relative_to(ROOT)}: {page.relative_to(ROOT)} never uses or names it"
