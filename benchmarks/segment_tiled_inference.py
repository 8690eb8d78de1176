"""Throughput, memory and fidelity of sliding-window U-Net inference (nanomorph.segment.tiling) on large images.

Model. The 1-channel U-Net (--arch encoder, frozen randomly initialised encoder as in the pipeline's `random`
row) is first trained briefly and seeded (--train-epochs over --train-crops random 128 px crops of
--train-images synthetic nanowire images of side --train-side), so that the fidelity numbers describe a
model that segments, not random weights (speed and memory do not depend on the weights). The synthetic
generator scales wire widths with the image side, so the model is in-distribution for test images of side
--train-side (default 1024, the side the fidelity is read at).

For every image side in --sizes, in a FRESH process (so peak RSS belongs to that measurement alone): load
the trained U-Net and a synthetic side x side nanowire image (seeded, generated once in the parent), run
`tiled_probabilities` once untimed on a small image (warm-up), then time it on the full image. Reported:
megapixels of IMAGE per second, tiles per second, peak RSS of the process (VmHWM) and the RSS before
inference (model + image), so the difference is what inference added. For sides up to --whole-max,
whole-image inference (`whole_image_probabilities`: one forward pass on the image padded to a multiple of
32) is measured the same way, with the fidelity of tiled inference to it: max and mean |tiled - whole|
probability, the fraction of pixels whose 0.5-thresholded masks agree, and the dice of the tiled mask against
the whole-image mask (a U-Net sees hundreds of pixels of context, so the two differ near tile seams; they
are equal for local models and for images that fit one tile, see tests/segment/test_tiling*.py).

    python benchmarks/segment_tiled_inference.py --sizes 1024 4096
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _tracking import benchmark_run
from nanomorph.data.io import to_unit_range
from nanomorph.data.synthetic import CLASSES, generate_nanowire_image
from nanomorph.segment.metrics import dice_iou
from nanomorph.segment.sweep import seeded_unet
from nanomorph.segment.tiling import (
    DEFAULT_BATCH_SIZE, DEFAULT_MARGIN, DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, tile_origins, tiled_probabilities,
    whole_image_probabilities,
)
from nanomorph.segment.train import train_segmenter

TRAIN_CROP = 128
TRAIN_LR = 3e-3  # Adam; reaches test dice ~0.8-0.9 on 128 px synthetic images within ~20 epochs
TRAIN_BATCH = 8


def _rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux VmHWM), MiB.

    Not getrusage's ru_maxrss: Linux carries that over exec from the parent, so a spawned measuring process
    would report the parent's peak (here: generating a 4096 px synthetic image) as its own.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("/proc/self/status has no VmHWM line (not Linux?)")


def synthetic_image(side: int, seed: int, morphology: str = "network") -> tuple[np.ndarray, np.ndarray]:
    """A [0, 1] float32 synthetic nanowire image of side x side and its wire mask."""
    image, mask = generate_nanowire_image(morphology, side, np.random.default_rng(seed))
    return to_unit_range(image).astype(np.float32), mask


def random_crops(images: list[np.ndarray], masks: list[np.ndarray], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    crops, crop_masks = [], []
    for _ in range(n):
        i = int(rng.integers(len(images)))
        r, c = rng.integers(0, np.array(images[i].shape) - TRAIN_CROP + 1)
        crops.append(images[i][r:r + TRAIN_CROP, c:c + TRAIN_CROP])
        crop_masks.append(masks[i][r:r + TRAIN_CROP, c:c + TRAIN_CROP])
    return np.stack(crops), np.stack(crop_masks)


def train_benchmark_model(arch: str, side: int, n_images: int, n_crops: int, epochs: int, seed: int,
                          path: Path) -> None:
    """Train the benchmark U-Net briefly (seeded) on crops of synthetic images and save its state to `path`."""
    pairs = [synthetic_image(side, seed + 1000 + i, CLASSES[i % len(CLASSES)]) for i in range(n_images)]
    crops, crop_masks = random_crops([p[0] for p in pairs], [p[1] for p in pairs], n_crops, seed)
    model = seeded_unet(arch, None, True, init_seed=seed)
    train_segmenter(model, crops, crop_masks, epochs=epochs, lr=TRAIN_LR, batch_size=TRAIN_BATCH, seed=seed)
    torch.save(model.state_dict(), path)


def _setup(arch: str, model_path: Path, image_path: Path):
    model = seeded_unet(arch, None, True, init_seed=0)
    model.load_state_dict(torch.load(model_path))
    return model.eval(), np.load(image_path)


def measure_tiled(arch: str, model_path: Path, image_path: Path, tile_size: int, overlap: int, margin: int,
                  batch_size: int) -> tuple[dict, np.ndarray | None]:
    torch.set_grad_enabled(False)
    model, image = _setup(arch, model_path, image_path)
    side = image.shape[0]
    kwargs = dict(tile_size=tile_size, overlap=overlap, margin=margin, batch_size=batch_size)
    tiled_probabilities(model, image[:64, :64], **kwargs)  # warm-up: first-call allocations, kernels
    before = _rss_mib()
    started = time.perf_counter()
    prob = tiled_probabilities(model, image, **kwargs)
    seconds = time.perf_counter() - started
    tiles = len(tile_origins(side, side, tile_size, overlap))
    out = {"seconds": seconds, "megapixels_per_s": side * side / 1e6 / seconds, "tiles": tiles,
           "tiles_per_s": tiles / seconds, "rss_before_mib": before, "peak_rss_mib": _peak_rss_mib()}
    return out, prob if side <= 2048 else None


def measure_whole(arch: str, model_path: Path, image_path: Path) -> tuple[dict, np.ndarray]:
    torch.set_grad_enabled(False)
    model, image = _setup(arch, model_path, image_path)
    side = image.shape[0]
    whole_image_probabilities(model, image[:64, :64])  # warm-up
    before = _rss_mib()
    started = time.perf_counter()
    prob = whole_image_probabilities(model, image)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "megapixels_per_s": side * side / 1e6 / seconds, "rss_before_mib": before,
            "peak_rss_mib": _peak_rss_mib()}, prob


def fidelity(tiled_prob: np.ndarray, whole_prob: np.ndarray, truth: np.ndarray) -> dict:
    """How far tiled inference is from whole-image inference: probabilities and 0.5-thresholded masks.

    The dice of both masks against the true wire mask says how well the model segments at all (context for
    the differences, not part of them).
    """
    diff = np.abs(tiled_prob - whole_prob)
    tiled_mask, whole_mask = tiled_prob > 0.5, whole_prob > 0.5
    return {"max_abs_diff_vs_tiled": float(diff.max()), "mean_abs_diff_vs_tiled": float(diff.mean()),
            "mask_agreement_vs_tiled": float((tiled_mask == whole_mask).mean()),
            "dice_tiled_vs_whole": dice_iou(tiled_mask, whole_mask)[0],
            "dice_whole_vs_truth": dice_iou(whole_mask, truth)[0],
            "dice_tiled_vs_truth": dice_iou(tiled_mask, truth)[0]}


def _set_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


def _in_fresh_process(threads: int, fn, *args):
    with multiprocessing.get_context("spawn").Pool(1, initializer=_set_threads, initargs=(threads,)) as pool:
        return pool.apply(fn, args)


def log_to_mlflow(params: dict, metrics: dict) -> None:
    with benchmark_run("segment_tiled_inference") as mlflow:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--tile-size", type=int, default=DEFAULT_TILE_SIZE)
    parser.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP)
    parser.add_argument("--margin", type=int, default=DEFAULT_MARGIN)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--whole-max", type=int, default=1024, help="also time whole-image inference up to this side")
    parser.add_argument("--train-side", type=int, default=1024, help="side of the synthetic training images")
    parser.add_argument("--train-images", type=int, default=4)
    parser.add_argument("--train-crops", type=int, default=64)
    parser.add_argument("--train-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads in every process (0: torch's default)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/segment_tiled_inference.json"))
    args = parser.parse_args()
    _set_threads(args.threads)

    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        model_path = Path(scratch) / "unet.pt"
        started = time.perf_counter()
        # Trained here, not in a measured process: the measurements load the saved weights.
        train_benchmark_model(args.arch, args.train_side, args.train_images, args.train_crops, args.train_epochs,
                              args.seed, model_path)
        print(f"trained the benchmark U-Net in {time.perf_counter() - started:.0f} s", flush=True)
        for side in args.sizes:
            image_path = Path(scratch) / f"image_{side}.npy"
            image, truth = synthetic_image(side, args.seed)
            np.save(image_path, image)
            del image
            tiled, tiled_prob = _in_fresh_process(args.threads, measure_tiled, args.arch, model_path, image_path,
                                                  args.tile_size, args.overlap, args.margin, args.batch_size)
            entry = {"tiled": tiled}
            if side <= args.whole_max:
                whole, whole_prob = _in_fresh_process(args.threads, measure_whole, args.arch, model_path, image_path)
                entry["whole"] = {**whole, **fidelity(tiled_prob, whole_prob, truth)}
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
