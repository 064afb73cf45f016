"""P2: the reference workload: 64 synthetic cubes of 64x64x100 (float32), batch 8.

Measured in one run, interleaved, medians of ``--repeats``:

* (a) ``init``: statistical init of MinMaxNormalizer -> RXGlobal (``graph.train`` with
  ``max_epochs=0``; one pass: the normalizer is folded into RX's moments), against ``mean+cov``: a hand-written torch float64 mean
  and covariance ``(X - mu)^T (X - mu) / (N - 1)`` of the same training pixels (float32 in
  memory, converted inside the timed call);
* (b) ``train``: ``graph.train`` with 2 epochs of MinMaxNormalizer -> SoftChannelSelector
  (n_select=15) -> RXGlobal -> RXLogitHead with an AnomalyBCEWithLogits loss leaf and
  AnomalyDetectionMetrics (8 validation cubes). Includes statistical init (its passes are printed), the
  initial validation and the per-epoch validation; no run directory is written.
"""

from __future__ import annotations

import torch
from _common import (
    header,
    interleaved,
    median,
    parser,
    print_times,
    ratio_of_medians,
    report,
    setup,
)
from cuvis_graph.nodes import (
    AnomalyBCEWithLogits,
    AnomalyDetectionMetrics,
    MinMaxNormalizer,
    RXGlobal,
    RXLogitHead,
    SoftChannelSelector,
)

from cuvis_graph import Graph, SyntheticHSIDataModule


def init_graph() -> Graph:
    graph = Graph("bench_p2_init")
    norm = graph.add_node(MinMaxNormalizer())
    graph.add_node(RXGlobal(), parent=norm)
    return graph


def train_graph(n_select: int) -> Graph:
    graph = Graph("bench_p2_train")
    norm = graph.add_node(MinMaxNormalizer())
    sel = graph.add_node(SoftChannelSelector(n_select=n_select), parent=norm)
    rx = graph.add_node(RXGlobal(), parent=sel)
    head = graph.add_node(RXLogitHead(), parent=rx)
    graph.add_leaf_node(AnomalyBCEWithLogits(pos_weight=10.0), parent=head)
    graph.add_leaf_node(AnomalyDetectionMetrics(), parent=head)
    return graph


def mean_cov(x32: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-written float64 mean and covariance (ddof=1) of ``[N, C]`` rows."""
    x = x32.to(torch.float64)
    mu = x.mean(dim=0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    device = setup(args, repeats=3)
    header("P2", "workload: 64 cubes 64x64x100, batch 8", device, args.quick)
    n_train, side, bands, n_select = (64, 64, 100, 15) if not args.quick else (8, 32, 40, 15)
    dm = SyntheticHSIDataModule(n_train=n_train, n_val=max(1, n_train // 8), n_test=0, height=side, width=side,
                                n_bands=bands, batch_size=8)
    pixels = dm.train_set.stacked.reshape(-1, bands).to(device)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    init_cfg = {"trainer": {"max_epochs": 0, "accelerator": accelerator, "enable_progress_bar": False}}
    train_cfg = {"trainer": {"max_epochs": args.epochs, "accelerator": accelerator, "enable_progress_bar": False,
                             "log_every_n_steps": 1}}
    fit_seconds: list[float] = []
    fit_passes: list[int] = []
    auroc: list[float] = []

    def train() -> None:
        result = train_graph(n_select).train(dm, train_cfg, run_dir=False)
        fit_seconds.append(result.fit.seconds)
        fit_passes.append(result.fit.passes)
        auroc.append(result.metrics.get("val/anomaly_detection_metrics_0/auroc", float("nan")))

    times = interleaved({"init": lambda: init_graph().train(dm, init_cfg, run_dir=False),
                         "mean+cov": lambda: mean_cov(pixels),
                         "train": train}, args.repeats, device)
    print(f"  {n_train} train cubes {side}x{side}x{bands} (+{max(1, n_train // 8)} val), batch 8, "
          f"N={pixels.shape[0]:,} pixels, repeats={args.repeats}")
    print_times(times, labels={"init": "(a) stat init MinMax->RX (graph.train, 0 ep)",
                               "mean+cov": "    hand-written float64 mean+cov",
                               "train": f"(b) graph.train, {args.epochs} epochs (+val)"})
    print(f"  (b) of which statistical init ({fit_passes[-1]} passes): median {median(fit_seconds[-args.repeats:]) * 1e3:.1f} ms;"
          f" final val AUROC {auroc[-1]:.3f}")
    r = ratio_of_medians(times, "init", "mean+cov")
    print(f"  ratio (a) / mean+cov = {r:.2f}   (no goal; the min/max and the normalizer fold are extra work)")
    report("P2", f"(a) stat init MinMax->RX, {n_train} cubes", median(times["init"]), unit=" s", fmt=".3f")
    report("P2", "(a) stat init / float64 mean+cov", r, unit="x")
    report("P2", f"(b) {args.epochs} epochs selector->RX->head", median(times["train"]), unit=" s", fmt=".2f")


if __name__ == "__main__":
    main()
