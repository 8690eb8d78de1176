"""Throughput, memory and fidelity of tiled U-Net inference (nanomorph.segment.tiling) on large images.

Model. The 1-channel U-Net (--arch encoder, frozen randomly initialised encoder as in the pipeline's `random`
row) is first trained briefly and seeded (--train-epochs over --train-crops random 128 px crops of
--train-images synthetic nanowire images of side --train-side), so that its maps are not those of random
weights (speed and memory do not depend on the weights). It is NOT a good segmenter: at the defaults its dice
against the true wire mask is ~0.05 on the realistic generator (`dice_*_vs_truth`, reported as context); the
fidelity numbers compare the two inference paths of the same model, which is what this benchmark measures.

Images. A synthetic nanowire image of side --train-side (in distribution for the model); larger sides are
mirror mosaics of it (np.pad "symmetric": continuous content, same wire scale), as the generator takes
~150 s at 4096 px and content does not change time or memory.

For every side in --sizes, in a FRESH process (so its peak RSS belongs to that measurement alone): load the
trained U-Net and the image, run `tiled_probabilities` (default core --tile-size, halo from the model's
receptive field) once untimed on a 64 px crop (warm-up), then time it once on the full image. Reported:
megapixels of IMAGE per second, tiles, the largest model input side, the pixels the network processed
relative to the image (halo recomputation), and memory: peak RSS of the process (VmHWM, /proc), the RSS
before inference (model + image + warm-up) and `inference_mib` = peak - before - output, the working set of
one window (input + activations): every image larger than one window is run in windows of one side, so it
is the same for every such side (`memory_same_beyond_one_window` in the summary compares the sides).

For sides up to --whole-max, whole-image inference (`whole_image_probabilities`: one forward pass on the
image padded to a multiple of 32) is measured the same way in another fresh process, which then makes
`interleaved`: --repeats alternating runs of whole-image and tiled inference, best of each, for the
throughput ratio (the cores are shared with other jobs: separate processes can meet different loads,
alternating runs meet the same). Fidelity of tiled to whole-image inference: max and mean |tiled - whole|
probability (held to TOLERANCE), the fraction of pixels whose 0.5-thresholded masks agree, and dice. At
--seam-side the image is also tiled with --seam-tile-size cores (`seams`), so that there are seams to test
where the default tile is the whole image. `summary` collects the headline numbers.

    python benchmarks/segment_tiled_inference.py            # 1024 2048 4096 8192, whole up to 2048
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
    axis_tiles, default_halo, default_tile_size, padded_length, tiled_probabilities, whole_image_probabilities,
)
from nanomorph.segment.train import train_segmenter

TRAIN_CROP = 128
TRAIN_LR = 3e-3  # Adam (the brief training gives maps that are not random, not a good segmenter: see above)
TRAIN_BATCH = 8
TOLERANCE = 1e-4  # max |p_tiled - p_whole|: float32 summation order only (nanomorph.segment.tiling)


def _rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux VmHWM), MiB.

    Not getrusage's ru_maxrss: Linux carries that over exec from the parent, so a spawned measuring process
    would report the parent's peak (here: generating the synthetic images) as its own.
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


def mirror_mosaic(array: np.ndarray, side: int) -> np.ndarray:
    """`array` cropped or extended to side x side by mirrored copies of itself (continuous across them)."""
    array = array[:side, :side]
    return np.pad(array, [(0, side - array.shape[0]), (0, side - array.shape[1])], mode="symmetric")


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


def _timed(fn, model, image: np.ndarray) -> tuple[dict, np.ndarray]:
    """Time fn(model, image) after an untimed warm-up on a 64 px crop; RSS before and peak, MiB."""
    fn(model, image[:64, :64])  # warm-up: first-call allocations, kernels, the cached halo
    before = _rss_mib()
    started = time.perf_counter()
    prob = fn(model, image)
    seconds = time.perf_counter() - started
    side = image.shape[0]
    peak, output = _peak_rss_mib(), prob.nbytes / 2**20
    return {"seconds": seconds, "megapixels_per_s": side * side / 1e6 / seconds, "rss_before_mib": before,
            "peak_rss_mib": peak, "output_mib": output, "inference_mib": peak - before - output}, prob


def measure_tiled(arch: str, model_path: Path, image_path: Path,
                  tile_size: int | None) -> tuple[dict, np.ndarray | None]:
    torch.set_grad_enabled(False)
    model, image = _setup(arch, model_path, image_path)
    out, prob = _timed(lambda m, x: tiled_probabilities(m, x, tile_size=tile_size), model, image)
    halo = default_halo(model)
    tile_size = default_tile_size(halo) if tile_size is None else tile_size
    tiles = axis_tiles(image.shape[0], tile_size, halo)
    processed = sum(stop - start for start, stop, _, _ in tiles)
    out.update({"tile_size": tile_size, "halo": halo, "tiles": len(tiles) ** 2,
                "max_window_side": max(stop - start for start, stop, _, _ in tiles),
                "processed_pixels_vs_image": (processed / padded_length(image.shape[0])) ** 2})
    return out, prob if image.shape[0] <= 2048 else None


def measure_whole(arch: str, model_path: Path, image_path: Path, tile_size: int | None,
                  repeats: int) -> tuple[dict, np.ndarray, dict]:
    """Whole-image inference's time and memory (its first run), then the throughput ratio from `repeats`
    alternating runs of whole-image and tiled inference, best of each: the cores are shared with other jobs,
    so separate processes can meet different loads; alternating runs meet the same, and the best run of each
    is its least disturbed one."""
    torch.set_grad_enabled(False)
    model, image = _setup(arch, model_path, image_path)
    whole, prob = _timed(whole_image_probabilities, model, image)
    tiled_probabilities(model, image[:64, :64], tile_size=tile_size)  # warm-up
    runs = {"whole_seconds": [], "tiled_seconds": []}
    for _ in range(repeats):
        for key, fn in (("whole_seconds", lambda: whole_image_probabilities(model, image)),
                        ("tiled_seconds", lambda: tiled_probabilities(model, image, tile_size=tile_size))):
            started = time.perf_counter()
            fn()
            runs[key].append(time.perf_counter() - started)
    ratio = min(runs["whole_seconds"]) / min(runs["tiled_seconds"])
    # Second opinion: the median over repetitions of whole / tiled time of runs made back to back.
    pairs = float(np.median(np.array(runs["whole_seconds"]) / np.array(runs["tiled_seconds"])))
    return whole, prob, {**runs, "throughput_ratio_tiled_vs_whole": ratio, "median_pair_ratio": pairs}


def fidelity(tiled_prob: np.ndarray, whole_prob: np.ndarray, truth: np.ndarray) -> dict:
    """How far tiled inference is from whole-image inference: probabilities and 0.5-thresholded masks.

    The dice of both masks against the true wire mask says how well the model segments at all (context for
    the differences, not part of them).
    """
    diff = np.abs(tiled_prob - whole_prob)
    tiled_mask, whole_mask = tiled_prob > 0.5, whole_prob > 0.5
    return {"max_abs_diff_vs_tiled": float(diff.max()), "mean_abs_diff_vs_tiled": float(diff.mean()),
            "within_tolerance": float(diff.max() <= TOLERANCE),
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


def summarise(results: dict) -> dict:
    """Headline numbers: throughput ratio and max |diff| where whole-image inference ran, memory per side."""
    summary = {"tolerance": TOLERANCE, "throughput_ratio_tiled_vs_whole": {}, "max_abs_diff": {},
               "peak_rss_mib": {}, "inference_mib": {}}
    for side, entry in results.items():
        summary["peak_rss_mib"][side] = entry["tiled"]["peak_rss_mib"]
        summary["inference_mib"][side] = entry["tiled"]["inference_mib"]
        if "whole" in entry:
            summary["throughput_ratio_tiled_vs_whole"][side] = \
                entry["interleaved"]["throughput_ratio_tiled_vs_whole"]
            summary["max_abs_diff"][side] = entry["whole"]["max_abs_diff_vs_tiled"]
        if "seams" in entry:
            seams = entry["seams"]
            summary["max_abs_diff"][f"{side}_tile{seams['tile_size']}"] = seams["max_abs_diff_vs_tiled"]
    # The memory target: sides run in more than one window (all of one shape) should need the same memory.
    tiled = [entry["tiled"]["inference_mib"] for entry in results.values() if entry["tiled"]["tiles"] > 1]
    if len(tiled) > 1:
        summary["memory_same_beyond_one_window"] = {"sides": len(tiled),
                                                    "inference_mib_max_over_min": max(tiled) / min(tiled)}
    return summary


def log_to_mlflow(params: dict, metrics: dict) -> None:
    with benchmark_run("segment_tiled_inference") as mlflow:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)


def _flatten(tree: dict, prefix: str = "") -> dict[str, float]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--tile-size", type=int, default=None,
                        help="core side of a tile (default: the library's, windows of DEFAULT_WINDOW px)")
    parser.add_argument("--whole-max", type=int, default=2048, help="also time whole-image inference up to this side")
    parser.add_argument("--seam-side", type=int, default=1024)
    parser.add_argument("--seam-tile-size", type=int, default=256,
                        help="core side for the seam check at --seam-side (1024 > 256 + 2 x halo 352: 2 x 2 tiles)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating whole/tiled runs for the throughput ratio")
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
        base_image, base_truth = synthetic_image(args.train_side, args.seed)
        print(f"trained the benchmark U-Net and made the test image in {time.perf_counter() - started:.0f} s",
              flush=True)
        for side in args.sizes:
            image_path = Path(scratch) / f"image_{side}.npy"
            np.save(image_path, mirror_mosaic(base_image, side))
            tiled, tiled_prob = _in_fresh_process(args.threads, measure_tiled, args.arch, model_path, image_path,
                                                  args.tile_size)
            entry = {"tiled": tiled}
            if side <= args.whole_max:
                truth = mirror_mosaic(base_truth, side)
                whole, whole_prob, entry["interleaved"] = _in_fresh_process(
                    args.threads, measure_whole, args.arch, model_path, image_path, args.tile_size, args.repeats)
                entry["whole"] = {**whole, **fidelity(tiled_prob, whole_prob, truth)}
                if side == args.seam_side:
                    seams, seams_prob = _in_fresh_process(args.threads, measure_tiled, args.arch, model_path,
                                                          image_path, args.seam_tile_size)
                    entry["seams"] = {**seams, **fidelity(seams_prob, whole_prob, truth)}
            results[str(side)] = entry
            print(side, json.dumps(entry), flush=True)
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    machine = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
               "load_average_1min_at_end": os.getloadavg()[0],  # shared cores: context for the timings
               "python": platform.python_version(), "device": "cpu"}
    summary = summarise(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"params": params, "machine": machine, "summary": summary, "results": results},
                                   indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    log_to_mlflow({k: str(v) for k, v in params.items()}, _flatten({"summary": summary, **results}))


if __name__ == "__main__":
    main()
