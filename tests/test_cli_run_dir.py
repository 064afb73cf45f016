"""``cuvis-graph train --run-dir DIR``: one run folder named by the user, and the way every
process of a multi-node run names the same folder (rank 0 writes it, the others join it).

The 2-node x 1-process run of ``tests/test_ddp_every_graph.py`` is repeated through the real
command on both "nodes" (``NODE_RANK`` 0 and 1 on localhost, no ``CUVIS_GRAPH_DDP_RUN_DIR``):
one run directory, whose statistics equal a single-process run (1e-10 relative).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from runs_helpers import outputs_of
from test_ddp_every_graph import RX_DATA, _clean_env, _differences, _free_port, _report

from cuvis_graph import Graph
from cuvis_graph.io.runs import read_run_json
from cuvis_graph.io.spec import load_pipeline

ROOT = Path(__file__).parent.parent
CLI = Path(sys.executable).parent / "cuvis-graph"
PIPELINE = str(ROOT / "pipelines" / "rx_statistical.yaml")


def test_run_dir_and_multirun_are_exclusive(tmp_path):
    proc = subprocess.run([str(CLI), "train", "-m", PIPELINE, "training.optimizer.lr=0.1,0.01", "--run-dir",
                           str(tmp_path / "run")], env=_clean_env(), cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "argument --run-dir: not allowed with argument -m/--multirun" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_run_dir_is_created_and_trained_into(tmp_path):
    run_dir = tmp_path / "shared" / "exp1"
    proc = subprocess.run([str(CLI), "train", PIPELINE, *RX_DATA, "--run-dir", str(run_dir), "--runs-dir",
                           str(tmp_path / "runs")], env=_clean_env(), cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"run directory: {run_dir}" in proc.stdout
    assert read_run_json(run_dir)["status"] == "completed"
    assert (run_dir / "pipeline.yaml").is_file() and (run_dir / "model").is_dir()
    assert not (tmp_path / "runs").exists()  # no second folder under the runs root


def test_two_nodes_through_the_cli_share_one_run_directory(tmp_path):
    run_dir = tmp_path / "shared" / "run"
    nodes = [tmp_path / f"node{rank}" for rank in (0, 1)]
    env = _clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    command = [str(CLI), "train", PIPELINE, *RX_DATA, "training.trainer.num_nodes=2", "training.trainer.devices=1",
               "training.trainer.strategy=ddp", "--run-dir", str(run_dir)]
    procs = []
    for rank, cwd in enumerate(nodes):
        cwd.mkdir()
        procs.append(subprocess.Popen(command, env={**env, "NODE_RANK": str(rank)}, cwd=cwd, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = outputs_of(procs)
    for rank, text in enumerate(outputs):
        assert "configure_optimizers" not in text, f"node {rank}:\n{text[-3000:]}"
    assert f"run directory: {run_dir}" in outputs[0]
    assert [list(cwd.iterdir()) for cwd in nodes] == [[], []]  # neither node made a folder of its own
    assert list((tmp_path / "shared").iterdir()) == [run_dir]
    record = read_run_json(run_dir)
    assert record["status"] == "completed" and len(record["attempts"]) == 1

    single = load_pipeline(PIPELINE, RX_DATA)
    result = single.graph.train(single.datamodule, single.training, run_dir=False)
    ddp_graph = Graph.load(run_dir / "model")
    state = {f"{n}.{k}": v for n, node in ddp_graph.nodes.items() for k, v in node.state_dict().items()}
    diffs = _differences(state, single.graph)
    _report("2 nodes x 1 process through the CLI vs one process", diffs)
    assert {"norm.min", "norm.max", "rx.mean", "rx.whitening"} <= set(diffs)
    assert max(diffs.values()) <= 1e-10, diffs
    for key, value in result.initial_metrics.items():
        assert record["initial_metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
