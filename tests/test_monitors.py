"""TensorBoard and W&B monitors: files their own readers load; a missing backend is harmless."""

from __future__ import annotations

import sys
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from runs_helpers import RecordingMonitor, build_graph, config, datamodule  # noqa: E402

from cuvis_graph import VisualizationNode  # noqa: E402
from cuvis_graph.io.runs import read_run_json  # noqa: E402
from cuvis_graph.monitors import TensorBoardMonitor, WandBMonitor  # noqa: E402


class ScoreImage(VisualizationNode):
    """The first score map of the batch as an image."""

    def visualize(self, output, batch, parent):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.imshow(output[0, ..., 0].numpy())
        return {"scores": fig}


def test_tensorboard_event_files_hold_loss_curve_images_and_histograms(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    graph = build_graph()
    graph.add_leaf_node(ScoreImage(log_frequency=1), parent="rx", name="score_image")
    tb = graph.register_monitor(TensorBoardMonitor())
    run_dir = tmp_path / "run"
    graph.train(datamodule(), config(3), run_dir=run_dir)
    assert read_run_json(run_dir)["failures"] == []
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 3, 5]
    assert loss[-1].value < loss[0].value
    assert len(events.Scalars("val/det/auroc")) == 4  # after statistical init + 3 epochs
    assert "val/score_image/scores" in tags["images"]
    image = events.Images("val/score_image/scores")
    assert len(image) == 3 and image[0].width > 0  # one per epoch
    # the validation before training logs its figure under its own tag, not over epoch 0's
    assert [e.step for e in events.Images("initial/score_image/scores")] == [0]
    assert any(t.startswith("params/graph_nodes.rx.") for t in tags["histograms"])
    assert tb.root == run_dir / "tensorboard"
    assert sorted(p.name for p in (run_dir / "artifacts" / "val").iterdir())[0] == "score_image__scores_step0000.png"


def test_tensorboard_explicit_root_gets_one_version_per_run(tmp_path):
    for _ in range(2):
        graph = build_graph()
        graph.register_monitor(TensorBoardMonitor(tmp_path / "tb"))
        graph.train(datamodule(), config(1), run_dir=False)
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["version_0", "version_1"]


def test_wandb_offline_run_without_network_or_key(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc key
    graph = build_graph()
    graph.add_leaf_node(ScoreImage(log_frequency=2), parent="rx", name="score_image")
    wb = graph.register_monitor(WandBMonitor(project="cuvis-graph-test", tags=["ci"]))
    recorder = graph.register_monitor(RecordingMonitor())
    run_dir = tmp_path / "run"
    graph.train(datamodule(), config(2), run_dir=run_dir)
    record = read_run_json(run_dir)
    assert record["status"] == "completed" and record["failures"] == [], record["failures"]
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert list(offline[0].glob("*.wandb")), "no W&B event log written"
    assert wb._logger is None and recorder.closed


def test_wandb_package_missing_gives_one_warning_and_training_completes(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    graph = build_graph()
    graph.register_monitor(WandBMonitor())
    recorder = graph.register_monitor(RecordingMonitor())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = graph.train(datamodule(), config(2), run_dir=tmp_path / "run")
    ours = [w for w in caught if "wandb" in str(w.message)]
    assert len(ours) == 1 and "not installed" in str(ours[0].message)
    assert result.failures == [] and read_run_json(tmp_path / "run")["status"] == "completed"
    assert len(recorder.metrics) == 1 + 2 * 2


def test_wandb_online_without_key_falls_back_to_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monitor = WandBMonitor(mode="online", save_dir=tmp_path / "wb")
    with pytest.warns(RuntimeWarning, match="no W&B API key"):
        logger = monitor.logger
    assert logger._wandb_init["mode"] == "offline"
