"""The tutorials in ``tutorials/*.ipynb`` run top to bottom, and are stored without outputs.

Every notebook found by the glob is executed with nbclient in a fresh kernel of *this*
interpreter (the project's virtual environment: the kernel spec is written to a temporary
folder so no globally installed ``python3`` kernel can take its place), with the working
directory ``tutorials/`` and ``CUVIS_GRAPH_RUNS_ROOT`` pointing at a temporary folder. A
cell that raises (each notebook ends with an ``assert`` on its key result) fails the test
with the cell's source and the error. A notebook added later (``04_...``) is picked up
without touching this file.

Run one notebook: ``pytest tests/test_tutorials.py -k 01``. Strip the outputs of notebooks
before committing: ``python tests/test_tutorials.py --strip tutorials/*.ipynb``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
KERNEL_NAME = "python3"  # what the notebooks' metadata names; resolved to this interpreter below
CELL_TIMEOUT_S = 300


def kernel_manager(spec_dir: Path) -> KernelManager:
    """A kernel manager whose only ``python3`` kernel is ``sys.executable -m ipykernel_launcher``."""
    folder = spec_dir / KERNEL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python 3 ({sys.executable})", "language": "python"}
    (folder / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir)]))


def execute_notebook(path: Path, work: Path, env: dict[str, str] | None = None) -> tuple[nbformat.NotebookNode, float]:
    """Execute the notebook at ``path`` (cwd = its folder); returns it with outputs and the seconds taken.

    ``env``: extra environment variables for the kernel. Raises ``CellExecutionError`` when
    a cell raises.
    """
    nb = nbformat.read(path, as_version=4)
    kernel_env = {**os.environ, "CUVIS_GRAPH_RUNS_ROOT": str(work / "runs"), **(env or {})}
    kernel_env.pop("MPLBACKEND", None)  # the notebooks choose `%matplotlib inline` themselves
    client = NotebookClient(nb, km=kernel_manager(work / "kernels"), timeout=CELL_TIMEOUT_S,
                            kernel_name=KERNEL_NAME, allow_errors=False,
                            resources={"metadata": {"path": str(path.parent)}})
    started = time.perf_counter()
    client.execute(env=kernel_env)
    return nb, time.perf_counter() - started


def test_notebooks_found() -> None:
    assert NOTEBOOKS, f"no notebooks in {TUTORIALS}"


def run_or_fail(path: Path, work: Path, env: dict[str, str] | None = None) -> nbformat.NotebookNode:
    """:func:`execute_notebook`, failing the test with the raising cell and its error."""
    failure = None
    try:
        nb, seconds = execute_notebook(path, work, env)
    except CellExecutionError as exc:
        failure = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # without the terminal colours of the traceback
    if failure is not None:
        pytest.fail(f"{path.relative_to(ROOT)}{f' with {env}' if env else ''}: a cell raised:\n{failure}",
                    pytrace=False)
    print(f"{path.name}: {seconds:.1f} s")
    return nb


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path) -> None:
    run_or_fail(path, tmp_path)


@pytest.mark.slow
def test_statistical_rx_on_the_synthetic_scene(tmp_path: Path) -> None:
    """Tutorial 01 scores the real ABU scene when ``../shared/data`` exists; its synthetic
    fallback (what users without the data run) must work too."""
    path = TUTORIALS / "01_statistical_rx.ipynb"
    if not path.is_file():
        pytest.skip("tutorials/01_statistical_rx.ipynb is gone")
    nb = run_or_fail(path, tmp_path, env={"CUVIS_GRAPH_TUTORIAL_SCENE": "synthetic"})
    printed = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
    assert "scene: synthetic" in printed


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    """Outputs make diffs unreadable and go stale; strip them before committing."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells)
             if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{path.relative_to(ROOT)}: cells {dirty} have outputs or execution counts; clear them with "
                       f"`python tests/test_tutorials.py --strip {path.relative_to(ROOT)}`")
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL_NAME, \
        f"{path.name}: kernelspec name must be '{KERNEL_NAME}'"


def strip_outputs(paths: list[str]) -> None:
    """Remove outputs, execution counts and per-cell execution metadata from notebooks, in place."""
    for name in paths:
        nb = nbformat.read(name, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
                cell.metadata.pop("execution", None)
        nbformat.write(nb, name)
        print(f"stripped {name}")


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "--strip":
        sys.exit("usage: python tests/test_tutorials.py --strip NOTEBOOK.ipynb...")
    strip_outputs(sys.argv[2:])
