"""Declarative training stages (pipelines/selector_rx_staged.yaml: statistics -> selector
only -> everything after a refit): frozen weights stay bit-identical, each stage trains
with its declared losses, the refit sees the stage's data, and a run killed in stage 2
resumes in stage 2 and ends equal to an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from runs_helpers import kill_when_marked
from stages_helpers import StageRecorder, staged_pipeline

from cuvis_graph import Graph, TrainingConfig
from cuvis_graph.errors import CompileError, ConfigError
from cuvis_graph.io.resume_check import ResumeError
from cuvis_graph.io.runs import read_run_json

HERE = Path(__file__).parent
NODES = {"norm", "selector", "rx", "head"}


def _node_tensors(state: dict[str, torch.Tensor], node: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.split(".", 1)[0] == node}


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    pipeline = staged_pipeline()
    recorder = StageRecorder()
    run_dir = tmp_path_factory.mktemp("staged") / "run"
    result = pipeline.graph.train(pipeline.datamodule, pipeline.training, callbacks=[recorder], run_dir=run_dir)
    return pipeline, recorder, result, run_dir


def test_only_declared_nodes_change_in_each_stage(staged):
    _, recorder, result, _ = staged
    selector_fit, finetune_fit = recorder.fits  # the statistics stage runs no Lightning fit
    assert selector_fit["frozen"] == NODES - {"selector"}
    assert finetune_fit["frozen"] == set()
    for fit in recorder.fits:
        for node in NODES:
            before, after = _node_tensors(fit["before"], node), _node_tensors(fit["after"], node)
            assert before.keys() == after.keys()
            same = all(torch.equal(before[k], after[k]) for k in before)
            if node in fit["frozen"]:
                assert same, f"frozen node '{node}' changed: {[k for k in before if not torch.equal(before[k], after[k])]}"
    changed = lambda fit, key: not torch.equal(fit["before"][key], fit["after"][key])  # noqa: E731
    assert changed(selector_fit, "selector.logits")
    assert changed(finetune_fit, "selector.logits") and changed(finetune_fit, "rx.factor_update")
    assert changed(finetune_fit, "head.alpha")
    assert result.stages["selector"]["trainable"] == ["selector"]
    assert set(result.stages["finetune"]["trainable"]) == {"selector", "rx", "head"}


def test_each_stage_trains_with_its_declared_losses(staged):
    _, recorder, _, run_dir = staged
    assert [fit["losses"] for fit in recorder.fits] == [{"bce": 1.0, "entropy": 0.05}, {"bce": 1.0}]
    state = json.loads((run_dir / "stage_state.json").read_text())
    assert state["completed_stages"] == ["statistics", "selector", "finetune"] and state["current_stage"] is None
    info = state["stage_info"]
    assert (info["selector"]["start_step"], info["finetune"]["start_step"]) == (0, info["selector"]["steps"])
    declared = {"selector": {"train/loss/bce", "train/loss/entropy"}, "finetune": {"train/loss/bce"}}
    for name, keys in declared.items():
        start, steps = info[name]["start_step"], info[name]["steps"]
        logged = {k for line in _lines(run_dir) if line["stage"] == "train" and start <= line["step"] < start + steps
                  for k in line["metrics"] if k.startswith("train/loss/")}
        assert logged == keys | {f"{k}_step" for k in keys}, name  # epoch means and per-step values
    assert [int(s) for s in sorted({line["step"] for line in _lines(run_dir)})] == \
        sorted({line["step"] for line in _lines(run_dir)})  # one step axis across stages
    for name in ("statistics", "selector", "finetune"):
        assert (run_dir / info[name]["checkpoint"]).is_file()


def test_refit_fits_rx_on_the_selection_the_stage_starts_with(staged):
    pipeline, recorder, _, _ = staged
    selector_fit, finetune_fit = recorder.fits
    graph = Graph.from_yaml(pipeline.config)  # a twin with the weights at the end of stage 2
    for name, node in graph.nodes.items():
        node.load_state_dict({k.split(".", 1)[1]: v for k, v in selector_fit["after"].items()
                              if k.split(".", 1)[0] == name})
    dm = pipeline.datamodule
    batches = list(dm.train_dataloader())
    outputs = [graph.predict(batch["cube"], output="selector").double() for batch in batches]
    pixels = np.concatenate([o.reshape(-1, o.shape[-1]).numpy() for o in outputs])
    background = np.concatenate([b["mask"].reshape(-1).numpy() == 0 for b in batches])
    pixels = pixels[background]  # a loss trains on the mask: RX fits the background (use_background_mask="auto")
    refit_mean = finetune_fit["before"]["rx.mean"].numpy()
    np.testing.assert_allclose(refit_mean, pixels.mean(axis=0), rtol=1e-6, atol=1e-9)
    assert not np.allclose(refit_mean, selector_fit["before"]["rx.mean"].numpy(), rtol=1e-6)
    assert float(finetune_fit["before"]["rx.factor_update"].abs().max()) == 0.0  # trainable part starts at identity


def test_stage_names_are_checked_before_a_run_directory_exists(tmp_path):
    pipeline = staged_pipeline()
    config = pipeline.training.model_copy(update={"stages": [
        pipeline.training.stages[0].model_copy(update={"refit": ["rxx"]}),
        pipeline.training.stages[1].model_copy(update={"trainable": ["selectr"], "losses": ["metrics"]})]})
    with pytest.raises(CompileError) as err:  # with any graph problem, in one error
        pipeline.graph.train(pipeline.datamodule, config, runs_root=tmp_path)
    text = str(err.value)
    assert "3 problems" in text
    assert "training.stages.0.refit: no node 'rxx'" in text and "did you mean 'rx'" in text
    assert "training.stages.1.trainable: no node 'selectr'" in text
    assert "training.stages.1.losses: leaf 'metrics' is a AnomalyDetectionMetrics, not a loss" in text
    assert not any(tmp_path.iterdir())


def test_stage_config_rejects_both_trainable_and_frozen():
    with pytest.raises(ConfigError, match=r"training.stages.0: .*either 'trainable' or 'frozen'"):
        from cuvis_graph.train.config import parse_config

        parse_config(TrainingConfig, {"stages": [{"name": "a", "trainable": ["x"], "frozen": ["y"]}]})


@pytest.mark.slow
def test_kill_in_stage_2_resumes_in_stage_2_and_ends_equal(staged, tmp_path):
    _, _, straight, run0 = staged
    run_dir, marker = tmp_path / "run", tmp_path / "marker"
    kill_when_marked(HERE / "stages_child.py", run_dir, marker)
    state = json.loads((run_dir / "stage_state.json").read_text())
    assert state["completed_stages"] == ["statistics"] and state["current_stage"] == "selector"
    assert torch.load(run_dir / "checkpoints" / "selector" / "last.ckpt", weights_only=True)["epoch"] == 0

    pipeline = staged_pipeline()
    recorder = StageRecorder()
    result = pipeline.graph.train(pipeline.datamodule, pipeline.training, resume=run_dir, callbacks=[recorder])
    assert result.fit.passes == 0  # statistics came from the checkpoint
    assert len(recorder.fits) == 2 and recorder.fits[0]["frozen"] == NODES - {"selector"}  # stage 2 again
    s0 = straight_graph_state(staged)
    s1 = {f"{n}.{k}": v for n, node in pipeline.graph.nodes.items() for k, v in node.state_dict().items()}
    assert s0.keys() == s1.keys()
    for key in s0:
        assert torch.equal(s0[key], s1[key]), (key, (s0[key].double() - s1[key].double()).abs().max())
    assert result.metrics == straight.metrics
    strip = lambda lines: [(d["stage"], d["step"], d["metrics"]) for d in lines]  # noqa: E731
    assert strip(_lines(run_dir)) == strip(_lines(run0))
    record = read_run_json(run_dir)
    assert record["status"] == "completed" and [a["status"] for a in record["attempts"]] == ["killed", "completed"]
    print(f"\nstage-2 kill/resume: final val/loss straight={straight.metrics['val/loss']!r} "
          f"resumed={result.metrics['val/loss']!r}; {len(s0)} tensors equal")


def straight_graph_state(staged) -> dict[str, torch.Tensor]:
    pipeline = staged[0]
    return {f"{n}.{k}": v for n, node in pipeline.graph.nodes.items() for k, v in node.state_dict().items()}


def test_a_refit_only_stage_reports_metrics_of_the_refitted_graph(tmp_path):
    pipeline = staged_pipeline("training.stages.1.max_epochs=1")
    stages = pipeline.training.stages
    refit_only = stages[2].model_copy(update={"name": "refit", "max_epochs": 0})
    config = pipeline.training.model_copy(update={"stages": [stages[0], stages[1], refit_only]})
    result = pipeline.graph.train(pipeline.datamodule, config, run_dir=tmp_path / "run")
    assert result.stages["refit"]["refit"] == ["rx", "head"] and result.stages["refit"]["steps"] == 0
    after = pipeline.graph.train(pipeline.datamodule, {"trainer": {"max_epochs": 0, "enable_progress_bar": False}},
                                 run_dir=False)
    assert after.fit.passes == 0
    for key in ("val/loss/bce", "val/metrics/auroc"):  # (the stage's val/loss sums its own losses: bce only)
        assert result.metrics[key] == pytest.approx(after.initial_metrics[key], rel=1e-6), key
    assert result.metrics["val/loss/bce"] != result.stages["selector"]["metrics"]["val/loss/bce"]


def test_train_refits_only_the_named_nodes():
    pipeline = staged_pipeline()
    graph, dm = pipeline.graph, pipeline.datamodule
    quick = {"trainer": {"max_epochs": 0, "enable_progress_bar": False}}
    graph.train(dm, quick, run_dir=False)
    norm_min = graph["norm"].min.clone()
    with torch.no_grad():
        graph["rx"].mean.add_(1.0)  # a stale statistic
        graph["norm"].min.add_(1.0)
    result = graph.train(dm, quick, run_dir=False, refit=["rx"])
    assert result.fit.levels == [["rx"]] and result.fit.passes == 1
    assert torch.equal(graph["norm"].min, norm_min + 1.0)  # not refitted
    batches = list(dm.statistics_dataloader())
    outputs = [graph.predict(b["cube"], output="selector").double() for b in batches]
    pixels = torch.cat([o.reshape(-1, o.shape[-1]) for o in outputs])
    pixels = pixels[torch.cat([b["mask"].reshape(-1) == 0 for b in batches])]  # background: a loss reads the mask
    torch.testing.assert_close(graph["rx"].mean, pixels.mean(0), rtol=1e-9, atol=1e-12)


def test_a_frozen_refit_stage_fits_on_what_inference_sees():
    """``trainable: []`` freezes everything: the refit runs the hard selector in eval mode
    (its top-k mask), so RX's mean is the mean of the inference-time selection."""
    pipeline = staged_pipeline("nodes.selector.params.hard=true")
    stages = pipeline.training.stages
    harden = stages[2].model_copy(update={"name": "harden", "max_epochs": 0, "trainable": [], "refit": ["rx"]})
    config = pipeline.training.model_copy(update={"stages": [stages[0], stages[1], harden]})
    graph, dm = pipeline.graph, pipeline.datamodule
    graph.train(dm, config, run_dir=False)
    batches = list(dm.statistics_dataloader())
    outputs = [graph.predict(b["cube"], output="selector").double() for b in batches]
    pixels = torch.cat([o.reshape(-1, o.shape[-1]) for o in outputs])
    assert int((pixels.abs().sum(0) > 0).sum()) == 4  # n_select=4 bands pass the hard mask
    pixels = pixels[torch.cat([b["mask"].reshape(-1) == 0 for b in batches])]  # background: a loss reads the mask
    torch.testing.assert_close(graph["rx"].mean, pixels.mean(0), rtol=1e-9, atol=1e-12)


def test_resuming_a_finished_staged_run_is_refused_and_changes_nothing(staged):
    _, _, straight, run0 = staged
    before = {p: p.read_bytes() for p in run0.rglob("*") if p.is_file()}
    pipeline = staged_pipeline()
    with pytest.raises(ResumeError, match="already completed, all stages .* are done; nothing to resume"):
        pipeline.graph.train(pipeline.datamodule, pipeline.training, resume=run0)
    assert {p: p.read_bytes() for p in run0.rglob("*") if p.is_file()} == before
