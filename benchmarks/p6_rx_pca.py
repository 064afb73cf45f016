"""P6: RX scoring vs SPy ``spectral.rx``, and TrainablePCA init vs scikit-learn ``PCA.fit``.

Scene: 512x512x200 float32, a linear mixture of 6 smooth endmembers plus noise, at sensor
scale (~1e4). Measured in one run, interleaved, medians of ``--repeats``:

* RX scoring with the same precomputed statistics: the float64 mean and covariance of the
  scene (numpy) go to ``spectral.rx(X, background=GaussianStats(mean, cov))`` (its inverse
  covariance is computed once before timing) and to a fitted ``RXGlobal`` (mean and
  whitening from that covariance). Timed: ``graph.predict(scene)`` (compiles the plan and
  scores) and the node's forward alone, vs ``spectral.rx``. Goal: SPy / ours >= 2.
* PCA: ``graph.train(max_epochs=0)`` fitting ``TrainablePCA(K=10)`` on the scene vs
  ``sklearn.decomposition.PCA(10).fit`` of the same pixels converted to float64 (inside
  the timed call). Ratio printed (no goal); explained variances and components compared.
"""

from __future__ import annotations

import numpy as np
import spectral
import torch
from _common import header, interleaved, parser, print_times, ratio_of_medians, report, setup
from cuvis_graph.nodes import RXGlobal, TrainablePCA
from cuvis_graph.nodes.rx import whitening_from_covariance
from sklearn.decomposition import PCA

from cuvis_graph import Graph
from cuvis_graph.data import GraphDataModule

GOAL = 2.0
K = 10


def make_scene(side: int, bands: int, seed: int = 0) -> np.ndarray:
    """``[side, side, bands]`` float32: 6 smooth endmembers mixed per pixel, noise, scale 1e4."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, bands)
    endmembers = np.stack([0.2 + 0.1 * rng.uniform() * t + 0.2 * np.exp(-0.5 * ((t - rng.uniform()) / 0.15) ** 2)
                           for _ in range(6)])
    abundances = rng.dirichlet(np.ones(6), size=side * side)
    pixels = abundances @ endmembers + 0.002 * rng.standard_normal((side * side, bands))
    return (1e4 * pixels).reshape(side, side, bands).astype(np.float32)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--side", type=int, default=512)
    p.add_argument("--bands", type=int, default=200)
    args = p.parse_args()
    if args.quick:
        args.side, args.bands = 128, 50
    device = setup(args, repeats=3)
    header("P6", "RX scoring vs spectral.rx, TrainablePCA init vs sklearn PCA", device, args.quick)
    scene = make_scene(args.side, args.bands)
    pixels = scene.reshape(-1, args.bands)
    x64 = pixels.astype(np.float64)
    mean, cov = x64.mean(axis=0), np.cov(x64, rowvar=False)
    del x64
    stats = spectral.GaussianStats(mean=mean, cov=cov, nsamples=pixels.shape[0])
    _ = stats.inv_cov  # computed once, outside the timing

    graph = Graph("bench_p6_rx")
    rx = graph.add_node(RXGlobal())
    rx.mean = torch.from_numpy(mean).to(device)
    rx.whitening = whitening_from_covariance(torch.from_numpy(cov), rx.eps).to(device)
    rx.mark_fitted(True)
    rx.eval()
    cube = torch.from_numpy(scene).to(device)
    ours = graph.predict(cube, output=rx.name).cpu().numpy()[..., 0].astype(np.float64)
    theirs = spectral.rx(scene, background=stats)
    rel = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))

    def node_forward() -> None:
        with torch.no_grad():
            rx(cube[None])

    rows64 = cube.reshape(-1, args.bands).double()
    square = torch.eye(args.bands, dtype=torch.float64, device=device)

    def gemm() -> None:
        torch.mm(rows64, square)

    times = interleaved({"spy": lambda: spectral.rx(scene, background=stats),
                         "predict": lambda: graph.predict(cube),
                         "forward": node_forward, "gemm": gemm}, args.repeats, device)
    print(f"  RX scoring of a {args.side}x{args.side}x{args.bands} scene, same mean/covariance, "
          f"repeats={args.repeats}")
    print_times(times, labels={"spy": "spectral.rx (background stats given)",
                               "predict": "graph.predict(scene) (RXGlobal)",
                               "forward": "RXGlobal.forward alone",
                               "gemm": "one float64 GEMM [N, C] x [C, C]"})
    roofline = ratio_of_medians(times, "forward", "gemm")
    print(f"  RXGlobal.forward / float64 GEMM of the same shape = {roofline:.2f}   goal <= 1.3")
    speedup = ratio_of_medians(times, "spy", "predict")
    print(f"  speed-up spectral.rx / graph.predict = {speedup:.2f}   (forward alone: "
          f"{ratio_of_medians(times, 'spy', 'forward'):.2f})   goal >= {GOAL}")
    print(f"  scores agree: max |ours - spy| / max spy = {rel:.1e}")

    dm = GraphDataModule.from_arrays(scene[None], batch_size=1)
    config = {"trainer": {"max_epochs": 0, "accelerator": "gpu" if device.type == "cuda" else "cpu",
                          "enable_progress_bar": False}}
    fitted: list[TrainablePCA] = []
    sk: list[PCA] = []

    def pca_init() -> None:
        graph = Graph("bench_p6_pca")
        fitted.append(graph.add_node(TrainablePCA(n_components=K)))
        graph.train(dm, config, run_dir=False)

    def sklearn_fit() -> None:
        sk.append(PCA(n_components=K).fit(pixels.astype(np.float64)))

    ptimes = interleaved({"pca": pca_init, "sklearn": sklearn_fit}, args.repeats, device)
    ours_pca, ref = fitted[-1], sk[-1]
    ev_rel = float(np.max(np.abs(ours_pca.explained_variance.cpu().numpy() - ref.explained_variance_)
                          / ref.explained_variance_))
    cosines = np.abs(np.sum(ours_pca.components.detach().cpu().numpy() * ref.components_, axis=1))
    print(f"  PCA K={K} of {pixels.shape[0]:,} pixels x {args.bands} bands, repeats={args.repeats}, "
          f"sklearn svd_solver='{ref._fit_svd_solver}'")
    print_times(ptimes, labels={"pca": "TrainablePCA init (graph.train, 0 epochs)",
                                "sklearn": "sklearn PCA(10).fit (float64)"})
    pca_ratio = ratio_of_medians(ptimes, "pca", "sklearn")
    print(f"  ratio TrainablePCA init / sklearn fit = {pca_ratio:.2f}   goal <= 1.0")
    print(f"  agreement: explained variance max rel diff {ev_rel:.1e}; |cos| between components: "
          f"min {cosines.min():.6f}")
    report("P6", "RX scoring speed-up vs spectral.rx (graph.predict)", speedup, f">= {GOAL}", speedup >= GOAL, "x")
    report("P6", "RX forward / one float64 GEMM", roofline, "<= 1.3", roofline <= 1.3, "x")
    report("P6", "RX scores max rel diff vs spectral.rx", rel, "< 1e-6", rel < 1e-6, fmt=".1e")
    report("P6", "TrainablePCA init / sklearn PCA fit", pca_ratio, "<= 1.0", pca_ratio <= 1.0, "x")
    report("P6", "PCA explained variance max rel diff vs sklearn", ev_rel, "< 1e-6", ev_rel < 1e-6, fmt=".1e")


if __name__ == "__main__":
    main()
