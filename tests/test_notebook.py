"""examples/quickstart.ipynb runs headless from top to bottom with small training budgets."""

import os

import nbformat
from nbclient import NotebookClient

from tests.helpers import ROOT


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKSTART_CUE_SECONDS", "15")
    monkeypatch.setenv("QUICKSTART_PONG_SECONDS", "10")
    monkeypatch.setenv("QUICKSTART_RUNS", str(tmp_path))
    path = os.path.join(ROOT, "examples", "quickstart.ipynb")
    notebook = nbformat.read(path, as_version=4)
    assert all(cell.get("outputs", []) == [] for cell in notebook.cells if cell.cell_type == "code"), (
        "saved with outputs"
    )
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {}) or "image/gif" in output.get("data", {})
    ]
    assert len(images) >= 3, "the curve and the games are shown inline"
    assert (tmp_path / "cue" / "game.gif").stat().st_size > 1000
    assert (tmp_path / "pong" / "models" / "PongNoFrameskip-v4.dat").exists()
