"""Two CPU processes (gloo DDP) against one: statistical init of MinMax -> PCA -> RX -> head
is sharded and all-reduced to the single-process buffers (1e-10 relative) on 7 training
cubes (not divisible by 2); the validation metrics the 2-process run logs equal a
single-process validation of the same weights on the same 5 cubes; one run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_script import build_graph, datamodule

from cuvis_graph import Graph
from cuvis_graph.io.runs import read_run_json

HERE = Path(__file__).parent
pytestmark = pytest.mark.slow


def _run_script(out: Path, *args: str, timeout: float = 300) -> None:
    env = {**os.environ, "CUVIS_GRAPH_RUNS_ROOT": str(out / "runs"), "PYTHONPATH": os.pathsep.join(
        [str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")])}
    for key in ("LOCAL_RANK", "RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, str(HERE / "ddp_script.py"), str(out), "2", *args], env=env,
                          cwd=HERE.parent, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _run_script(out)
    return out, json.loads((out / "result.json").read_text())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|; tensors that are zero up to rounding (the mean of centred PCA
    scores is ~1e-10) are measured against 1e-5, far below the data's scale."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-5))


def test_ddp_statistical_init_equals_single_process(ddp_run):
    out, result = ddp_run
    run_dirs = list((out / "runs" / "ddp_pca_rx").iterdir())
    assert len(run_dirs) == 1, run_dirs  # rank 1 wrote no run directory of its own
    assert read_run_json(run_dirs[0])["status"] == "completed"
    state = torch.load(run_dirs[0] / "checkpoints" / "statistics" / "final.ckpt", weights_only=True)["state_dict"]

    single = build_graph()
    single.train(datamodule(), {"trainer": {"max_epochs": 0, "accelerator": "cpu", "enable_progress_bar": False}},
                 run_dir=False)
    compared = []
    for name, node in single.nodes.items():
        for key, value in node.state_dict().items():
            if key == "_fitted" or value.numel() == 0 or not value.is_floating_point():
                continue
            ddp_value = state[f"graph_nodes.{name}.{key}"]
            assert ddp_value.shape == value.shape, (name, key)
            assert _rel(ddp_value, value) <= 1e-10, (name, key, _rel(ddp_value, value))
            compared.append((f"{name}.{key}", _rel(ddp_value, value)))
    assert {"norm.min", "pca.mean", "pca.components", "rx.mean", "rx.whitening", "head.score_mean"} <= \
        {k for k, _ in compared}
    print("\nDDP vs single-process buffers, max relative difference: "
          + ", ".join(f"{k} {r:.1e}" for k, r in compared))
    assert result["fit_passes"] == 3  # norm and the PCA that folds it share a pass; rx; head
    # the validation right after statistical init, over both ranks, equals the single-process one
    single_initial = single.train(datamodule(), {"trainer": {"max_epochs": 0, "accelerator": "cpu",
                                                             "enable_progress_bar": False}},
                                  run_dir=False).initial_metrics
    assert set(result["initial_metrics"]) == set(single_initial) and single_initial
    for key, value in single_initial.items():
        assert result["initial_metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


def test_ddp_validation_metrics_equal_single_process_on_same_weights(ddp_run):
    out, result = ddp_run
    graph = Graph.load(out / "model")
    single = graph.train(datamodule(), {"trainer": {"max_epochs": 0, "accelerator": "cpu",
                                                    "enable_progress_bar": False}}, run_dir=False)
    assert single.fit.passes == 0  # the loaded weights are validated as they are
    ddp_val = {k: v for k, v in result["metrics"].items() if k.startswith("val/")}
    assert {"val/loss", "val/det/auroc", "val/det/f1", "val/det/average_precision"} <= set(ddp_val)
    for key, value in ddp_val.items():
        assert single.initial_metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


def test_cli_ddp_run_writes_one_run_directory(tmp_path):
    """``cuvis-graph train`` with 2 processes: rank 1 runs the command again and joins rank 0's
    run; the staged pipeline completes with one run directory and one report."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOCAL_RANK", "RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    cli = Path(sys.executable).parent / "cuvis-graph"
    proc = subprocess.run(
        [str(cli), "train", str(HERE.parent / "pipelines" / "selector_rx_staged.yaml"), "data.params.n_train=5",
         "data.params.n_val=3", "data.params.height=16", "data.params.width=16", "data.params.batch_size=2",
         "training.trainer.devices=2", "training.trainer.strategy=ddp", "training.trainer.accelerator=cpu",
         "training.stages.1.max_epochs=1", "training.stages.2.max_epochs=1",
         "training.trainer.enable_progress_bar=false", "--runs-dir", str(tmp_path / "runs")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "selector_rx_staged").iterdir()
    assert proc.stdout.count("run directory:") == 1 and str(run_dir) in proc.stdout
    assert read_run_json(run_dir)["status"] == "completed"
    assert json.loads((run_dir / "stage_state.json").read_text())["completed_stages"] == \
        ["statistics", "selector", "finetune"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # no per-rank output folders


def test_ddp_resume_of_a_run_without_stages_continues_on_every_rank(tmp_path):
    """Both ranks restore the same ``last.ckpt`` (rank 1 learns it from rank 0), so neither
    refits statistics alone and the resumed run trains epochs 2..3 to completion."""
    _run_script(tmp_path, "plain:1")
    _run_script(tmp_path, "resume:3", timeout=180)
    record = read_run_json(tmp_path / "run")
    assert record["status"] == "completed" and [a["status"] for a in record["attempts"]] == ["completed"] * 2
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    assert json.loads((tmp_path / "result.json").read_text())["fit_passes"] == 0
