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
