"""The test split: evaluated at the end of training, by ``Graph.test`` and by ``cuvis-graph test``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

from cuvis_graph import Graph
from cuvis_graph.cli.app import main
from cuvis_graph.data import SyntheticHSIDataModule
from cuvis_graph.train.checkpoints import load_checkpoint

PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "selector_rx_bce.yaml"
DATA = {"n_train": 4, "n_val": 2, "n_test": 3, "height": 16, "width": 16, "batch_size": 2, "seed": 3}
OVERRIDES = [f"data.params.{k}={v}" for k, v in DATA.items()] + [
    "training.trainer.max_epochs=2", "training.trainer.enable_progress_bar=false"]


def _reference(graph: Graph, dm: SyntheticHSIDataModule, split: str = "test") -> dict[str, float]:
    """sklearn F1 (logits > 0) and AUROC of ``graph.predict`` on a split's scenes."""
    dataset = dm.test_set if split == "test" else dm.val_set
    logits = graph.predict(torch.stack(dataset.cubes))["head"].numpy().ravel()
    labels = torch.stack(dataset.masks).numpy().ravel() > 0
    return {"f1": f1_score(labels, logits > 0), "auroc": roc_auc_score(labels, logits)}


def _with_checkpoint(model: Path, checkpoint: Path) -> Graph:
    """The saved graph with the node weights of a Lightning checkpoint."""
    graph = Graph.load(model)
    state = load_checkpoint(checkpoint)["state_dict"]
    for name, node in graph.nodes.items():
        prefix = f"graph_nodes.{name}."
        node.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return graph


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    runs = tmp_path_factory.mktemp("runs")
    from contextlib import redirect_stdout
    from io import StringIO

    out = StringIO()
    with redirect_stdout(out):
        assert main(["train", str(PIPELINE), *OVERRIDES, "--runs-dir", str(runs)]) == 0
    (run_dir,) = [p for p in runs.glob("*/*") if p.is_dir()]
    return run_dir, out.getvalue()


def test_training_records_test_metrics_of_final_and_best_weights(trained_run) -> None:
    run_dir, printed = trained_run
    record = json.loads((run_dir / "run.json").read_text())
    metrics = record["metrics"]
    assert record["best"]["checkpoint"] == "checkpoints/best.ckpt"
    dm = SyntheticHSIDataModule(**DATA)
    dm.setup("test")
    for label, checkpoint in (("test", "last.ckpt"), ("test_best", "best.ckpt")):
        reference = _reference(_with_checkpoint(run_dir / "model", run_dir / "checkpoints" / checkpoint), dm)
        assert metrics[f"{label}/metrics/f1"] == pytest.approx(reference["f1"], abs=1e-6)
        assert metrics[f"{label}/metrics/auroc"] == pytest.approx(reference["auroc"], abs=1e-5)
        assert {f"{label}/loss", f"{label}/loss/bce", f"{label}/loss/entropy"} <= set(metrics)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tests = {line["stage"]: line for line in lines if line["stage"].startswith("test")}
    assert set(tests) == {"test", "test_best"}
    assert tests["test"]["step"] == max(line["step"] for line in lines)
    assert tests["test"]["metrics"]["test/metrics/f1"] == metrics["test/metrics/f1"]
    assert "test_best/metrics/f1" in printed and "test/metrics/auroc" in printed


def test_cli_test_on_the_saved_model_reproduces_the_run(trained_run, tmp_path: Path, capsys) -> None:
    run_dir, _ = trained_run
    record = json.loads((run_dir / "run.json").read_text())
    label = {"best": "test_best", "final": "test"}[record["model_weights"]["source"]]
    expected = {k.replace(label, "test", 1): v for k, v in record["metrics"].items() if k.startswith(f"{label}/")}
    for target in (run_dir, run_dir / "model"):
        out = tmp_path / f"{target.name}.json"
        assert main(["test", str(target), "-o", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["split"] == "test"
        assert result["metrics"] == expected  # the same floats
    assert "split 'test'" in capsys.readouterr().out


def test_cli_test_takes_data_overrides_and_falls_back_to_validation(trained_run, tmp_path: Path, capsys) -> None:
    run_dir, _ = trained_run
    out = tmp_path / "val.json"
    assert main(["test", str(run_dir), "data.params.n_test=0", "data.params.n_val=3", "-o", str(out)]) == 0
    assert "split 'val' (the data has no test split)" in capsys.readouterr().out
    metrics = json.loads(out.read_text())["metrics"]
    dm = SyntheticHSIDataModule(**{**DATA, "n_test": 0, "n_val": 3})
    dm.setup("fit")
    reference = _reference(Graph.load(run_dir / "model"), dm, split="val")
    assert metrics["val/metrics/f1"] == pytest.approx(reference["f1"], abs=1e-6)
    assert metrics["val/metrics/auroc"] == pytest.approx(reference["auroc"], abs=1e-5)


def test_cli_test_refuses_non_data_overrides(trained_run, capsys) -> None:
    run_dir, _ = trained_run
    assert main(["test", str(run_dir), "nodes.rx.params.eps=1.0"]) == 1
    assert "not a data override" in capsys.readouterr().err


def test_graph_test_matches_sklearn_and_names_the_split(tmp_path: Path) -> None:
    graph = Graph.from_yaml(PIPELINE)
    graph.train(SyntheticHSIDataModule(**DATA), {"trainer": {"max_epochs": 0, "enable_progress_bar": False}},
                run_dir=False)
    dm = SyntheticHSIDataModule(**DATA)
    metrics = graph.test(dm)
    reference = _reference(graph, dm)
    assert metrics["test/metrics/f1"] == pytest.approx(reference["f1"], abs=1e-6)
    assert metrics["test/metrics/auroc"] == pytest.approx(reference["auroc"], abs=1e-5)
    val = graph.test(SyntheticHSIDataModule(**{**DATA, "n_test": 0}))
    assert all(k.startswith("val/") for k in val) and np.isfinite(val["val/loss"])
