"""The tutorials are executed notebooks: every code cell ran, nothing failed, each has plots."""

import json
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "docs" / "tutorials").glob("*.ipynb"))


def test_the_three_tutorials_exist():
    names = {path.stem for path in TUTORIALS}
    assert {"pbmc_mosaic", "snare_multiome", "trimodal_mosaic"} <= names


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_is_executed_with_plots(path):
    notebook = json.loads(path.read_text())
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code, f"{path.name} has no code"
    not_run = [i for i, cell in enumerate(code) if cell.get("execution_count") is None]
    assert not not_run, f"{path.name}: code cells {not_run} were not executed"
    counts = [cell["execution_count"] for cell in code]
    assert counts == sorted(counts), f"{path.name} was not executed top to bottom"
    outputs = [out for cell in code for out in cell.get("outputs", [])]
    errors = [out for out in outputs if out["output_type"] == "error"]
    assert not errors, f"{path.name} has an error output: {errors[0].get('ename')}"
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert images, f"{path.name} has no plot"


ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(
    p
    for p in DOCS.rglob("*")
    if p.is_file()
    and p.suffix in {".md", ".rst", ".ipynb", ".py", ".txt"}
    and "_build" not in p.relative_to(DOCS).parts
)


def _control_characters(text: str) -> list[tuple[int, str]]:
    """(line, character) of each control character but newline and carriage return."""
    return [
        (text.count("\n", 0, i) + 1, repr(c))
        for i, c in enumerate(text)
        if (ord(c) < 32 and c not in "\n\r") or ord(c) == 127
    ]


def _page_text(path: Path) -> str:
    """A page's text; a notebook's cells' sources (its JSON escapes control characters)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".ipynb":
        return text
    cells = json.loads(text)["cells"]
    return "\n".join("".join(cell["source"]) for cell in cells)


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_docs_pages_hold_no_control_character(path):
    """A LaTeX escape written into a Python string unescaped (``"\\times"``, ``"\\frac"``)
    becomes a TAB, FF, BS... character that the strict build does not notice."""
    bad = _control_characters(_page_text(path))
    assert not bad, f"{path.name}: control characters (line, char) {bad[:5]}"


def test_docstrings_hold_no_control_character():
    """The API pages are rendered from the docstrings of ``src/``."""
    import ast

    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    bad = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            doc = ast.get_docstring(node, clean=False) if isinstance(node, kinds) else None
            if doc and _control_characters(doc):
                bad.append((path.name, getattr(node, "name", "module")))
    assert not bad, f"control characters in the docstrings of {bad[:5]}"
