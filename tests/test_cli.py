"""The ``cuvis-graph`` command line: validate / train / show / nodes, errors, multirun, real scenes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import roc_auc_score
from spec_helpers import write_tiny_mat

from cuvis_graph.cli.app import main
from cuvis_graph.io.spec import load_config

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "pipelines"
PIPELINE_FILES = sorted(PIPELINES.glob("*.yaml"))
DATA = ROOT.parent / "shared" / "data"
REFERENCE = DATA / "rx_auc_reference.csv"
CLI = [sys.executable, "-c", "import sys; from cuvis_graph.cli.app import main; sys.exit(main())"]

TINY_SYNTHETIC = ["data.params.n_train=2", "data.params.n_val=1", "data.params.n_test=0", "data.params.height=16",
                  "data.params.width=16", "data.params.batch_size=2"]
QUIET = ["training.trainer.enable_progress_bar=false"]


@pytest.fixture
def tiny_mat(tmp_path: Path) -> Path:
    return write_tiny_mat(tmp_path / "tiny.mat")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a fresh folder so that nothing can land in the checkout."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def tiny_overrides(path: Path, tiny_mat: Path) -> list[str]:
    if path.stem == "rx_real_mat":
        return [f"data.params.path={tiny_mat}"]
    return TINY_SYNTHETIC


def run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*/*") if p.is_dir())


def assert_complete_run(run_dir: Path) -> dict:
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed", record
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["pipeline"]["nodes"], "the resolved pipeline is stored next to the outputs"
    assert (run_dir / "metrics.jsonl").stat().st_size > 0
    assert yaml.safe_load((run_dir / "pipeline.yaml").read_text())["name"] == record["pipeline"]
    assert not (run_dir / "lock").exists()
    return record


# -- validate / train every pipeline ------------------------------------------------------------
@pytest.mark.parametrize("path", PIPELINE_FILES, ids=lambda p: p.stem)
def test_every_pipeline_validates_and_trains(path: Path, tiny_mat: Path, workdir: Path, capsys) -> None:
    overrides = tiny_overrides(path, tiny_mat)
    assert main(["validate", str(path), *overrides]) == 0
    assert f"pipeline '{path.stem}' is valid" in capsys.readouterr().out
    runs = workdir / "runs"
    epochs = load_config(path, overrides)[0]["training"]["trainer"]["max_epochs"]
    short = ["training.trainer.max_epochs=1", "training.trainer.limit_train_batches=1"] if epochs else []
    code = main(["train", str(path), *overrides, *QUIET, *short, "--runs-dir", str(runs)])
    out = capsys.readouterr().out
    assert code == 0
    (run_dir,) = run_dirs(runs)
    record = assert_complete_run(run_dir)
    assert f"run directory: {run_dir}" in out
    assert ("metrics (after statistical init -> final):" if record.get("initial_metrics") else "final metrics:") in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")}
    for key, value in record["metrics"].items():
        assert key in lines and (value is None or np.isfinite(value))
        before = (record.get("initial_metrics") or {}).get(key)
        if before is not None and value is not None:  # "before -> after", as recorded
            assert [float(lines[key][0]), float(lines[key][2])] == pytest.approx([before, value], rel=1e-5)


def test_rx_pipelines_keep_statistical_default(workdir: Path, capsys) -> None:
    runs = workdir / "runs"
    assert main(["train", str(PIPELINES / "rx_statistical.yaml"), *TINY_SYNTHETIC, *QUIET,
                 "--runs-dir", str(runs)]) == 0
    (run_dir,) = run_dirs(runs)
    record = assert_complete_run(run_dir)
    assert 0.5 < record["metrics"]["val/metrics/auroc"] <= 1.0
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["pipeline"]["training"]["trainer"]["max_epochs"] == 0


def test_config_groups_swap_data_and_training(tiny_mat: Path, workdir: Path, capsys) -> None:
    runs = workdir / "runs"
    assert main(["train", str(PIPELINES / "rx_statistical.yaml"), "data=abu_mat", f"data.params.path={tiny_mat}",
                 *QUIET, "--runs-dir", str(runs)]) == 0
    (run_dir,) = run_dirs(runs)
    config = yaml.safe_load((run_dir / "pipeline.yaml").read_text())
    assert config["data"] == {"type": "MatSceneDataModule",
                              "params": {"path": str(tiny_mat), "key": "data", "mask_key": "map"}}
    assert main(["validate", str(PIPELINES / "selector_rx_bce.yaml"), "training=fast"]) == 0


def test_pipeline_yaml_of_a_run_is_re_runnable(workdir: Path, capsys) -> None:
    runs = workdir / "runs"
    assert main(["train", str(PIPELINES / "rx_statistical.yaml"), *TINY_SYNTHETIC, *QUIET, "--runs-dir",
                 str(runs)]) == 0
    (first,) = run_dirs(runs)
    assert main(["train", str(first / "pipeline.yaml"), "--runs-dir", str(runs)]) == 0
    second = next(p for p in run_dirs(runs) if p != first)
    metrics = [json.loads((d / "run.json").read_text())["metrics"] for d in (first, second)]
    assert metrics[0] == metrics[1]


# -- multirun -----------------------------------------------------------------------------------
def test_multirun_makes_one_complete_run_per_value(workdir: Path, capsys) -> None:
    runs = workdir / "runs"
    code = main(["train", "-m", str(PIPELINES / "rx_statistical.yaml"), "nodes.rx.params.eps=1e-9,1e-2",
                 *TINY_SYNTHETIC, *QUIET, "--runs-dir", str(runs)])
    out = capsys.readouterr().out
    assert code == 0
    (sweep,) = run_dirs(runs)  # one sweep folder: <runs>/<pipeline>/sweep_<stamp>/
    assert sweep.name.startswith("sweep_")
    dirs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [d.name for d in dirs] == ["000", "001"]
    eps = []
    for run_dir in dirs:
        assert_complete_run(run_dir)
        eps.append(yaml.safe_load((run_dir / "config.yaml").read_text())["pipeline"]["nodes"]["rx"]["params"]["eps"])
    assert eps == [1e-9, 1e-2]
    assert f"multirun: 2 job(s) in {sweep}" in out and "sweep summary:" in out
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [float(r["overrides"].split()[0].split("=")[1]) for r in rows] == [1e-9, 1e-2]
    for row, run_dir in zip(rows, dirs, strict=True):
        record = json.loads((run_dir / "run.json").read_text())
        assert row["status"] == "completed" and row["run_dir"] == str(run_dir)
        for key, value in record["metrics"].items():
            assert (row[key] == "" and value is None) or float(row[key]) == value
    table = out.split("sweep summary:")[1]
    marked = [line for line in table.splitlines() if line.startswith("*") and "best:" not in line]
    losses = [json.loads((d / "run.json").read_text())["metrics"].get("val/loss") for d in dirs]
    best = json.loads((dirs[0] / "run.json").read_text()).get("best") or {}
    assert best.get("score") is None  # statistics only: no checkpoint monitor, the lowest val/loss wins
    if all(v is None for v in losses):  # ... and without a loss nothing is "best"
        assert marked == []
    else:
        expected = min((i for i in range(2) if losses[i] is not None), key=lambda i: losses[i])
        assert len(marked) == 1 and marked[0].split()[1] == str(expected)


def test_a_failed_sweep_job_does_not_stop_the_others(workdir: Path, capsys) -> None:
    """200 bands from 2 x 16 x 16 training pixels cannot give a covariance: that job fails, the
    next one still runs, the summary says which, and the exit status is 1."""
    runs = workdir / "runs"
    code = main(["train", "-m", str(PIPELINES / "rx_statistical.yaml"), "data.params.n_bands=600,6",
                 *TINY_SYNTHETIC, *QUIET, "--runs-dir", str(runs)])
    captured = capsys.readouterr()
    assert code == 1
    (sweep,) = run_dirs(runs)
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["failed", "completed"]
    assert "job 0 failed:" in captured.err and "1 of 2 sweep jobs did not complete (jobs 0)" in captured.err
    assert_complete_run(sweep / "001")


def test_multirun_validates_every_job_before_running(workdir: Path, capsys) -> None:
    runs = workdir / "runs"
    code = main(["train", "-m", str(PIPELINES / "rx_statistical.yaml"), "nodes.rx.params.eps=1e-9,-1",
                 *TINY_SYNTHETIC, *QUIET, "--runs-dir", str(runs)])
    assert code == 1
    assert "eps must be >= 0" in capsys.readouterr().err
    assert not runs.exists()


# -- the bad-YAML catalogue ---------------------------------------------------------------------
BASE = """\
name: bad
nodes:
  norm: {type: MinMaxNormalizer}
  rx: {type: RXGlobal, params: {eps: 1.0e-9}, parent: norm}
  head: {type: RXLogitHead, parent: rx}
leaves:
  bce: {type: AnomalyBCEWithLogits, params: {pos_weight: 10.0}, parent: head}
  metrics: {type: AnomalyDetectionMetrics, parent: head}
data: {type: SyntheticHSIDataModule, params: {n_train: 2, n_val: 1, height: 16, width: 16}}
training: {trainer: {max_epochs: 1}}
"""


def _edit(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


NO_MASK_DATA = "data: {type: MatSceneDataModule, params: {path: TINY_MAT, mask_key: null}}"

# id -> (yaml text, overrides, substrings the single error message must contain)
CATALOGUE = {
    "syntax_error": ("name: bad\nnodes:\n  rx: {type: RXGlobal, parent: norm\n", [],
                     ["line 4, column 1", "YAML syntax error"]),
    "unknown_node_type": (_edit("type: RXGlobal", "type: RXGlobl"), [],
                          ["nodes.rx.type", "unknown node type 'RXGlobl'", "did you mean 'RXGlobal'"]),
    "misspelled_parent": (_edit("parent: norm", "parent: nrom"), [],
                          ["nodes.rx.parent", "unknown parent 'nrom'", "did you mean 'norm'"]),
    "cycle": (_edit("norm: {type: MinMaxNormalizer}", "norm: {type: MinMaxNormalizer, parent: head}"), [],
              ["cycle in the graph", "norm -> rx -> head -> norm"]),
    "wrong_param_type": (_edit("eps: 1.0e-9", "eps: tiny"), [],
                         ["nodes.rx.params.eps", "Input should be a valid number"]),
    "missing_required_param": (_edit("head: {type: RXLogitHead, parent: rx}",
                                     "head: {type: RXLogitHead, parent: sel}\n"
                                     "  sel: {type: SoftChannelSelector, parent: rx}"), [],
                               ["nodes.sel.params.n_select", "missing required parameter of SoftChannelSelector"]),
    "leaf_on_incompatible_parent": (_edit("leaves:", "leaves:\n  ortho: {type: OrthogonalityLoss, parent: rx}"), [],
                                    ["leaf 'ortho' (OrthogonalityLoss)", "no attribute 'components'"]),
    "channel_mismatch": (_edit("head: {type: RXLogitHead, parent: rx}", "head: {type: RXLogitHead, parent: norm}"),
                         [], ["node 'head'", "shape mismatch", "expects size 1, got 40"]),
    "unknown_override_key": (BASE, ["training.trainer.max_epoch=3"],
                             ["override 'training.trainer.max_epoch=3'", "did you mean 'max_epochs'"]),
    "target_os_system": (_edit("type: RXGlobal", "_target_: os.system"), [],
                         ["nodes.rx._target_", "'os.system' is refused"]),
    "target_subprocess": (_edit("type: RXGlobal", "_target_: subprocess.Popen"), [],
                          ["nodes.rx._target_", "'subprocess.Popen' is refused"]),
    "target_builtins_eval": (_edit("type: MinMaxNormalizer", "_target_: builtins.eval"), [],
                             ["nodes.norm._target_", "'builtins.eval' is refused"]),
    "target_unregistered_module": (_edit("type: RXGlobal", "_target_: evil_pkg.nodes.Detector"), [],
                                   ["nodes.rx._target_", "not allowlisted", "@cuvis_graph.register",
                                    "--allow-module evil_pkg.nodes"]),
    "duplicate_node_name": (_edit("  head:", "  rx: {type: RXGlobal, parent: norm}\n  head:"), [],
                            ["nodes.rx", "duplicate node name 'rx'", "line 5", "line 4"]),
    "empty_file": ("", [], ["the file is empty"]),
    "leaf_needs_mask": (_edit(BASE.splitlines()[8], NO_MASK_DATA), [],
                        ["leaf 'bce' (AnomalyBCEWithLogits)", "needs batch key 'mask'"]),
    "negative_epochs": (_edit("max_epochs: 1", "max_epochs: -1"), [],
                        ["training.trainer.max_epochs", "greater than or equal to 0"]),
    "negative_epochs_override": (BASE, ["training.trainer.max_epochs=-2"],
                                 ["training.trainer.max_epochs", "greater than or equal to 0"]),
    "unknown_top_level_key": (_edit("leaves:", "leafs:"), [], ["leafs: unknown key 'leafs'", "did you mean 'leaves'"]),
    "leaf_as_node": (_edit("type: RXLogitHead", "type: AnomalyHeatmap"), [],
                     ["nodes.head.type", "is a leaf, not a node"]),
    "sweep_without_multirun": (BASE, ["nodes.rx.params.eps=1e-9,1e-6"], ["sweeps several values", "-m/--multirun"]),
    "missing_scene_file": (_edit(BASE.splitlines()[8], NO_MASK_DATA.replace("TINY_MAT", "/no/such/scene.mat")), [],
                           ["data.params.path", "no such file"]),
    "loss_without_trainable_node": (_edit("head: {type: RXLogitHead, parent: rx}",
                                          "head: {type: RXLogitHead, params: {trainable: false}, parent: rx}"), [],
                                    ["training", "no node has trainable parameters"]),
    "invalid_param_value": (_edit("pos_weight: 10.0", "pos_weight: 10.0, reduction: median"), [],
                            ["leaves.bce.params", "reduction must be 'mean' or 'sum'"]),
}


def write_case(tmp_path: Path, text: str, tiny_mat: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace("TINY_MAT", str(tiny_mat)))
    return path


@pytest.mark.parametrize("case", list(CATALOGUE), ids=list(CATALOGUE))
def test_bad_yaml_catalogue(case: str, tmp_path: Path, tiny_mat: Path, workdir: Path, capsys) -> None:
    text, overrides, expected = CATALOGUE[case]
    path = write_case(tmp_path, text, tiny_mat)
    runs = tmp_path / "runs"
    for command in ("validate", "train"):
        args = [command, str(path), *overrides] + (["--runs-dir", str(runs)] if command == "train" else [])
        assert main(args) == 1, f"{command} accepted case {case}"
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert err.startswith("error: ") and sum(line.startswith("error:") for line in err.splitlines()) == 1, err
        assert "Traceback" not in err
        for part in expected:
            assert part in err, f"{part!r} not in {err!r}"
        assert str(path) in err  # the message names the file
    assert not runs.exists(), "a failed validation must not create a run directory"
    assert list(workdir.iterdir()) == []


def test_catalogue_covers_the_issue() -> None:
    assert len(CATALOGUE) >= 15


def test_debug_shows_the_traceback(tmp_path: Path, tiny_mat: Path, capsys) -> None:
    path = write_case(tmp_path, CATALOGUE["invalid_param_value"][0], tiny_mat)
    assert main(["validate", str(path), "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "reduction must be" in err
    assert main(["--debug", "validate", str(path)]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_console_script_reports_without_traceback(tmp_path: Path, tiny_mat: Path) -> None:
    env = {**os.environ, "MPLBACKEND": "Agg", "WANDB_MODE": "disabled"}
    bad = write_case(tmp_path, CATALOGUE["target_os_system"][0], tiny_mat)
    proc = subprocess.run([*CLI, "train", str(bad), "--runs-dir", str(tmp_path / "runs")], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stderr.strip().startswith("error: ")
    assert "nodes.rx._target_: _target_ 'os.system' is refused" in proc.stderr
    assert not (tmp_path / "runs").exists()
    proc = subprocess.run([*CLI, "validate", str(PIPELINES / "rx_statistical.yaml")], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "is valid" in proc.stdout, proc.stderr


def test_installed_entry_point_exists() -> None:
    script = Path(sys.executable).with_name("cuvis-graph")
    if not script.exists():
        pytest.skip(f"console script not installed next to {sys.executable} (pip install -e .)")
    assert "from cuvis_graph.cli import main" in script.read_text()


def test_a_failing_run_is_marked_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import cuvis_graph.core.registry as registry
    from cuvis_graph import Node, register

    monkeypatch.setattr(registry, "_CLASSES", dict(registry._CLASSES))

    @register
    class ExplodingNode(Node):
        def forward(self, x):
            raise RuntimeError("boom")

    path = tmp_path / "p.yaml"
    path.write_text(BASE.replace("head: {type: RXLogitHead, parent: rx}", "head: {type: ExplodingNode, parent: rx}")
                    .replace("bce: {type: AnomalyBCEWithLogits, params: {pos_weight: 10.0}, parent: head}\n", "")
                    .replace("max_epochs: 1", "max_epochs: 0"))
    runs = tmp_path / "runs"
    assert main(["train", str(path), *QUIET, "--runs-dir", str(runs)]) == 1
    err = capsys.readouterr().err
    (run_dir,) = run_dirs(runs)
    assert f"error: run {run_dir} failed: RuntimeError: boom" in err and "Traceback" not in err
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and (run_dir / "logs" / "traceback.txt").exists()


PLUGIN = """\
from cuvis_graph.nodes import RXGlobal


class ShiftedRX(RXGlobal):
    \"\"\"RX, user-defined.\"\"\"
"""


def test_allow_module_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    (tmp_path / "cg_cli_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cg_cli_plugin", raising=False)
    path = tmp_path / "p.yaml"
    path.write_text(BASE.replace("type: RXGlobal", "_target_: cg_cli_plugin.ShiftedRX"))
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "not allowlisted" in err and "--allow-module cg_cli_plugin" in err
    assert "cg_cli_plugin" not in sys.modules
    assert main(["validate", str(path), "--allow-module", "cg_cli_plugin"]) == 0
    assert main(["validate", str(path), "--allow-module", "os"]) == 1
    assert "--allow-module os: module 'os' can never be allowlisted" in capsys.readouterr().err
    sys.modules.pop("cg_cli_plugin", None)


# -- show / nodes / help ------------------------------------------------------------------------
def test_show_png(workdir: Path, capsys) -> None:
    out = workdir / "graph.png"
    assert main(["show", str(PIPELINES / "selector_rx_bce.yaml"), "--format", "png", "-o", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(out).shape
    assert width > 600 and height > 600
    assert main(["show", str(PIPELINES / "rx_statistical.yaml"), "--format", "png"]) == 0
    assert (workdir / "rx_statistical.png").exists()


def test_show_text_and_mermaid(capsys) -> None:
    assert main(["show", str(PIPELINES / "selector_rx_bce.yaml")]) == 0
    text = capsys.readouterr().out
    for part in ("SoftChannelSelector", "out [B,H,W,40]", "scores [B,H,W,1]", "leaf:loss", "batch.cube"):
        assert part in text
    assert main(["show", str(PIPELINES / "pca_gradient.yaml"), "--format", "mermaid"]) == 0
    mermaid = capsys.readouterr().out
    assert mermaid.startswith("flowchart TD") and "out [B,H,W,3]" in mermaid and "n_selector --> n_pca" in mermaid
    assert main(["show", str(PIPELINES / "pca_gradient.yaml"), "nodes.pca.params.n_components=5"]) == 0
    assert "out [B,H,W,5]" in capsys.readouterr().out


def test_show_reports_a_broken_graph(tmp_path: Path, tiny_mat: Path, capsys) -> None:
    path = write_case(tmp_path, CATALOGUE["cycle"][0], tiny_mat)
    assert main(["show", str(path), "--format", "png", "-o", str(tmp_path / "x.png")]) == 1
    assert "cycle in the graph" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_nodes_lists_the_registry(tmp_path: Path, capsys) -> None:
    assert main(["nodes"]) == 0
    text = capsys.readouterr().out
    for part in ("RXGlobal [statistical]", "inputs:  x [B,H,W,C]", "eps: float = 1e-12", "SoftChannelSelector",
                 "n_select: int (required)", "AnomalyBCEWithLogits [loss]", "FileMonitor", "MatSceneDataModule"):
        assert part in text
    out = tmp_path / "catalog.md"
    assert main(["nodes", "--markdown", "-o", str(out)]) == 0
    md = out.read_text()
    assert "## Nodes" in md and "### `RXGlobal` (statistical)" in md and "| `eps` | `float` | `1e-12` |" in md


@pytest.mark.parametrize("command", [[], ["train"], ["validate"], ["show"], ["nodes"]])
def test_help(command: list[str], capsys) -> None:
    assert main([*command, "--help"]) == 0
    assert "usage: cuvis-graph" in capsys.readouterr().out


def test_usage_errors(capsys) -> None:
    assert main([]) == 2
    assert main(["train"]) == 2
    assert main(["validate", str(PIPELINES / "rx_statistical.yaml"), "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


# -- real scenes --------------------------------------------------------------------------------
def _reference() -> dict[str, dict[str, str]]:
    if not REFERENCE.exists():
        return {}
    with open(REFERENCE, newline="") as fh:
        return {Path(r["file"]).stem: r for r in csv.DictReader(fh)}


SCENES = _reference()
SCENE_IDS = sorted(SCENES) or ["abu-airport-1", "abu-airport-4", "abu-beach-1", "abu-beach-3", "abu-urban-1"]


@pytest.mark.real
@pytest.mark.parametrize("scene", SCENE_IDS)
def test_rx_real_mat_reproduces_reference_auc(scene: str, workdir: Path, capsys) -> None:
    if scene not in SCENES or not (DATA / SCENES[scene]["file"]).exists():
        pytest.skip(f"shared ABU data not found at {DATA} (reference {REFERENCE.name}, scene {scene})")
    row = SCENES[scene]
    path = DATA / row["file"]
    runs = workdir / "runs"
    assert main(["train", str(PIPELINES / "rx_real_mat.yaml"), f"data.params.path={path}", *QUIET,
                 "--runs-dir", str(runs), "--save-predictions"]) == 0
    (run_dir,) = run_dirs(runs)
    record = assert_complete_run(run_dir)
    reference = float(row["rx_auc_float64"])
    assert record["metrics"]["val/metrics/auroc"] == pytest.approx(reference, abs=5e-4)
    predictions = np.load(run_dir / "predictions.npz")
    scores, mask = predictions["rx"], predictions["mask"]
    assert scores.shape[:3] == mask.shape == (1, int(row["height"]), int(row["width"]))
    auc = roc_auc_score(mask.reshape(-1) > 0, scores.reshape(-1))
    assert auc == pytest.approx(reference, abs=5e-4)
    n = mask.size
    assert scores.mean() == pytest.approx(int(row["bands"]) * (n - 1) / n, rel=1e-3)  # RX invariant
    print(f"{scene}: AUC {auc:.6f} (reference {reference:.6f})")
