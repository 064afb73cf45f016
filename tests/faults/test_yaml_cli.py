"""Faults of the YAML and the command line: each is refused with one line naming the place, nothing written.

The limits are those of :mod:`cuvis_graph.io.yaml_reading` (size, depth, alias expansion, tags,
key length), :mod:`cuvis_graph.core.names` (names that become paths), the registry (no module
is widened or imported by a file) and the sweep bound of ``-m/--multirun``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from cuvis_graph.nodes import AnomalyDetectionMetrics, MinMaxNormalizer, RXGlobal

from cuvis_graph import Graph
from cuvis_graph.core.names import InvalidNameError
from cuvis_graph.io.spec import MAX_SWEEP_JOBS
from cuvis_graph.io.yaml_reading import MAX_BYTES, MAX_DEPTH
from cuvis_graph.monitors import FileMonitor

from .conftest import PIPELINES, QUIET, TreeSnapshot, cli

BASE = """\
name: base
nodes:
  norm: {type: MinMaxNormalizer}
  rx: {type: RXGlobal, params: {eps: 1.0e-9}, parent: norm}
leaves:
  metrics: {type: AnomalyDetectionMetrics, params: {from_logits: false}, parent: rx}
data: {type: SyntheticHSIDataModule, params: {n_train: 2, n_val: 1, n_test: 0, height: 8, width: 8, n_bands: 6,
                                              batch_size: 1}}
training: {trainer: {max_epochs: 0}}
"""


def edit(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """``levels`` anchors, each a list of ``width`` aliases of the previous one: width**levels values."""
    lines = ["l0: &l0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


LONG_NAME = "n" * 150
HUGE = 10**30

# id -> (pipeline file content, overrides, extra argv, parts of the one error line)
CATALOGUE: dict[str, tuple[str | bytes, list[str], list[str], list[str]]] = {
    "allow_modules_in_yaml": (edit("type: RXGlobal", "_target_: cg_nowhere.RX") + "allow_modules: [cg_nowhere]\n",
                              [], [], ["allow_modules", "cannot widen its own allowlist",
                                       "--allow-module cg_nowhere"]),
    "target_into_dunder_main": (edit("type: RXGlobal", "_target_: venv.__main__.RX"), [], ["--allow-module", "venv"],
                                ["nodes.rx._target_", "'__main__' starts with '_'"]),
    "target_into_private_module": (edit("type: RXGlobal", "_target_: cuvis_graph.nodes._parent.RX"), [],
                                   ["--allow-module", "cuvis_graph"], ["nodes.rx._target_", "'_parent' starts with '_'"]),
    "target_is_a_function": (edit("type: RXGlobal", "_target_: json.dumps"), [], ["--allow-module", "json"],
                             ["nodes.rx._target_", "'dumps' is not a class name"]),
    # BASE has 9 lines; l5 (line 15) alone expands to 9**6 = 531441 values, past the bound of 200000
    "alias_bomb": (BASE + alias_bomb(), [], [], ["line 15", "expands to more than 200000"]),
    "deep_nesting": (BASE + "deep: " + "[" * 5000 + "]" * 5000 + "\n", [], [],
                     ["line 10", f"nested more than {MAX_DEPTH} levels"]),
    "file_over_the_size_limit": (BASE.replace("name: base", "name: " + "n" * 2_000_000), [], [],
                                 [f"more than the {MAX_BYTES}"]),
    "key_over_the_length_limit": (edit("  norm:", "  " + "k" * 300 + ":"), [], [],
                                  ["line 3", "a key of 300 characters", "kkkk…"]),
    "node_name_too_long": (edit("  norm: {type: MinMaxNormalizer}", f"  {LONG_NAME}: {{type: MinMaxNormalizer}}")
                           .replace("parent: norm", f"parent: {LONG_NAME}"), [], [],
                           ["nodes.nnnn", "a name of 150 characters"]),
    "pipeline_name_dotdot": (edit("name: base", "name: '..'"), [], [], ["name: '..' starts with '.'"]),
    "pipeline_name_absolute": (edit("name: base", "name: /tmp/elsewhere"), [], [], ["name: '/tmp/elsewhere' contains '/'"]),
    "node_name_with_separator": (edit("  rx: {", "  a/b: {").replace("parent: rx", "parent: a/b"), [], [],
                                 ["nodes.a/b", "contains '/'"]),
    "node_name_with_a_dot": (edit("  rx: {", "  rx.v2: {").replace("parent: rx", "parent: rx.v2"), [], [],
                            ["nodes.rx.v2", "contains '.'", "port"]),
    "leaf_name_leaving_its_folder": (edit("  metrics:", "  ../metrics:"), [], [], ["leaves.../metrics", "starts with '.'"]),
    "monitor_name_with_newline": (BASE + 'monitors:\n  "a\\nb": {type: FileMonitor}\n', [], [],
                                  ["monitors.a\\nb", "contains '\\n'"]),
    "python_tag_apply": (edit("eps: 1.0e-9", "eps: !!python/object/apply:os.getcwd []"), [], [],
                         ["line 4, column", "tag 'tag:yaml.org,2002:python/object/apply:os.getcwd' is refused"]),
    "custom_tag": (edit("eps: 1.0e-9", "eps: !env EPS"), [], [], ["line 4, column", "tag '!env' is refused"]),
    "binary_file": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", [], [], ["line 1", "not UTF-8 text (byte 0x89"]),
    "nul_character": ("name: base\nnodes:\x00\n", [], [], ["line 2", "character #x0000 is not allowed"]),
    "comments_only": ("# nothing here yet\n\n", [], [], ["the file is empty"]),
    "yaml_list": ("- name: base\n- nodes: {}\n", [], [], ["a pipeline is a mapping", "got a list"]),
    "unbalanced_brackets": (edit("eps: 1.0e-9}", "eps: 1.0e-9"), [], [], ["line 5", "YAML syntax error"]),
    "two_documents": (BASE + "---\nname: other\n", [], [], ["line 10", "expected a single document"]),
    "huge_integer_in_file": (edit("n_train: 2", f"n_train: {HUGE}"), [], [],
                             ["data.params.n_train", "beyond the 64-bit range"]),
    "scene_count_beyond_memory": (edit("n_train: 2", "n_train: 1000000000000"), [], [],
                                  ["data.params", "1000000000001 scenes of 8x8x6 float32", "GiB"]),
    "huge_integer_override": (BASE, [f"training.trainer.max_epochs={HUGE}"], [],
                              ["training.trainer.max_epochs", "beyond the 64-bit range"]),
    "integer_too_long_to_convert": (edit("n_train: 2", "n_train: 1" + "0" * 5000), [], [],
                                    ["a value cannot be read", "digits"]),
    "override_deep_unknown_param": (BASE, ["nodes.rx.params.epsilon.value=1"], [],
                                    ["override 'nodes.rx.params.epsilon.value=1'", "RXGlobal has no parameter "
                                     "'epsilon'", "did you mean 'eps'"]),
    "hydra_searchpath": (BASE + "hydra: {searchpath: ['file:///tmp']}\n", [], [],
                         ["hydra: Hydra's own settings", "cannot be set in a pipeline"]),
    "hydra_group_in_defaults": ("defaults:\n  - override hydra/job_logging: disabled\n  - _self_\n" + BASE, [], [],
                                ["defaults[0]", "names Hydra's own config groups"]),
}


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", list(CATALOGUE), ids=list(CATALOGUE))
def test_refused_before_anything_runs(case: str, tmp_path: Path, workdir: Path, capsys) -> None:
    content, overrides, extra, parts = CATALOGUE[case]
    path = _write(tmp_path / "bad.yaml", content)
    modules = set(sys.modules)
    snapshot = TreeSnapshot(tmp_path)
    for command in ("validate", "train"):
        runs = ["--runs-dir", tmp_path / "runs"] if command == "train" else []
        start = time.monotonic()
        outcome = cli([command, path, *overrides, *extra, *runs, *QUIET * (command == "train")], capsys)
        outcome.fails_naming("bad.yaml", *parts)
        assert time.monotonic() - start < 30, f"{command} took {time.monotonic() - start:.0f}s to refuse"
    snapshot.assert_unchanged()
    imported = set(sys.modules) - modules
    assert not imported & {"venv", "venv.__main__", "cg_nowhere", "cuvis_graph.nodes._parent.RX"}, imported


def test_pipeline_path_is_a_directory(tmp_path: Path, workdir: Path, capsys) -> None:
    snapshot = TreeSnapshot(tmp_path)
    for command in ("validate", "train"):
        cli([command, tmp_path], capsys).fails_naming(str(tmp_path), "is a directory")
    snapshot.assert_unchanged()


def test_missing_pipeline_without_extension(tmp_path: Path, workdir: Path, capsys) -> None:
    snapshot = TreeSnapshot(tmp_path)
    cli(["validate", "no_such_pipeline"], capsys).fails_naming("no_such_pipeline", "no such file")
    snapshot.assert_unchanged()


@pytest.mark.parametrize(("sweep", "count"), [(["data.params.seed=range(1000000)"], 10**6),
                                              (["data.params.seed=range(1000)", "nodes.rx.params.eps=1,2,3"], 3000)])
def test_multirun_sweep_is_bounded(sweep: list[str], count: int, tmp_path: Path, workdir: Path, capsys) -> None:
    path = _write(tmp_path / "p.yaml", BASE)
    snapshot = TreeSnapshot(tmp_path)
    start = time.monotonic()
    outcome = cli(["train", "-m", path, *sweep, "--runs-dir", tmp_path / "runs"], capsys)
    outcome.fails_naming("p.yaml", "-m/--multirun", f"sweep {count} combinations", f"at most {MAX_SWEEP_JOBS}")
    assert time.monotonic() - start < 10
    snapshot.assert_unchanged()


def test_multirun_sweep_with_zero_step(tmp_path: Path, workdir: Path, capsys) -> None:
    path = _write(tmp_path / "p.yaml", BASE)
    snapshot = TreeSnapshot(tmp_path)
    cli(["train", "-m", path, "data.params.seed=range(0,10,0)", "--runs-dir", tmp_path / "runs"],
        capsys).fails_naming("override 'data.params.seed=range(0,10,0)'", "cannot sweep it")
    snapshot.assert_unchanged()


def test_config_group_file_cannot_write_hydra_settings(tmp_path: Path, workdir: Path, capsys) -> None:
    (tmp_path / "data").mkdir()
    group = _write(tmp_path / "data" / "evil.yaml", "# @package hydra\nsearchpath: ['file:///tmp']\n")
    path = _write(tmp_path / "p.yaml", "defaults:\n  - data: evil\n  - _self_\n" + BASE)
    snapshot = TreeSnapshot(tmp_path)
    cli(["validate", path], capsys).fails_naming(str(group), "@package", "Hydra's own settings")
    snapshot.assert_unchanged()


def test_config_group_file_is_read_with_the_limits(tmp_path: Path, workdir: Path, capsys) -> None:
    (tmp_path / "data").mkdir()
    group = _write(tmp_path / "data" / "bomb.yaml", alias_bomb())
    path = _write(tmp_path / "p.yaml", "defaults:\n  - data: synthetic\n  - _self_\n" + BASE)
    _write(tmp_path / "data" / "synthetic.yaml", "type: SyntheticHSIDataModule\n")
    snapshot = TreeSnapshot(tmp_path)
    cli(["validate", path, "data=bomb"], capsys).fails_naming(str(group), "expands to more than")
    snapshot.assert_unchanged()


# -- the Python API: the same name rule -----------------------------------------------------------
def test_graph_name_cannot_leave_its_folder() -> None:
    with pytest.raises(InvalidNameError, match=r"Graph\(name=\.\.\.\): '\.\./x' starts with '\.'"):
        Graph("../x")


def test_node_and_leaf_names_are_checked() -> None:
    graph = Graph("g")
    with pytest.raises(InvalidNameError, match=r"add_node\(name=\.\.\.\): 'a/b' contains '/'"):
        graph.add_node(MinMaxNormalizer(), name="a/b")
    with pytest.raises(InvalidNameError, match=r"add_node: RXGlobal\.name: a name of 101 characters"):
        graph.add_node(RXGlobal(name="r" * 101))
    graph.add_node(RXGlobal(), name="rx")
    with pytest.raises(InvalidNameError, match=r"add_leaf_node\(name=\.\.\.\): '\.\.' starts with '\.'"):
        graph.add_leaf_node(AnomalyDetectionMetrics(), parent="rx", name="..")
    with pytest.raises(InvalidNameError, match=r"register_monitor: FileMonitor\.name: 'a\\b' contains"):
        graph.register_monitor(FileMonitor("files", name="a\\b"))
    assert list(graph.nodes) == ["rx"] and not graph.leaves and not graph.monitors


def test_a_dotted_node_name_would_read_as_a_port() -> None:
    """``parent: "a.b"`` means node ``a``, port ``b``, so a node cannot be named ``a.b``."""
    graph = Graph("g")
    with pytest.raises(InvalidNameError, match=r"add_node\(name=\.\.\.\): 'norm\.v2' contains '\.'.*port"):
        graph.add_node(MinMaxNormalizer(), name="norm.v2")
    assert not graph.nodes


def test_renaming_a_graph_keeps_the_rule() -> None:
    graph = Graph("g")
    with pytest.raises(InvalidNameError, match=r"Graph\.name: '\.\./\.\./x' starts with '\.'"):
        graph.name = "../../x"
    assert graph.name == "g"


def test_name_from_an_unsafe_file_stem_stays_inside_the_runs_dir(tmp_path: Path, workdir: Path, capsys) -> None:
    """Without ``name:``, the file's stem names the run; characters a folder name must not have become '_'."""
    path = _write(tmp_path / "my pipeline (v2).yaml", BASE.replace("name: base\n", ""))
    snapshot = TreeSnapshot(tmp_path)
    outcome = cli(["train", path, "--runs-dir", tmp_path / "runs", *QUIET], capsys)
    assert outcome.rc == 0, outcome.err[-2000:]
    snapshot.assert_unchanged(allowed=("runs",))
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["my_pipeline__v2_"]


def test_float16_on_the_cpu_is_refused_naming_bf16(tmp_path: Path, workdir: Path, capsys) -> None:
    """Lightning would swap '16-mixed' for bfloat16 on the CPU without a word; the config says so first."""
    snapshot = TreeSnapshot(tmp_path)
    for command in ("validate", "train"):
        cli([command, PIPELINES / "rx_statistical.yaml", "training.trainer.precision=16-mixed",
             "training.trainer.accelerator=cpu"], capsys).fails_naming(
            "training.trainer", "'16-mixed' (float16) does not run on the CPU", "bf16-mixed")
    snapshot.assert_unchanged()


@pytest.mark.parametrize("override", ["hydra.run.dir=elsewhere", "+hydra.job.chdir=true", "++hydra.run.dir=elsewhere",
                                      "~hydra", "hydra/job_logging=disabled"])
def test_hydra_settings_on_the_command_line_say_what_to_use(override: str, tmp_path: Path, workdir: Path,
                                                             capsys) -> None:
    snapshot = TreeSnapshot(tmp_path)
    for command in ("validate", "train"):
        cli([command, PIPELINES / "rx_statistical.yaml", override], capsys).fails_naming(
            f"override '{override}'", "not used by cuvis-graph", "--runs-dir")
    snapshot.assert_unchanged()
