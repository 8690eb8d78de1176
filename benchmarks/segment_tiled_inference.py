"""Throughput and memory of sliding-window U-Net inference (nanomorph.segment.tiling) on large images.

For every image side in --sizes, in a FRESH process (so peak RSS belongs to that measurement alone):
build the 1-channel U-Net (--arch encoder, random weights: speed and memory do not depend on them), make a
random side x side image, run `tiled_probabilities` once untimed on a small image (warm-up), then time it on
the full image. Reported: megapixels of IMAGE per second, tiles per second, peak RSS of the process
(ru_maxrss) and the RSS before inference (model + image), so the difference is what inference added.
For sides up to --whole-max, whole-image inference (one forward pass on the side x side image, padded to a
multiple of 32) is measured the same way for comparison, with the largest |tiled - whole| probability
difference (a U-Net sees hundreds of pixels of context, so the two differ near tile seams; they are equal
only for local models, see tests/segment/test_tiling.py).

    python benchmarks/segment_tiled_inference.py --sizes 1024 4096 --tile-size 256 --overlap 64
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from nanomorph.models.encoder import normalise
from nanomorph.segment.sweep import seeded_unet
from nanomorph.segment.tiling import tile_origins, tiled_probabilities


def _rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _setup(arch: str, side: int):
    model = seeded_unet(arch, None, True, init_seed=0).eval()
    image = np.random.default_rng(0).random((side, side), dtype=np.float32)
    return model, image


def measure_tiled(arch: str, side: int, tile_size: int, overlap: int, margin: int,
                  batch_size: int) -> tuple[dict, np.ndarray | None]:
    torch.set_grad_enabled(False)
    model, image = _setup(arch, side)
    kwargs = dict(tile_size=tile_size, overlap=overlap, margin=margin, batch_size=batch_size)
    tiled_probabilities(model, image[:64, :64], **kwargs)  # warm-up: first-call allocations, kernels
    before = _rss_mib()
    started = time.perf_counter()
    prob = tiled_probabilities(model, image, **kwargs)
    seconds = time.perf_counter() - started
    tiles = len(tile_origins(side, side, tile_size, overlap)[0])
    out = {"seconds": seconds, "megapixels_per_s": side * side / 1e6 / seconds, "tiles": tiles,
           "tiles_per_s": tiles / seconds, "rss_before_mib": before, "peak_rss_mib": _peak_rss_mib()}
    return out, prob if side <= 2048 else None


def measure_whole(arch: str, side: int) -> tuple[dict, np.ndarray]:
    torch.set_grad_enabled(False)
    model, image = _setup(arch, side)
    padded_side = -(-side // 32) * 32
    x = normalise(torch.from_numpy(np.pad(image, (0, padded_side - side), mode="reflect"))[None, None])
    model(x[..., :64, :64])  # warm-up
    before = _rss_mib()
    started = time.perf_counter()
    prob = torch.sigmoid(model(x))[0, 0, :side, :side].numpy()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "megapixels_per_s": side * side / 1e6 / seconds, "rss_before_mib": before,
            "peak_rss_mib": _peak_rss_mib()}, prob


def _in_fresh_process(fn, *args):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def log_to_mlflow(params: dict, metrics: dict) -> None:
    import mlflow

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    mlflow.set_experiment("nanomorph-benchmarks")
    with mlflow.start_run(run_name="segment_tiled_inference"):
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--margin", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--whole-max", type=int, default=1024, help="also time whole-image inference up to this side")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/segment_tiled_inference.json"))
    args = parser.parse_args()

    results = {}
    for side in args.sizes:
        tiled, tiled_prob = _in_fresh_process(measure_tiled, args.arch, side, args.tile_size, args.overlap,
                                              args.margin, args.batch_size)
        entry = {"tiled": tiled}
        if side <= args.whole_max:
            whole, whole_prob = _in_fresh_process(measure_whole, args.arch, side)
            diff = np.abs(tiled_prob - whole_prob)
            whole["max_abs_diff_vs_tiled"] = float(diff.max())
            whole["mean_abs_diff_vs_tiled"] = float(diff.mean())
            entry["whole"] = whole
        results[str(side)] = entry
        print(side, json.dumps(entry), flush=True)
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    machine = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
               "load_average_1min_at_end": os.getloadavg()[0],  # shared cores: context for the timings
               "python": platform.python_version(), "device": "cpu"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"params": params, "machine": machine, "results": results}, indent=2) + "\n")
    metrics = {f"{mode}.{side}.{k}": v for side, entry in results.items() for mode, values in entry.items()
               for k, v in values.items()}
    log_to_mlflow({k: str(v) for k, v in params.items()}, metrics)


if __name__ == "__main__":
    main()
