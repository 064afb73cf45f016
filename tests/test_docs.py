"""The documentation stays true: generated pages are fresh, code in the docs runs, links resolve.

Runnable blocks (``README.md``, ``docs/*.md``)
----------------------------------------------
A fenced code block is executed when its info string carries the word ``run``
(```` ```python run ````, ```` ```bash run ````, ```` ```yaml run ````), or when the line
before the fence is ``<!-- run -->``:

* ``python``: the blocks of one file run in document order in **one namespace** (like
  notebook cells), working directory = the repository root; tracebacks point at the
  Markdown file's own line numbers.
* ``bash``: run with ``bash -e -u -o pipefail`` from the repository root, with the virtual
  environment's ``bin`` first on ``PATH`` (so ``cuvis-graph`` is this checkout's entry point).
* ``yaml``: a complete pipeline; it is loaded and compiled with
  :func:`cuvis_graph.io.spec.load_pipeline` (nothing is trained).

Every file's blocks get ``CUVIS_GRAPH_RUNS_ROOT`` and ``TMPDIR`` (and ``tempfile``'s default
folder) pointing at a fresh temporary folder, and ``MPLBACKEND=Agg``, so blocks never write
into the checkout when they use ``graph.train`` defaults, ``tempfile`` or ``$TMPDIR``. Keep
them fast: tiny scenes, ``max_epochs`` of 0-2. Classes a block registers are unregistered
afterwards, and modules imported from the temporary folder are forgotten.

Every other ``python`` block must at least parse (``ast``); put ``<!-- no-check -->`` on the
line before a fence that is deliberately not Python (a sketch with ``...``).

Generated pages
---------------
``docs/nodes.md`` is ``cuvis-graph nodes --markdown``; when a node, leaf, monitor or
datamodule is added or its docstring / parameters change, regenerate it with::

    .venv/bin/cuvis-graph nodes --markdown -o docs/nodes.md
"""

from __future__ import annotations

import ast
import difflib
import os
import re
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent
NODES_MD = DOCS / "nodes.md"
REGENERATE = ".venv/bin/cuvis-graph nodes --markdown -o docs/nodes.md"
BLOCK_TIMEOUT_S = 300

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")


@dataclass
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line number of the block's first code line
    language: str
    words: tuple[str, ...]
    code: str
    run: bool
    check: bool

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def markdown_files() -> list[Path]:
    """``README.md`` and ``docs/*.md``, except generated pages."""
    files = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    return [f for f in files if f.is_file() and f != NODES_MD]


def code_blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path`` with its language, info words and run / check marks."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, info = match["fence"], match["info"].strip()
        words = tuple(info.split())
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        end = i + 1
        while end < len(lines) and not (lines[end].strip().startswith(fence[0] * len(fence))
                                         and set(lines[end].strip()) == {fence[0]}):
            end += 1
        code = "\n".join(line[len(match["indent"]):] for line in lines[i + 1:end])
        language = words[0].lower() if words else ""
        blocks.append(Block(path, i + 2, language, words[1:], code,
                            run="run" in words[1:] or previous == "<!-- run -->",
                            check=previous != "<!-- no-check -->"))
        i = end + 1
    return blocks


def runnable_blocks(path: Path) -> list[Block]:
    return [b for b in code_blocks(path) if b.run and b.language in ("python", "py", "bash", "sh", "yaml", "yml")]


DOC_FILES = markdown_files()
RUNNABLE = [f for f in DOC_FILES if runnable_blocks(f)]


# -- the convention itself ---------------------------------------------------------------------
def test_block_parser_finds_marks(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```python run\nx = 1\n```\n\n<!-- run -->\n```bash\necho hi\n```\n\n"
                    "```python\nnot run\n```\n\n<!-- no-check -->\n````python\n...\n````\n", encoding="utf-8")
    blocks = code_blocks(page)
    assert [(b.language, b.run, b.check, b.line) for b in blocks] == [
        ("python", True, True, 4), ("bash", True, True, 9), ("python", False, True, 13), ("python", False, False, 18)]
    assert blocks[0].code == "x = 1"


# -- generated pages ---------------------------------------------------------------------------
def test_nodes_md_is_fresh(tmp_path: Path) -> None:
    """``docs/nodes.md`` equals a fresh ``cuvis-graph nodes --markdown`` (a clean process, so
    classes registered by other tests do not leak in)."""
    out = tmp_path / "nodes.md"
    subprocess.run([str(BIN / "cuvis-graph"), "nodes", "--markdown", "-o", str(out)], cwd=ROOT, check=True,
                   capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    fresh, stored = out.read_text(encoding="utf-8"), NODES_MD.read_text(encoding="utf-8") if NODES_MD.is_file() else ""
    if fresh != stored:
        diff = "".join(list(difflib.unified_diff(stored.splitlines(True), fresh.splitlines(True), "docs/nodes.md",
                                                 "cuvis-graph nodes --markdown"))[:60])
        pytest.fail(f"docs/nodes.md is out of date with the registered types (a node, leaf, monitor or datamodule "
                    f"was added or its docstring / parameters changed). Regenerate it:\n\n    {REGENERATE}\n\n"
                    f"first differences:\n{diff}", pytrace=False)


# -- blocks that only have to be valid ---------------------------------------------------------
@pytest.mark.parametrize("path", DOC_FILES, ids=[str(p.relative_to(ROOT)) for p in DOC_FILES])
def test_python_blocks_parse(path: Path) -> None:
    problems = []
    for block in code_blocks(path):
        if block.language in ("python", "py") and block.check:
            try:
                ast.parse(block.code)
            except SyntaxError as exc:
                problems.append(f"{block.where}: {exc.msg} (block line {exc.lineno})")
    assert not problems, "python blocks that do not parse (mark a deliberate sketch with <!-- no-check -->):\n" + \
        "\n".join(problems)


_LINK = re.compile(r"\[[^\]]*\]\((?!https?://|mailto:|#)([^)\s]+)\)")


@pytest.mark.parametrize("path", [*DOC_FILES, ROOT / "tutorials" / "README.md"],
                         ids=[str(p.relative_to(ROOT)) for p in [*DOC_FILES, ROOT / "tutorials" / "README.md"]])
def test_relative_links_resolve(path: Path) -> None:
    if not path.is_file():
        pytest.skip(f"{path.relative_to(ROOT)} does not exist")
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    missing = [target for target in _LINK.findall(text)
               if not (path.parent / target.split("#", 1)[0]).exists()]
    assert not missing, f"{path.relative_to(ROOT)}: links to missing files: {missing}"


# -- runnable blocks ---------------------------------------------------------------------------
@pytest.fixture
def docs_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Repository root as cwd, runs and temporary files in ``tmp_path``; registry restored and modules
    imported from ``tmp_path`` (plugins a page writes) forgotten after."""
    from cuvis_graph.core import registry
    runs, tmp = tmp_path / "runs", tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("CUVIS_GRAPH_RUNS_ROOT", str(runs))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    registry.registered()  # import the built-ins first: restoring must not drop them
    classes, allowed = dict(registry._CLASSES), set(registry._ALLOWED)
    try:
        yield tmp_path
    finally:
        registry._CLASSES.clear()
        registry._CLASSES.update(classes)
        registry._ALLOWED.clear()
        registry._ALLOWED.update(allowed)
        for name, module in list(sys.modules.items()):
            if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
                del sys.modules[name]


def _run_python(block: Block, namespace: dict) -> None:
    # pad so that line numbers in tracebacks are the Markdown file's own
    code = compile("\n" * (block.line - 1) + block.code, str(block.path), "exec")
    failure = None
    try:
        exec(code, namespace)
    except Exception as exc:  # noqa: BLE001 - reported with the block's place
        trace = "".join(traceback.format_exception(exc)[1:])
        failure = f"{block.where}: runnable python block raised {type(exc).__name__}: {exc}\n\n{trace}"
    if failure:
        pytest.fail(failure, pytrace=False)


def _run_bash(block: Block) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    try:
        done = subprocess.run(["bash", "-e", "-u", "-o", "pipefail", "-c", block.code], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.where}: runnable bash block ran over {BLOCK_TIMEOUT_S} s:\n{block.code}", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"{block.where}: runnable bash block exited with {done.returncode}:\n{block.code}\n\n"
                    f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}", pytrace=False)


def _run_yaml(block: Block) -> None:
    from cuvis_graph.io.spec import SpecError, load_pipeline

    failure = None
    try:
        load_pipeline(block.code if block.code.endswith("\n") else block.code + "\n")
    except SpecError as exc:
        failure = f"{block.where}: runnable yaml block is not a valid pipeline:\n{exc}"
    if failure:
        pytest.fail(failure, pytrace=False)


@pytest.mark.slow
@pytest.mark.parametrize("path", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_runnable_blocks(path: Path, docs_sandbox: Path) -> None:
    namespace: dict = {"__name__": "__docs__"}
    for block in runnable_blocks(path):
        if block.language in ("python", "py"):
            _run_python(block, namespace)
        elif block.language in ("bash", "sh"):
            _run_bash(block)
        else:
            _run_yaml(block)
