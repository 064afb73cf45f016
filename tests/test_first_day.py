"""A new user's first commands: seeing the composed config before running anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from cuvis_graph.cli.app import main

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipelines" / "selector_rx_bce.yaml"


def files_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


@pytest.mark.parametrize("command", ["train", "validate", "show"])
def test_cfg_job_prints_the_composed_pipeline_and_runs_nothing(command: str, tmp_path: Path, capsys,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([command, str(PIPELINE), "training=fast", "nodes.selector.params.n_select=7", "--cfg", "job"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    fast = yaml.safe_load((ROOT / "pipelines" / "training" / "fast.yaml").read_text())
    assert printed["nodes"]["selector"]["params"]["n_select"] == 7  # the override
    assert printed["training"]["trainer"]["max_epochs"] == fast["trainer"]["max_epochs"]  # the group
    assert printed["name"] == "selector_rx_bce"
    assert files_under(tmp_path) == []  # nothing written: no run folder, no picture


def test_cfg_job_with_a_sweep_prints_every_job(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", "-m", str(PIPELINE), "nodes.selector.params.n_select=3,5", "--cfg", "job"]) == 0
    out = capsys.readouterr().out
    jobs = [yaml.safe_load(part) for part in out.split("# job ")[1:]]
    assert [j["nodes"]["selector"]["params"]["n_select"] for j in jobs] == [3, 5]
    assert files_under(tmp_path) == []


def test_cfg_job_reports_a_bad_override_naming_it(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(PIPELINE), "nodes.selector.params.n_select=3=4", "--cfg", "job"]) == 1
    assert "override 'nodes.selector.params.n_select=3=4'" in capsys.readouterr().err


def test_runs_lists_every_run_newest_first_with_the_truth(tmp_path: Path, capsys) -> None:
    import json
    import shutil

    runs = tmp_path / "runs"
    tiny = ["data.params.n_train=2", "data.params.n_val=1", "data.params.n_test=0", "data.params.height=8",
            "data.params.width=8", "data.params.n_bands=5", "training.trainer.enable_progress_bar=false"]
    for _ in range(2):
        assert main(["train", str(ROOT / "pipelines" / "rx_statistical.yaml"), *tiny, "--runs-dir", str(runs)]) == 0
    first, second = sorted((runs / "rx_statistical").iterdir())
    dead = first.parent / "20000101_000000_000"  # started long ago, its process gone without a word
    shutil.copytree(first, dead)
    record = json.loads((dead / "run.json").read_text())
    record.update(status="running", started_at="2000-01-01T00:00:00+00:00", ended_at=None)
    record["attempts"][-1].update(status="running", pid=2**22 + 1)
    (dead / "run.json").write_text(json.dumps(record))
    broken = first.parent / "19990101_000000_000"
    broken.mkdir()
    (broken / "run.json").write_text("{trunc")
    capsys.readouterr()
    assert main(["runs", str(runs), "--watch"]) == 0  # nothing running: one table, then done
    lines = capsys.readouterr().out.strip().splitlines()
    header, rows = lines[0].split(), lines[1:]
    assert header[:4] == ["started", "pipeline", "status", "time"]
    assert [row.split()[-1] if "unreadable" not in row else "broken" for row in rows] == [
        f"rx_statistical/{second.name}", f"rx_statistical/{first.name}", "rx_statistical/20000101_000000_000",
        "broken"]
    statuses = [row.split()[3] for row in rows[:3]]
    assert statuses == ["completed", "completed", "killed"] and "unreadable" in rows[3] and "not valid JSON" in rows[3]
    metric = header[4]
    value = json.loads((second / "run.json").read_text())["metrics"][metric]
    assert rows[0].split()[5] == f"{value:.4g}"


def test_printed_metrics_put_threshold_free_ones_first_and_say_undefined() -> None:
    from cuvis_graph.cli.output import format_metrics as _format_metrics

    text = _format_metrics({"val/detection/f1": 0.5, "val/detection/auroc": 0.9, "val/loss": 1.0,
                            "val/detection/average_precision": None, "test/detection/auroc": 0.8})
    keys = [line.split()[0] for line in text.splitlines()]
    assert keys == ["test/detection/auroc", "val/detection/auroc", "val/detection/average_precision",
                    "val/detection/f1", "val/loss"]
    assert text.splitlines()[2].split()[1] == "undefined"


def test_the_best_sweep_job_follows_each_runs_monitor_mode(tmp_path: Path) -> None:
    import csv

    from cuvis_graph.cli.sweeps import SweepJob, best_job, format_summary, write_summary

    jobs = [SweepJob(0, ["lr=0.1"], status="completed", metrics={"val/det/auroc": 0.9, "val/loss": 0.3},
                     best={"monitor": "val/det/auroc", "mode": "max", "score": 0.91}),
            SweepJob(1, ["lr=0.01"], status="completed", metrics={"val/det/auroc": 0.95, "val/loss": 0.4},
                     best={"monitor": "val/det/auroc", "mode": "max", "score": 0.96}),
            SweepJob(2, ["lr=1"], status="failed", metrics={}, best=None, error="diverged")]
    assert best_job(jobs) is jobs[1]  # max mode: the higher score
    lines = format_summary(jobs).splitlines()
    assert [line.split()[1] for line in lines if line.startswith("*") and "best" not in line] == ["1"]
    assert lines[-1] == "* best: job 1 by val/det/auroc" and "(diverged)" in lines[3]
    for job in jobs[:2]:
        job.best = {**job.best, "mode": "min"}
    assert best_job(jobs) is jobs[0]  # min mode: the lower score
    rows = list(csv.DictReader(write_summary(tmp_path, jobs).open()))
    assert [r["status"] for r in rows] == ["completed", "completed", "failed"]
    assert float(rows[1]["val/det/auroc"]) == 0.95 and rows[2]["val/loss"] == ""


def test_train_says_where_the_artifacts_are(tmp_path: Path) -> None:
    from cuvis_graph import Graph
    from cuvis_graph.cli.output import artifact_lines as _artifact_lines
    from cuvis_graph.monitors import TensorBoardMonitor

    graph = Graph("g")
    graph.register_monitor(TensorBoardMonitor(tmp_path / "tb"))
    (tmp_path / "run" / "artifacts" / "val").mkdir(parents=True)
    (tmp_path / "run" / "artifacts" / "val" / "heatmap.png").write_bytes(b"png")
    lines = _artifact_lines(graph, tmp_path / "run")
    assert lines == [f"figures: {tmp_path / 'run' / 'artifacts'} (1 PNG)",
                     f"tensorboard: tensorboard --logdir {tmp_path / 'tb'} --host 127.0.0.1"]


PLUGIN = '''"""A user's node: scale the cube by a trained gain."""
import torch

from cuvis_graph import Node, PortSpec, register


@register
class Gain(Node):
    """y = g * x with one trained gain g."""

    INPUTS = {"x": PortSpec(("B", "H", "W", "C"), batch_key="cube", description="cube")}
    OUTPUTS = {"y": PortSpec(("B", "H", "W", "C"), description="scaled cube")}

    def __init__(self, gain: float = 1.0, name: str | None = None) -> None:
        super().__init__(name=name)
        self.gain = torch.nn.Parameter(torch.tensor(float(gain)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * x
'''

PIPELINE_WITH_PLUGIN = """\
name: day_one
nodes:
  gain: {type: Gain}
  rx: {type: RXGlobal, parent: gain}
  head: {type: RXLogitHead, parent: rx}
leaves:
  bce: {type: AnomalyBCEWithLogits, params: {pos_weight: 5.0}, parent: head}
  det: {type: AnomalyDetectionMetrics, parent: head}
data: {type: SyntheticHSIDataModule, params: {n_train: 2, n_val: 1, n_test: 0, height: 12, width: 12, n_bands: 6,
                                              batch_size: 1}}
training: {trainer: {max_epochs: 1, enable_progress_bar: false}}
"""


def test_first_day_from_help_to_a_compared_sweep_of_my_own_node(tmp_path: Path, capsys,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """In a fresh folder: --help shows the config groups, my own node runs with --plugin, a sweep
    writes a comparable summary, `runs` lists it, and the metrics read threshold-free first."""
    import csv
    import json

    monkeypatch.chdir(tmp_path)
    assert main(["train", str(PIPELINE), "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "config groups next to" in help_text and "training: default, fast, statistical" in help_text

    (tmp_path / "my_nodes.py").write_text(PLUGIN)
    (tmp_path / "day_one.yaml").write_text(PIPELINE_WITH_PLUGIN)
    assert main(["validate", "day_one.yaml"]) == 1  # the node is unknown until asked for
    assert "--plugin" in capsys.readouterr().err
    assert main(["validate", "day_one.yaml", "--plugin", "my_nodes.py"]) == 0
    # ... and the same from a shell, with the command `make demo` prints (no activated venv needed)
    import os
    import shlex
    import subprocess
    import sys

    from cuvis_graph.cli import demo
    bin_dir = Path(sys.executable).parent.resolve()
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p).resolve() != bin_dir)
    monkeypatch.setenv("PATH", path)
    command = demo.cli_command()
    shell = subprocess.run(f"{shlex.quote(command)} validate day_one.yaml --plugin my_nodes.py", shell=True,
                           capture_output=True, text=True, env={**os.environ, "MPLBACKEND": "Agg"})
    assert shell.returncode == 0 and "is valid" in shell.stdout, shell.stderr

    code = main(["train", "-m", "day_one.yaml", "training.optimizer.lr=0.01,0.001", "--plugin", "my_nodes.py",
                 "--runs-dir", "runs"])
    out = capsys.readouterr().out
    assert code == 0, out
    (sweep,) = (tmp_path / "runs" / "day_one").iterdir()
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [float(r["overrides"].split("=")[1]) for r in rows] == [0.01, 0.001]
    assert all(r["status"] == "completed" for r in rows)
    for row in rows:
        record = json.loads((Path(row["run_dir"]) / "run.json").read_text())
        assert float(row["val/det/auroc"]) == record["metrics"]["val/det/auroc"]
        meta = json.loads((Path(row["run_dir"]) / "model" / "meta.json").read_text())
        assert meta["plugins"] == [{"module": "my_nodes", "types": ["Gain"]}]
    table = out.split("sweep summary:")[1]
    assert table.index("val/det/auroc") < table.index("val/det/f1")  # threshold-free first

    assert main(["runs", "runs"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 3 and all("completed" in line for line in listed[1:])


ABU = ROOT.parent / "shared" / "data" / "abu" / "abu-urban-1.mat"


@pytest.mark.skipif(not ABU.exists(), reason="shared ABU data not found")
def test_metrics_on_a_real_scene_use_a_threshold_on_its_score_scale(tmp_path: Path, capsys) -> None:
    """RX scores of an AVIRIS scene are around 100-1000: F1 and specificity are computed at
    mean + 3 std of the scene's scores (not at 0.5, which called every pixel anomalous)."""
    import json

    import scipy.io
    from sklearn.metrics import f1_score

    from cuvis_graph import Graph

    assert main(["train", str(ROOT / "pipelines" / "rx_real_mat.yaml"), f"data.params.path={ABU}",
                 "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    (run_dir,) = (tmp_path / "runs" / "rx_real_mat").iterdir()
    metrics = json.loads((run_dir / "run.json").read_text())["metrics"]
    mat = scipy.io.loadmat(ABU)
    scores = Graph.load(run_dir / "model").predict(mat["data"].astype(np.float32))["rx"].double().numpy().ravel()
    threshold = scores.mean() + 3 * scores.std()
    truth = mat["map"].ravel() > 0
    assert metrics["val/metrics/threshold"] == pytest.approx(threshold, rel=1e-5)
    assert metrics["val/metrics/f1"] == pytest.approx(f1_score(truth, scores > threshold), abs=2e-3)
    assert metrics["val/metrics/specificity"] > 0.95 and metrics["val/metrics/f1"] > 0.3
    assert out.index("val/metrics/auroc") < out.index("val/metrics/f1")


@pytest.mark.parametrize("typed", ["selector_rx_bce", "selector_rx_bce.yaml", "pipelines/selector_rx_bce"])
def test_a_pipeline_named_without_its_folder_or_suffix_is_pointed_to(typed: str, tmp_path: Path, capsys,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "selector_rx_bce.yaml").write_text("name: x\n")
    monkeypatch.chdir(tmp_path)
    assert main(["validate", typed]) == 1
    assert "no such file; did you mean pipelines/selector_rx_bce.yaml?" in capsys.readouterr().err
    assert main(["validate", "nothing_like_it"]) == 1
    assert capsys.readouterr().err.rstrip().endswith("no such file")


def test_a_shipped_pipeline_copied_elsewhere_is_told_where_its_config_groups_are(tmp_path: Path, capsys,
                                                                                   monkeypatch) -> None:
    """A copy of a shipped pipeline outside pipelines/ misses its config groups (training/, data/):
    the error says where they are read from and how to fix it; doing what it says makes it valid."""
    import shutil

    mine = tmp_path / "mine.yaml"
    shutil.copy(PIPELINE, mine)
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(mine)]) == 1
    err = capsys.readouterr().err
    assert "Could not find 'data/synthetic'" in err or "Could not find 'training/default'" in err
    assert f"{tmp_path / 'data'} does not exist" in err or f"{tmp_path / 'training'} does not exist" in err
    assert f"copy the folders training/ and data/ of {PIPELINE.parent}" in err
    for group in ("training", "data"):
        shutil.copytree(PIPELINE.parent / group, tmp_path / group)
    assert main(["validate", str(mine)]) == 0
