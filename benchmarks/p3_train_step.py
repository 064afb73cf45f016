"""P3: per-step cost of training the compiled graph vs a hand-written torch loop.

Graph: MinMaxNormalizer -> SoftChannelSelector(n_select=15) -> RXGlobal -> RXLogitHead with an
AnomalyBCEWithLogits(pos_weight=10) loss leaf, fitted once beforehand. Data: the P2 cubes
(64x64x100, batch 8), collated once into a list of batches that every candidate iterates, so
data loading is the same (and free) for all. Every candidate runs the same steps (2 epochs of
8 batches) on the same node modules, with Adam from the same ``OptimizerConfig``; the first
2 steps of each run are not timed; the time ends after the last step (Lightning: at
``on_train_end``, so epoch-end work counts).

* ``hand``: ``head(rx(sel(norm(x))))``, ``F.binary_cross_entropy_with_logits``, ``zero_grad``,
  ``backward``, ``step`` (the baseline);
* ``executor``: the same loop with ``Executor.run`` and the loss leaf (no Lightning);
* ``trainer.fit``: ``GraphModule`` in a bare ``lightning.Trainer`` (no logger, progress bar,
  checkpointing or validation);
* ``graph.train``: the user path (monitor logger, callbacks), fed the same list of batches.

Goal: ``trainer.fit / hand <= 1.10`` per step.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from _common import (
    header,
    interleaved_values,
    median,
    paired_ratio,
    parser,
    print_times,
    ratio_of_medians,
    report,
    setup,
    sync,
)
from cuvis_graph.nodes import (
    AnomalyBCEWithLogits,
    MinMaxNormalizer,
    RXGlobal,
    RXLogitHead,
    SoftChannelSelector,
)

from cuvis_graph import Graph, OptimizerConfig, SyntheticHSIDataModule
from cuvis_graph.core.executor import Executor
from cuvis_graph.data import GraphDataModule
from cuvis_graph.train.lightning import GraphModule, build_optimizer
from cuvis_graph.train.quiet import quiet_lightning

GOAL = 1.10
SKIP = 2


class Batches:
    """A fixed sequence of collated batches (a plain list would be read by Lightning as a
    collection of loaders)."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class ListDataModule(GraphDataModule):
    """A datamodule whose training loader is a fixed list of collated batches."""

    def __init__(self, batches: list[dict[str, torch.Tensor]], n_channels: int) -> None:
        super().__init__(batch_size=int(batches[0]["cube"].shape[0]))
        self.batches, self.n_channels = batches, n_channels
        self.batch_keys = frozenset(batches[0])

    def train_dataloader(self) -> Batches:
        return Batches(self.batches)

    def statistics_dataloader(self) -> Batches:
        return Batches(self.batches)


class StepTimer(pl.Callback):
    """Seconds per step from the start of step ``SKIP`` to the end of training."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.started, self.steps, self.seconds = device, 0.0, 0, float("nan")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.steps == SKIP:
            sync(self.device)
            self.started = time.perf_counter()
        self.steps += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        sync(self.device)
        self.seconds = (time.perf_counter() - self.started) / (self.steps - SKIP)


def build(n_select: int) -> tuple[Graph, list[Any]]:
    graph = Graph("bench_p3")
    norm = graph.add_node(MinMaxNormalizer())
    sel = graph.add_node(SoftChannelSelector(n_select=n_select), parent=norm)
    rx = graph.add_node(RXGlobal(), parent=sel)
    head = graph.add_node(RXLogitHead(), parent=rx)
    graph.add_leaf_node(AnomalyBCEWithLogits(pos_weight=10.0), parent=head)
    return graph, [norm, sel, rx, head]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    device = setup(args, repeats=5)
    with quiet_lightning():  # Lightning's remarks about the small data, for the whole run
        measure(args, device)


def measure(args: Any, device: torch.device) -> None:
    header("P3", "train step: compiled graph vs hand-written loop", device, args.quick)
    n_train, side, bands = (64, 64, 100) if not args.quick else (16, 32, 40)
    source = SyntheticHSIDataModule(n_train=n_train, n_val=0, n_test=0, height=side, width=side, n_bands=bands,
                                    batch_size=8)
    batches = [{k: v.to(device) for k, v in b.items()} for b in source.statistics_dataloader()]
    dm = ListDataModule(batches, bands)
    graph, modules = build(15)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    graph.train(dm, {"trainer": {"max_epochs": 0, "accelerator": accelerator, "enable_progress_bar": False}},
                run_dir=False)
    plan = graph.compile(dm, for_training=True)
    module = GraphModule(plan, OptimizerConfig()).to(device)
    executor = Executor(plan)
    loss_binding = module.loss_bindings[0]
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    n_steps = args.epochs * len(batches)
    pos_weight = torch.tensor(10.0, device=device)
    norm, sel, rx, head = modules

    def hand() -> float:
        optimizer = build_optimizer(params, OptimizerConfig())
        for m in modules:
            m.train()
        for step in range(n_steps):
            if step == SKIP:
                sync(device)
                t0 = time.perf_counter()
            batch = batches[step % len(batches)]
            logits = head(rx(sel(norm(batch["cube"]))))
            target = (batch["mask"] > 0).to(logits.dtype)
            loss = 1.0 * F.binary_cross_entropy_with_logits(logits.squeeze(-1), target, pos_weight=pos_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        sync(device)
        return (time.perf_counter() - t0) / (n_steps - SKIP)

    def executor_loop() -> float:
        optimizer = build_optimizer(params, OptimizerConfig())
        for m in modules:
            m.train()
        for step in range(n_steps):
            if step == SKIP:
                sync(device)
                t0 = time.perf_counter()
            batch = batches[step % len(batches)]
            outputs = executor.run(batch)
            output, leaf_batch = executor.leaf_inputs(loss_binding, batch, outputs)
            loss = loss_binding.leaf.weight * loss_binding.leaf.compute_loss(output, leaf_batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        sync(device)
        return (time.perf_counter() - t0) / (n_steps - SKIP)

    def trainer_fit() -> float:
        timer = StepTimer(device)
        trainer = pl.Trainer(max_epochs=args.epochs, accelerator=accelerator, devices=1, logger=False,
                             enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                             limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer])
        trainer.fit(module, train_dataloaders=Batches(batches))
        return timer.seconds

    def graph_train() -> float:
        timer = StepTimer(device)
        graph.train(dm, {"trainer": {"max_epochs": args.epochs, "accelerator": accelerator,
                                     "enable_progress_bar": False}}, callbacks=[timer], run_dir=False)
        return timer.seconds

    times = interleaved_values({"hand": hand, "executor": executor_loop, "trainer.fit": trainer_fit,
                                "graph.train": graph_train}, args.repeats)
    print(f"  {len(batches)} batches of {tuple(batches[0]['cube'].shape)}, {n_steps} steps per run "
          f"({n_steps - SKIP} timed), repeats={args.repeats}; seconds per step:")
    print_times(times, labels={"hand": "hand-written torch loop (baseline)",
                               "executor": "Executor.run + loss leaf (no Lightning)",
                               "trainer.fit": "GraphModule in a bare Trainer",
                               "graph.train": "graph.train (user path)"})
    ratios = {name: ratio_of_medians(times, name, "hand") for name in ("executor", "trainer.fit", "graph.train")}
    for name, value in ratios.items():
        extra = (median(times[name]) - median(times["hand"])) * 1e3
        print(f"  ratio {name} / hand = {value:.3f} (per-round median {paired_ratio(times, name, 'hand'):.3f}; "
              f"{extra:+.1f} ms per step)" + (f"   goal <= {GOAL}" if name == "trainer.fit" else ""))
    report("P3", "train step GraphModule (trainer.fit) / hand loop", ratios["trainer.fit"], f"<= {GOAL}",
           ratios["trainer.fit"] <= GOAL, "x", ".3f")
    report("P3", "train step Executor (no Lightning) / hand loop", ratios["executor"], unit="x", fmt=".3f")
    report("P3", "train step graph.train / hand loop", ratios["graph.train"], unit="x", fmt=".3f")


if __name__ == "__main__":
    main()
