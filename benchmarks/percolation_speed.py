"""How much faster is the grid DBSCAN of the percolation rule than scikit-learn's DBSCAN?

`nanomorph.analysis.percolation.wire_clusters` (pixel-grid DBSCAN: shifted adds, ndimage.label, a small
component graph) against `wire_clusters_dbscan` (scikit-learn DBSCAN on the wire pixels' coordinates), on
realistic wire masks: a `--side` x `--side` mask is a grid of `--tile` px tiles, each the union of the wires
of one synthetic `network` layout (`nanomorph.data.synthetic.wire_layout`, the generator's exact mask
before the scale bar; seeded per tile), so wire widths and crossings look like the generator's at `--tile`
px and the number of wire pixels grows with the area. Labels must be identical (same numbering, noise -1).
The fast method is timed `--repeats` times after a warm-up (best and median reported), scikit-learn
`--dbscan-repeats` times (best reported); the speed-up is scikit-learn's best over the fast method's
median. Everything runs on one thread (OpenMP/BLAS thread counts are pinned before numpy is imported).

    python benchmarks/percolation_speed.py --sizes 1024 4096
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_variable] = "1"  # before numpy/scipy/sklearn load their thread pools

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import sklearn  # noqa: E402
import sklearn.cluster  # noqa: E402,F401  (imported here: the reference imports it on first call, never timed)
from threadpoolctl import threadpool_limits  # noqa: E402

from _tracking import benchmark_run  # noqa: E402
from nanomorph.analysis.percolation import wire_clusters, wire_clusters_dbscan  # noqa: E402
from nanomorph.data.synthetic import wire_layout  # noqa: E402


def tiled_network_mask(side: int, tile: int, seed: int) -> np.ndarray:
    """A side x side mask of (side / tile)^2 independent `network` wire layouts of tile x tile px."""
    if side % tile:
        raise ValueError(f"--side {side} is not a multiple of --tile {tile}")
    n = side // tile
    rng = np.random.default_rng(seed)
    tiles = [np.logical_or.reduce(wire_layout("network", tile, np.random.default_rng(s)))
             for s in rng.integers(0, 2**31, size=n * n)]
    return np.block([tiles[i * n : (i + 1) * n] for i in range(n)])


def timed(function, repeats: int) -> tuple[list[float], np.ndarray]:
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - started)
    return seconds, result


def measure(side: int, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    mask = tiled_network_mask(side, args.tile, args.seed + side)
    build_seconds = time.perf_counter() - started
    run_fast = lambda: wire_clusters(mask, args.eps, args.min_samples)  # noqa: E731
    first_call, _ = timed(run_fast, 1)  # warm-up (first touch of the big temporary arrays), reported
    fast_seconds, fast = timed(run_fast, args.repeats)
    dbscan_seconds, reference = timed(lambda: wire_clusters_dbscan(mask, args.eps, args.min_samples),
                                      args.dbscan_repeats)
    fast_median = float(np.median(fast_seconds))
    return {
        "side": side,
        "wire_pixels": int(mask.sum()),
        "wire_fraction": float(mask.mean()),
        "clusters": int(reference.max()) + 1,
        "noise_pixels": int((reference < 0).sum()),
        "identical_labels": bool(np.array_equal(fast, reference)),
        "mask_build_seconds": build_seconds,
        "fast_first_call_seconds": first_call[0],
        "fast_seconds": fast_seconds,
        "fast_best_seconds": min(fast_seconds),
        "fast_median_seconds": fast_median,
        "dbscan_seconds": dbscan_seconds,
        "dbscan_best_seconds": min(dbscan_seconds),
        "speedup_dbscan_best_over_fast_median": min(dbscan_seconds) / fast_median,
        "speedup_dbscan_best_over_fast_best": min(dbscan_seconds) / min(fast_seconds),
    }


def log_to_mlflow(params: dict, results: list[dict]) -> None:
    metrics = {f"side{r['side']}_{key}": float(value) for r in results for key, value in r.items()
               if key != "side" and not isinstance(value, list)}
    with benchmark_run("percolation_speed") as mlflow:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096], help="mask sides, px")
    parser.add_argument("--tile", type=int, default=256, help="side of one network layout, px")
    parser.add_argument("--eps", type=float, default=2.0)
    parser.add_argument("--min-samples", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=11, help="timed runs of the fast method")
    parser.add_argument("--dbscan-repeats", type=int, default=2, help="timed runs of scikit-learn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/percolation_speed.json"))
    args = parser.parse_args()

    load_before = os.getloadavg()
    with threadpool_limits(limits=1):
        results = [measure(side, args) for side in args.sizes]
    params = {k: (str(v) if isinstance(v, (Path, list)) else v) for k, v in vars(args).items() if k != "out"}
    machine = {"cpus": os.cpu_count(), "threads": 1, "python": platform.python_version(),
               "numpy": np.__version__, "scipy": scipy.__version__, "sklearn": sklearn.__version__,
               "load_average_1min_before": load_before[0], "load_average_1min": os.getloadavg()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"params": params, "machine": machine, "results": results}, indent=2) + "\n")
    print(json.dumps({"machine": machine, "results": results}, indent=2))
    log_to_mlflow(params, results)


if __name__ == "__main__":
    main()
