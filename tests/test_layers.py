"""The package's layers, as docs/architecture.md draws them: each folder of ``cuvis_graph/``
imports at module level only from the layers it may depend on (imports inside functions and
under ``TYPE_CHECKING`` load on use and are not edges of the picture)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cuvis_graph"
CATALOG = Path(__file__).resolve().parents[1] / "nodes"

#: layer -> the layers its modules may import at module level (itself and errors.py always).
ALLOWED = {
    "core": set(),
    "data": {"core", "train"},  # train.distributed: the DDP shard sampler (torch only)
    "monitors": {"core", "io"},
    "train": {"core", "io", "data", "monitors"},
    "io": {"core", "train", "data"},  # train.config: the training section of a pipeline file
    "cli": {"core", "train", "io", "data", "monitors"},
    "nodes": {"core", "io"},  # io.render: the figures of the visualization leaves
}


def _module_level_imports(path: Path) -> set[str]:
    """``cuvis_graph.<layer>`` names imported outside functions and ``TYPE_CHECKING`` blocks."""
    layers: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try, ast.With)):
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(node, block, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "cuvis_graph" and len(parts) > 1:
                    layers.add(parts[1])

    visit(ast.parse(path.read_text()).body)
    return layers


def _layer_of(path: Path) -> str:
    return "nodes" if CATALOG in path.parents else path.relative_to(PACKAGE).parts[0]


def test_every_module_imports_only_from_the_layers_below_it() -> None:
    files = [p for p in PACKAGE.rglob("*.py") if len(p.relative_to(PACKAGE).parts) > 1]
    files += list(CATALOG.rglob("*.py"))
    assert len(files) > 80
    layers = set(ALLOWED)
    wrong = []
    for path in files:
        layer = _layer_of(path)
        assert layer in ALLOWED, f"{path}: a folder of cuvis_graph/ that docs/architecture.md does not draw"
        imported = (_module_level_imports(path) & (layers | {"nodes"})) - {layer, "errors"}
        extra = imported - ALLOWED[layer]
        if extra:
            wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {sorted(extra)}")
    assert not wrong, "\n".join(wrong)


def test_the_core_imports_no_training_or_file_layer_even_inside_a_module_body() -> None:
    """``core/`` may reach ``train``/``io`` only lazily, from inside a function (the facade)."""
    for path in (PACKAGE / "core").glob("*.py"):
        assert not (_module_level_imports(path) & {"train", "io", "cli", "monitors", "data", "nodes"}), path


def test_the_checker_sees_an_import_it_must_refuse(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text("import os\nfrom cuvis_graph.train.config import TrainingConfig\n"
                      "def f():\n    from cuvis_graph.io import saving\n")
    assert _module_level_imports(source) == {"train"}
