"""Faults of runs, signals, resume and diverged training: nothing is lost, the record tells the truth.

Each case asserts the exit status, the one error line naming the place, what ``run.json``
says (read raw and through :func:`read_run_json`, the one reader) and, where something could
be written, that nothing outside the intended folders changed. Signals and concurrency use
real ``cuvis-graph`` processes; everything else runs in-process.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cuvis_graph.io.run_resume import open_run
from cuvis_graph.io.runs import RunRecordError, read_run_json
from cuvis_graph.monitors.file import FileMonitor

from .conftest import (
    CLI_COMMAND,
    PIPELINES,
    QUIET,
    TINY_SYNTHETIC,
    Outcome,
    TreeSnapshot,
    cli,
    cli_env,
    cli_process,
)

PIPELINE = PIPELINES / "selector_rx_bce.yaml"
OVERRIDES = [*TINY_SYNTHETIC, *QUIET, "nodes.selector.params.n_select=3", "training.trainer.accelerator=cpu"]
TRAIN = ["train", PIPELINE, *OVERRIDES, "--runs-dir", "runs"]  # (a later --runs-dir wins)
ENOSPC = os.strerror(errno.ENOSPC)  # "No space left on device"


def raw_status(run_dir: Path) -> str:
    return json.loads((run_dir / "run.json").read_text())["status"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``runs/`` holding one completed 1-epoch run of the pipeline (copied by :func:`a_run`)."""
    from cuvis_graph.cli.app import main

    root = tmp_path_factory.mktemp("template") / "runs"
    assert main([str(a) for a in TRAIN] + ["training.trainer.max_epochs=1", "--runs-dir", str(root)]) == 0
    return root


def a_run(trained: Path, workdir: Path) -> Path:
    """A copy of the completed run under ``workdir/runs``; returns its folder."""
    shutil.copytree(trained, workdir / "runs")
    (run_dir,) = (workdir / "runs" / "selector_rx_bce").iterdir()
    return run_dir


# -- resume: what it names must be a run, its checkpoint loadable, its pipeline the same ----------
def test_resume_of_a_folder_that_is_not_a_run_refuses_and_leaves_it_untouched(workdir, capsys):
    folder = workdir / "my_experiment"
    folder.mkdir()
    (folder / "pipeline.yaml").write_text("name: mine\n# the user's own notes\n")
    before = TreeSnapshot(workdir)
    outcome = cli([*TRAIN, "--resume", folder], capsys)
    outcome.fails_naming(str(folder), "not a run folder (no run.json)")
    before.assert_unchanged()


@pytest.mark.parametrize("damage, named", [
    (lambda text: text[: len(text) // 2], "not valid JSON"),
    (lambda text: json.dumps({"run_id": "x", "attempts": []}), "field 'status' is missing"),
    (lambda text: json.dumps({**json.loads(text), "status": "exploded"}), "field 'status' is 'exploded'"),
], ids=["truncated", "missing-field", "unknown-status"])
def test_resume_with_a_corrupt_run_json_names_the_file_and_the_field(damage, named, trained, workdir, capsys):
    run_dir = a_run(trained, workdir)
    record = run_dir / "run.json"
    record.write_text(damage(record.read_text()))
    before = TreeSnapshot(workdir)
    cli([*TRAIN, "--resume", run_dir], capsys).fails_naming(str(record), named)
    before.assert_unchanged()


def test_resume_from_a_ckpt_file_continues_the_run_it_belongs_to(trained, workdir, capsys):
    run_dir = a_run(trained, workdir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    outcome = cli([*TRAIN, "training.trainer.max_epochs=2", "--resume", ckpt], capsys)
    assert outcome.rc == 0, outcome.err
    assert list((workdir / "runs" / "selector_rx_bce").iterdir()) == [run_dir]  # no fresh run next to it
    record = read_run_json(run_dir)
    assert record["status"] == "completed" and record["epochs"] == 2
    assert [a["resumed_from"] for a in record["attempts"]] == [None, str(ckpt)]


def test_resume_from_a_ckpt_outside_any_run_refuses(trained, workdir, capsys):
    run_dir = a_run(trained, workdir)
    stray = workdir / "copies" / "keep.ckpt"
    stray.parent.mkdir()
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", stray)
    before = TreeSnapshot(workdir)
    cli([*TRAIN, "--resume", stray], capsys).fails_naming(str(stray), "not inside a run folder")
    before.assert_unchanged()


def test_resume_from_a_truncated_checkpoint_names_it(trained, workdir, capsys):
    run_dir = a_run(trained, workdir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # what a full disk or a kill of a non-atomic copy leaves
    before = TreeSnapshot(workdir)
    cli([*TRAIN, "training.trainer.max_epochs=2", "--resume", run_dir], capsys).fails_naming(
        str(ckpt), "not a complete checkpoint file")
    before.assert_unchanged()


class Payload:
    """An object a weights-only load must refuse to unpickle."""


def test_resume_from_a_pickled_checkpoint_is_refused_without_suggesting_to_unpickle(trained, workdir, capsys):
    run_dir = a_run(trained, workdir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    torch.save({**state, "payload": Payload()}, ckpt)
    before = TreeSnapshot(workdir)
    line = cli([*TRAIN, "training.trainer.max_epochs=2", "--resume", run_dir], capsys).fails_naming(
        str(ckpt), "Payload", "weights-only")
    assert "weights_only=False" not in line and "weights_only" not in line
    before.assert_unchanged()


@pytest.mark.parametrize("change, named", [
    (["data.params.n_bands=7"], "data.params.n_bands: 6 -> 7"),
    (["nodes.selector.params.n_select=2"], "nodes.selector.params.n_select: 3 -> 2"),
    (["~leaves.heatmap"], "leaves.heatmap.params.log_frequency: 2 -> '(absent)'"),
    (["training.optimizer.lr=0.5"], "training.optimizer.lr"),
], ids=["channels", "node-param", "removed-leaf", "optimizer"])
def test_resume_with_another_pipeline_refuses_naming_the_difference(change, named, trained, workdir, capsys):
    run_dir = a_run(trained, workdir)
    before = TreeSnapshot(workdir)
    cli([*TRAIN, *change, "training.trainer.max_epochs=2", "--resume", run_dir], capsys).fails_naming(
        str(run_dir), "pipeline differs", named)
    before.assert_unchanged()  # the completed run's metrics, model and record are kept


def test_resume_of_a_run_recorded_before_a_parameter_existed_continues(trained, workdir, capsys):
    """A field a newer cuvis-graph added (absent from the recorded config, at its default now)
    is not a change of the run; a node or leaf missing on one side still is."""
    import yaml

    run_dir = a_run(trained, workdir)
    config_file = run_dir / "config.yaml"
    recorded = yaml.safe_load(config_file.read_text())
    del recorded["training"]["checkpoint"]["keep_last"]
    del recorded["training"]["optimizer"]["weight_decay"]
    config_file.write_text(yaml.safe_dump(recorded, sort_keys=False))
    outcome = cli([*TRAIN, "training.trainer.max_epochs=2", "--resume", run_dir], capsys)
    assert outcome.rc == 0, outcome.err
    assert read_run_json(run_dir)["epochs"] == 2


def test_resume_of_a_completed_run_says_so_and_changes_nothing(trained, workdir, capsys):
    run_dir = a_run(trained, workdir)
    before = TreeSnapshot(workdir)
    cli([*TRAIN, "training.trainer.max_epochs=1", "--resume", "auto"], capsys).fails_naming(
        str(run_dir), "already completed", "training.trainer.max_epochs=1")
    before.assert_unchanged()


# -- the run folder itself -------------------------------------------------------------------------
def test_runs_dir_that_is_a_file_is_named(workdir, capsys):
    target = workdir / "runs.txt"
    target.write_text("not a folder\n")
    before = TreeSnapshot(workdir)
    cli([*TRAIN, "--runs-dir", target], capsys).fails_naming(str(target), "is a file, not a folder", "--runs-dir")
    before.assert_unchanged()


def test_runs_dir_not_writable_is_named(workdir, capsys, monkeypatch):
    root = workdir / "readonly"
    mkdir = Path.mkdir

    def refuse(self: Path, *args, **kwargs):  # root may write anywhere: the file system refuses for it
        if self == root or root in self.parents:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    before = TreeSnapshot(workdir)
    cli([*TRAIN, "--runs-dir", root], capsys).fails_naming(str(root), os.strerror(errno.EACCES), "writable")
    before.assert_unchanged()


def test_a_pipeline_name_cannot_place_its_runs_outside_the_runs_root(tmp_path):
    root = tmp_path / "runs"
    before = TreeSnapshot(tmp_path)
    for name in ("..", "...", "a/../../x"):
        run = None
        try:
            run = open_run(name, root=root)
        except RunRecordError as exc:
            assert str(root) in str(exc)
        if run is not None:  # a name that was made safe stays inside the root
            assert root.resolve() in run.path.resolve().parents
    assert not [c for c in before.changes() if not c.startswith("runs")]


# -- disk full -------------------------------------------------------------------------------------
def _full_disk_after(monkeypatch, calls: int) -> None:
    """``metrics.jsonl`` writes fail with ENOSPC from the ``calls``-th on."""
    original, count = FileMonitor.log_metrics, [0]

    def write(self, *args):
        count[0] += 1
        if count[0] >= calls:
            raise OSError(errno.ENOSPC, ENOSPC, str(self.metrics_path))
        return original(self, *args)

    monkeypatch.setattr(FileMonitor, "log_metrics", write)


def test_disk_full_while_writing_metrics_fails_the_run_and_says_so(workdir, capsys, monkeypatch):
    _full_disk_after(monkeypatch, calls=2)  # the initial validation is written, the first epoch is not
    outcome = cli([*TRAIN, "training.trainer.max_epochs=3"], capsys)
    (run_dir,) = (workdir / "runs" / "selector_rx_bce").iterdir()
    outcome.fails_naming(str(run_dir), "metrics.jsonl", ENOSPC)
    record = read_run_json(run_dir)
    assert raw_status(run_dir) == record["status"] == "failed"
    assert "metrics.jsonl" in record["error"]["message"] and ENOSPC in record["error"]["message"]
    assert not (run_dir / "model").exists()
    monkeypatch.undo()  # space freed: the run continues, its record one attempt's lines, each once
    assert cli([*TRAIN, "training.trainer.max_epochs=3", "--resume", run_dir], capsys).rc == 0
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = [(d["stage"], d["step"], tuple(sorted(d["metrics"]))) for d in lines]
    assert len(keys) == len(set(keys)) and read_run_json(run_dir)["status"] == "completed"
    assert max(d["step"] for d in lines) > 0


def test_disk_full_even_for_run_json_leaves_a_record_the_reader_tells_truthfully(workdir, capsys, monkeypatch):
    from cuvis_graph.io import runs
    _full_disk_after(monkeypatch, calls=2)
    save = runs.Run.save

    def save_unless_failing(self):
        if self.record["status"] == "failed":
            raise OSError(errno.ENOSPC, ENOSPC, str(self.path / "run.json"))
        return save(self)

    monkeypatch.setattr(runs.Run, "save", save_unless_failing)
    outcome = cli([*TRAIN, "training.trainer.max_epochs=3"], capsys)
    (run_dir,) = (workdir / "runs" / "selector_rx_bce").iterdir()
    outcome.fails_naming(str(run_dir), "metrics.jsonl", ENOSPC)
    assert raw_status(run_dir) == "running"  # the file could not be updated ...
    record = read_run_json(run_dir)  # ... but nobody is running it, and the reader says so
    assert record["status"] == "failed" and "without recording its outcome" in record["error"]["message"]
    assert not (run_dir / "lock").exists()


# -- diverged training -----------------------------------------------------------------------------
def test_divergence_by_a_huge_learning_rate_fails_naming_step_and_loss(workdir, capsys):
    outcome = cli([*TRAIN, "training.optimizer.lr=1e30", "training.trainer.max_epochs=3"], capsys)
    (run_dir,) = (workdir / "runs" / "selector_rx_bce").iterdir()
    line = outcome.fails_naming(str(run_dir), "training diverged at step", "'bce'", "training.optimizer.lr",
                                "node '")
    record = read_run_json(run_dir)
    assert record["status"] == "failed" and "diverged" in record["error"]["message"]
    assert not (run_dir / "model").exists()  # the diverged weights are not the run's model
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):  # what was checkpointed is finite
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), (ckpt, line)


@pytest.mark.parametrize("where", ["before-forward", "after-optimizer-step"])
def test_nan_injected_in_weights_fails_naming_the_node(where, workdir, capsys, monkeypatch):
    from cuvis_graph.nodes import SoftChannelSelector

    selectors: list[SoftChannelSelector] = []
    init = SoftChannelSelector.__init__

    def remember(self, *args, **kwargs):
        init(self, *args, **kwargs)
        selectors.append(self)

    monkeypatch.setattr(SoftChannelSelector, "__init__", remember)
    steps = [0]

    def poison() -> None:
        with torch.no_grad():
            next(selectors[-1].parameters()).view(-1)[0] = float("nan")

    if where == "before-forward":
        forward = SoftChannelSelector.forward

        def poisoned_forward(self, *args, **kwargs):
            if self.training and torch.is_grad_enabled():  # a training step, not a statistics pass
                steps[0] += 1
                if steps[0] == 3:
                    poison()
            return forward(self, *args, **kwargs)

        monkeypatch.setattr(SoftChannelSelector, "forward", poisoned_forward)
    else:
        step = torch.optim.Adam.step

        def poisoned_step(self, *args, **kwargs):
            out = step(self, *args, **kwargs)
            steps[0] += 1
            if steps[0] == 3:
                poison()
            return out

        monkeypatch.setattr(torch.optim.Adam, "step", poisoned_step)
    outcome = cli([*TRAIN, "training.trainer.max_epochs=4"], capsys)
    (run_dir,) = (workdir / "runs" / "selector_rx_bce").iterdir()
    name = next(n for n, p in selectors[-1].named_parameters())
    outcome.fails_naming(str(run_dir), "training diverged", f"first non-finite weight: node 'selector' parameter "
                                                            f"'{name}' (1 of")
    assert read_run_json(run_dir)["status"] == "failed" and not (run_dir / "model").exists()


# -- signals ---------------------------------------------------------------------------------------
def test_sigterm_during_statistical_init_records_terminated_and_exits_143(workdir, capsys, monkeypatch):
    from cuvis_graph.train import statistics_init
    fit = statistics_init.fit_statistics

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (main) thread at the next instruction
        return fit(*args, **kwargs)

    monkeypatch.setattr(statistics_init, "fit_statistics", terminated)
    outcome = cli([*TRAIN, "training.trainer.max_epochs=1"], capsys)
    (run_dir,) = (workdir / "runs" / "selector_rx_bce").iterdir()
    assert outcome.rc == 143 and "Traceback" not in outcome.err
    assert "terminated by SIGTERM" in outcome.err and str(run_dir) in outcome.err
    assert raw_status(run_dir) == "terminated"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler does not outlive the run
    monkeypatch.setattr(statistics_init, "fit_statistics", fit)
    assert cli([*TRAIN, "training.trainer.max_epochs=1", "--resume", run_dir], capsys).rc == 0  # starts over
    record = read_run_json(run_dir)
    assert [a["status"] for a in record["attempts"]] == ["terminated", "completed"]


def start_training(workdir: Path, *extra: str) -> subprocess.Popen:
    """The real ``cuvis-graph train`` in the background (stdout / stderr to files in ``workdir``)."""
    out, err = (workdir / "stdout.txt").open("w"), (workdir / "stderr.txt").open("w")
    return subprocess.Popen([*CLI_COMMAND, *map(str, TRAIN), *extra], cwd=workdir, env=cli_env(), stdout=out,
                            stderr=err)


def wait_until(condition, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, f"exited {process.returncode} before {what}: " \
                                       f"{(Path(process.args[-1]).parent / 'stderr.txt')}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def training_started(run_root: Path):
    """Condition: a run is ``running`` with a checkpoint and a metrics line written."""
    def check() -> bool:
        runs = list(run_root.glob("*/run.json"))
        if not runs:
            return False
        run_dir = runs[0].parent
        try:
            return (raw_status(run_dir) == "running" and (run_dir / "checkpoints" / "last.ckpt").is_file()
                    and (run_dir / "metrics.jsonl").stat().st_size > 0)
        except (OSError, ValueError):
            return False
    return check


def finish(process: subprocess.Popen, workdir: Path) -> Outcome:
    rc = process.wait(60)
    return Outcome(rc, (workdir / "stdout.txt").read_text(), (workdir / "stderr.txt").read_text())


def _resume_epochs(run_dir: Path) -> str:
    """``max_epochs`` two epochs past the run's last checkpoint (a long run, cut short)."""
    return f"training.trainer.max_epochs={torch.load(run_dir / 'checkpoints' / 'last.ckpt', weights_only=True)['epoch'] + 3}"


def test_sigterm_mid_training_exits_143_records_terminated_and_resumes(workdir, capsys):
    process = start_training(workdir, "training.trainer.max_epochs=100000")
    root = workdir / "runs" / "selector_rx_bce"
    wait_until(training_started(root), process, "the first checkpoint")
    process.send_signal(signal.SIGTERM)
    outcome = finish(process, workdir)
    (run_dir,) = root.iterdir()
    assert outcome.rc == 143, outcome.err[-2000:]
    assert "Traceback" not in outcome.err and "terminated by SIGTERM" in outcome.err
    record = read_run_json(run_dir)
    assert raw_status(run_dir) == record["status"] == "terminated" and not (run_dir / "model").exists()
    assert not (run_dir / "lock").exists()
    resumed = cli([*TRAIN, _resume_epochs(run_dir), "--resume", run_dir], capsys)
    assert resumed.rc == 0, resumed.err
    record = read_run_json(run_dir)
    assert [a["status"] for a in record["attempts"]] == ["terminated", "completed"] and (run_dir / "model").is_dir()


def test_kill_9_mid_training_is_read_as_killed_and_resumes(workdir, capsys):
    process = start_training(workdir, "training.trainer.max_epochs=100000")
    root = workdir / "runs" / "selector_rx_bce"
    wait_until(training_started(root), process, "the first checkpoint")
    process.send_signal(signal.SIGKILL)
    assert process.wait(60) == -signal.SIGKILL
    (run_dir,) = root.iterdir()
    assert raw_status(run_dir) == "running"  # nobody could write the end ...
    record = read_run_json(run_dir)  # ... the reader tells it
    assert record["status"] == "killed" and str(process.pid) in record["error"]["message"]
    resumed = cli([*TRAIN, _resume_epochs(run_dir), "--resume", "auto"], capsys)  # the stale lock is replaced
    assert resumed.rc == 0, resumed.err
    record = read_run_json(run_dir)
    assert [a["status"] for a in record["attempts"]] == ["killed", "completed"]
    assert "killed" in [h["status"] for h in record["history"]]


def test_two_concurrent_resumes_the_second_refuses_naming_the_first(trained, workdir):
    run_dir = a_run(trained, workdir)
    first = start_training(workdir, "training.trainer.max_epochs=100000", "--resume", str(run_dir))

    def holds_lock() -> bool:
        try:
            return json.loads((run_dir / "lock").read_text())["pid"] == first.pid and raw_status(run_dir) == "running"
        except (OSError, ValueError, KeyError):
            return False

    try:
        wait_until(holds_lock, first, "the first resume to take the lock")
        before = json.loads((run_dir / "run.json").read_text())
        second = cli_process([*TRAIN, "training.trainer.max_epochs=100000", "--resume", run_dir], workdir)
        second.fails_naming(str(run_dir), f"in use by process {first.pid}")
        assert len(json.loads((run_dir / "run.json").read_text())["attempts"]) == len(before["attempts"])
    finally:
        first.send_signal(signal.SIGTERM)
    assert finish(first, workdir).rc == 143
    assert [a["status"] for a in read_run_json(run_dir)["attempts"]] == ["completed", "terminated"]


def test_resume_auto_continues_with_the_overrides_the_run_started_with(workdir, tmp_path, capsys):
    """kill -9 a run started with max_epochs=6 and data overrides; ``--resume auto`` without repeating
    them ends after 6 epochs on the same data, bit-identical to an uninterrupted run."""
    from runs_helpers import kill_when_marked

    base = ["train", PIPELINE, *QUIET, "nodes.selector.params.n_select=3", "training.trainer.accelerator=cpu",
            "training.trainer.deterministic=true"]
    started_with = ["training.trainer.max_epochs=6", *TINY_SYNTHETIC, "data.params.n_train=3",
                    "data.params.height=12"]
    reference = cli([*base, *started_with, "--runs-dir", tmp_path / "reference"], capsys)
    assert reference.rc == 0, reference.err
    (ref_dir,) = (tmp_path / "reference" / "selector_rx_bce").iterdir()

    script = Path(__file__).parents[1] / "cli_kill_child.py"
    kill_when_marked(script, workdir, workdir / "marker.txt",
                     argv=[*map(str, base), *started_with, "--runs-dir", str(workdir / "runs")], cwd=workdir)
    (run_dir,) = (workdir / "runs" / "selector_rx_bce").iterdir()
    resumed = cli([*base, "--runs-dir", workdir / "runs", "--resume", "auto"], capsys)
    assert resumed.rc == 0, resumed.err
    assert "recorded overrides: training.trainer.max_epochs=6" in resumed.out and resumed.out.count("resuming run") == 1
    record = read_run_json(run_dir)
    assert record["epochs"] == 6 and [a["status"] for a in record["attempts"]] == ["killed", "completed"]
    ours, theirs = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
                    for d in (run_dir, ref_dir))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    changed = cli([*base, "data.params.n_train=4", "training.trainer.max_epochs=7", "--runs-dir", workdir / "runs",
                   "--resume", "auto"], capsys)  # given again with another value: refused, naming it
    changed.fails_naming(str(run_dir), "data.params.n_train: 3 -> 4")


# -- resume after the training ended but its last steps did not -----------------------------------
def test_interrupt_during_the_final_model_save_resumes_to_the_same_metrics_and_model(workdir, tmp_path, capsys,
                                                                                      monkeypatch):
    """B18: Ctrl-C while the trained model is saved (both epochs done); ``--resume`` completes the
    save and ends with the metrics of an uninterrupted run, in run.json and stage_state.json."""
    import safetensors.torch

    reference = cli([*TRAIN, "training.trainer.max_epochs=2", "training.trainer.deterministic=true",
                     "--runs-dir", tmp_path / "reference"], capsys)
    assert reference.rc == 0, reference.err
    (ref_dir,) = (tmp_path / "reference" / "selector_rx_bce").iterdir()
    expected = read_run_json(ref_dir)["metrics"]
    assert any(k.startswith("val/") for k in expected)

    save = safetensors.torch.save_file

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    cut = cli([*TRAIN, "training.trainer.max_epochs=2", "training.trainer.deterministic=true"], capsys)
    (run_dir,) = (workdir / "runs" / "selector_rx_bce").iterdir()
    assert cut.rc == 130 and raw_status(run_dir) == "interrupted" and not (run_dir / "model").exists()
    assert f"continue it with --resume {run_dir}" in cut.err  # what a command-line user types
    monkeypatch.setattr(safetensors.torch, "save_file", save)

    resumed = cli([*TRAIN, "--resume", run_dir], capsys)
    assert resumed.rc == 0, resumed.err
    record = read_run_json(run_dir)
    assert record["status"] == "completed" and record["epochs"] == 2 and (run_dir / "model").is_dir()
    assert record["metrics"] == expected
    ours, theirs = (json.loads((d / "stage_state.json").read_text())["stage_info"]["train"]["metrics"]
                    for d in (run_dir, ref_dir))
    assert ours == theirs and ours
    assert "(none)" not in resumed.out
    ours, theirs = ([(j["stage"], j["step"], sorted(j["metrics"])) for j in map(json.loads, (d / "metrics.jsonl")
                     .read_text().splitlines())] for d in (run_dir, ref_dir))
    assert ours == theirs  # the log keeps both epochs, once
    ours, theirs = (load_file(d / "model" / "weights.safetensors") for d in (run_dir, ref_dir))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_resume_of_a_run_whose_checkpoints_were_deleted_refuses_instead_of_starting_over(workdir, capsys):
    """B17: Ctrl-C a long run, delete its checkpoints (all, or only ``last.ckpt``): ``--resume`` names
    the missing file instead of silently training every epoch again; nothing is written."""
    process = start_training(workdir, "training.trainer.max_epochs=100000")
    root = workdir / "runs" / "selector_rx_bce"
    wait_until(training_started(root), process, "the first checkpoint")
    process.send_signal(signal.SIGINT)
    assert finish(process, workdir).rc == 130
    (run_dir,) = root.iterdir()
    assert raw_status(run_dir) == "interrupted" and (run_dir / "checkpoints" / "best.ckpt").is_file()
    only_best = run_dir.with_name(run_dir.name + "_copy")
    shutil.copytree(run_dir, only_best)
    shutil.rmtree(run_dir / "checkpoints")
    (only_best / "checkpoints" / "last.ckpt").unlink()
    for target in (run_dir, only_best):
        snapshot = TreeSnapshot(workdir)
        for resume in (target, "auto") if target == only_best else (target,):  # auto: the newest run
            line = cli([*TRAIN, "training.trainer.max_epochs=100000", "--resume", resume], capsys).fails_naming(
                f"{target.name} has no checkpoint to continue from", "checkpoints/last.ckpt is missing",
                "without --resume")
            assert "Traceback" not in line
        snapshot.assert_unchanged()
        assert [a["status"] for a in read_run_json(target)["attempts"]] == ["interrupted"]
