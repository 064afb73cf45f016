"""DDP for graphs with nothing to train and for runs over several nodes, against one process.

* a statistics-only pipeline (MinMax -> RX, no parameter) under ``cuvis-graph train`` with
  2 CPU processes: its fitted buffers equal a single-process fit (1e-10 relative) and so do
  the validation metrics;
* 2 "nodes" x 1 process on localhost, started as Lightning documents (``NODE_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``), both naming one run directory: the
  statistics, the stage in which every node is frozen (a refit, no wrapper to build) and the
  validation metrics equal one process;
* too few training batches for the processes is refused before any process starts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_script import build_graph, datamodule
from runs_helpers import outputs_of

from cuvis_graph import Graph
from cuvis_graph.io.runs import read_run_json
from cuvis_graph.io.spec import load_pipeline
from cuvis_graph.train.distributed import distributed_trainer_kwargs, worker_rank

HERE = Path(__file__).parent
ROOT = HERE.parent
CLI = Path(sys.executable).parent / "cuvis-graph"
LAUNCH_ENV = ("LOCAL_RANK", "RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
              "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS", "CUVIS_GRAPH_DDP_RUN_DIR")
RX_DATA = ["data.params.n_train=5", "data.params.n_val=3", "data.params.n_test=0", "data.params.height=16",
           "data.params.width=16", "data.params.n_bands=12", "data.params.batch_size=2",
           "training.trainer.accelerator=cpu", "training.trainer.enable_progress_bar=false"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")])
    return {**env, **extra}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| in float64 (tensors near zero measured against 1e-5)."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-5))


def _differences(state: dict[str, torch.Tensor], graph: Graph, prefix: str = "") -> dict[str, float]:
    """Relative difference of every floating buffer / parameter of ``graph`` to ``state``."""
    out = {}
    for name, node in graph.nodes.items():
        for key, value in node.state_dict().items():
            if key == "_fitted" or value.numel() == 0 or not value.is_floating_point():
                continue
            other = state[f"{prefix}{name}.{key}"]
            assert other.shape == value.shape, (name, key)
            out[f"{name}.{key}"] = _rel(other, value)
    return out


def _report(what: str, diffs: dict[str, float]) -> None:
    print(f"\n{what}, max relative difference: " + ", ".join(f"{k} {r:.1e}" for k, r in diffs.items()))


# -- cheap: no process group ------------------------------------------------------------------
def test_worker_rank_reads_every_launcher(monkeypatch):
    for key in LAUNCH_ENV:
        monkeypatch.delenv(key, raising=False)
    assert worker_rank() == 0
    monkeypatch.setenv("NODE_RANK", "1")  # a second node started by hand, one process per node
    assert worker_rank() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert worker_rank() == 3
    monkeypatch.setenv("RANK", "5")  # torchrun
    assert worker_rank() == 5


@pytest.mark.parametrize(("strategy", "twin"), [("ddp", "cuvis_graph_ddp"), ("auto", "cuvis_graph_ddp"),
                                                ("ddp_find_unused_parameters_true",
                                                 "cuvis_graph_ddp_find_unused_parameters_true")])
def test_ddp_strategies_get_the_twin_without_a_needless_wrapper(strategy, twin):
    kwargs, world = distributed_trainer_kwargs({"accelerator": "cpu", "devices": 2, "strategy": strategy})
    assert (kwargs["strategy"], world) == (twin, 2)
    from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry

    entry = StrategyRegistry[twin]
    assert issubclass(entry["strategy"], DDPStrategy)
    assert entry["init_params"] == StrategyRegistry[strategy if strategy != "auto" else "ddp"]["init_params"]
    assert distributed_trainer_kwargs({"accelerator": "cpu", "devices": 1}) == ({"accelerator": "cpu", "devices": 1}, 1)


def test_too_few_batches_for_the_processes_is_refused_before_they_start(tmp_path):
    """3 training cubes in 2 batches cannot feed 4 processes: the error names the numbers and
    comes before Lightning starts any process."""
    proc = subprocess.run(
        [str(CLI), "train", str(ROOT / "pipelines" / "rx_statistical.yaml"), *RX_DATA, "data.params.n_train=3",
         "training.trainer.devices=4", "training.trainer.strategy=ddp", "--runs-dir", str(tmp_path / "runs")],
        env=_clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "with 4 processes needs at least 4 training batches" in output, output[-2000:]
    assert "the training loader has 2 of batch_size=2" in output, output[-2000:]
    assert "Initializing distributed" not in output  # no process group was started


# -- DDP runs -----------------------------------------------------------------------------------
def test_statistics_only_pipeline_under_ddp_equals_one_process(tmp_path):
    """The command of the bug report (tiny data): MinMax -> RX has no parameter at all."""
    proc = subprocess.run(
        [str(CLI), "train", str(ROOT / "pipelines" / "rx_statistical.yaml"), *RX_DATA, "training.trainer.devices=2",
         "training.trainer.strategy=ddp", "--runs-dir", str(tmp_path / "runs")],
        env=_clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "rx_statistical").iterdir()
    record = read_run_json(run_dir)
    assert record["status"] == "completed"

    single = load_pipeline(ROOT / "pipelines" / "rx_statistical.yaml", RX_DATA)
    result = single.graph.train(single.datamodule, single.training, run_dir=False)
    ddp_graph = Graph.load(run_dir / "model")
    state = {f"{n}.{k}": v for n, node in ddp_graph.nodes.items() for k, v in node.state_dict().items()}
    diffs = _differences(state, single.graph)
    _report("statistics-only DDP(2) vs one process", diffs)
    assert {"norm.min", "norm.max", "rx.mean", "rx.whitening"} <= set(diffs)
    assert max(diffs.values()) <= 1e-10, diffs
    assert result.initial_metrics and set(record["initial_metrics"]) == set(result.initial_metrics)
    for key, value in result.initial_metrics.items():
        assert record["initial_metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """``ddp_script.py OUT 1 nodes`` twice, NODE_RANK 0 and 1, as two nodes would run it."""
    out = tmp_path_factory.mktemp("nodes")
    env = _clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2",
                     CUVIS_GRAPH_DDP_RUN_DIR=str(out / "run"), CUVIS_GRAPH_RUNS_ROOT=str(out / "runs"))
    procs = [subprocess.Popen([sys.executable, str(HERE / "ddp_script.py"), str(out), "1", "nodes"],
                              env={**env, "NODE_RANK": str(rank)}, cwd=out, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs_of(procs)
    return out, json.loads((out / "result.json").read_text())


def test_two_nodes_share_one_run_directory(two_nodes):
    out, result = two_nodes
    assert sorted(p.name for p in out.iterdir()) == ["model", "result.json", "run"]  # node 1 wrote nothing else
    assert result["run_dir"] == str(out / "run")
    assert read_run_json(out / "run")["status"] == "completed"
    assert json.loads((out / "run" / "stage_state.json").read_text())["completed_stages"] == \
        ["statistics", "frozen", "train"]


def test_two_nodes_statistics_and_frozen_refit_equal_one_process(two_nodes):
    out, result = two_nodes
    single = build_graph()
    initial = single.train(datamodule(), {"trainer": {"max_epochs": 0, "accelerator": "cpu",
                                                      "enable_progress_bar": False}}, run_dir=False).initial_metrics
    for stage in ("statistics", "frozen"):  # the frozen stage refits RX and the head on the same data
        state = torch.load(out / "run" / "checkpoints" / stage / "final.ckpt", weights_only=True)["state_dict"]
        diffs = _differences(state, single, prefix="graph_nodes.")
        _report(f"2 nodes x 1 process vs one process, stage '{stage}'", diffs)
        assert {"norm.min", "pca.components", "rx.whitening", "head.score_mean"} <= set(diffs)
        assert max(diffs.values()) <= 1e-10, (stage, diffs)
    assert initial and set(result["initial_metrics"]) == set(initial)
    for key, value in initial.items():
        assert result["initial_metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


def test_two_nodes_validation_metrics_equal_one_process_on_same_weights(two_nodes):
    """The last epoch's validation over both nodes equals one process validating the weights
    that epoch ended with (the ``train`` stage's final checkpoint)."""
    out, result = two_nodes
    graph = Graph.load(out / "model")
    state = torch.load(out / "run" / "checkpoints" / "train" / "final.ckpt", weights_only=True)["state_dict"]
    for name, node in graph.nodes.items():
        node.load_state_dict({k[len(f"graph_nodes.{name}."):]: v for k, v in state.items()
                              if k.startswith(f"graph_nodes.{name}.")})
    single = graph.train(datamodule(), {"trainer": {"max_epochs": 0, "accelerator": "cpu",
                                                    "enable_progress_bar": False}}, run_dir=False)
    assert single.fit.passes == 0  # validated as they are
    ddp_val = {k: v for k, v in result["metrics"].items() if k.startswith("val/")}
    assert {"val/loss", "val/det/auroc", "val/det/f1"} <= set(ddp_val)
    for key, value in ddp_val.items():
        assert single.initial_metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
