"""Every notebook executes top to bottom (at the small sizes it sets); its figures are labelled
and no outputs are stored."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.output_type == "error"
    ]
    assert not errors


def test_the_notebooks_the_readme_names_are_executed():
    names = {"greedy_selection", "grda", "hessian_bias", "ntk_spectra", "pl_gating", "prune_with"}
    assert {f"{name}.ipynb" for name in names} <= {p.name for p in NOTEBOOKS}


def _calls(path: Path, method: str) -> list[ast.Call]:
    """The ``.method(...)`` calls in the code cells of the notebook at ``path``."""
    notebook = nbformat.read(path, as_version=4)
    trees = [ast.parse(cell.source) for cell in notebook.cells if cell.cell_type == "code"]
    return [
        node
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == method
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_colorbars_are_labelled_and_no_outputs_are_stored(path):
    unlabelled = [
        call.lineno
        for call in _calls(path, "colorbar")
        if not any(keyword.arg == "label" for keyword in call.keywords)
    ]
    assert not unlabelled, f"colorbar without a label at cell lines {unlabelled}"
    notebook = nbformat.read(path, as_version=4)
    assert not [cell for cell in notebook.cells if cell.get("outputs")]


def test_pl_gating_objective_panel_has_a_y_label():
    path = next(p for p in NOTEBOOKS if p.name == "pl_gating.ipynb")
    panels = [
        call
        for call in _calls(path, "set")
        if any(
            k.arg == "title" and isinstance(k.value, ast.Constant) and "objective" in k.value.value
            for k in call.keywords
        )
    ]
    assert panels and all(any(k.arg == "ylabel" for k in call.keywords) for call in panels)
