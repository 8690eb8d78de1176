"""Rounds 8-9 on TUNING data: how the cpu SimCLR recipe's view size, epochs, batch (and any other argument) move
the probe's ceiling.

Pretrains SimCLR on the 400 tuning nanowire images (WORK/stacks.npz from pretrain_variants.py, or any npz
with `task` (N, 128, 128) float32 and `labels`; generator seed 1) with the cpu profile's pretraining
arguments (`pretrain_arguments`) except the spec's `view:epochs:batch[:key=value...]` (e.g.
`128:60:32:seed=1`, `32:120:32:crop_side=0.25-0.5`, `64:30:32:projector_dims=512-128`), then scores
layer3+layer4 features, averaged over the 8 rotations/flips, at the view side, 64 and 128 px with the probe
stage's rule on split seeds 1000-1019 (the report uses 0-19) at n = 1, 2, 4, 8, 80 per class.
One JSON line per (spec, feature side) to WORK/schedule_grid.jsonl. Runs on CUDA when there is one. Where
params.yaml cannot be parsed (a GPU machine without the project's dependencies), NANOMORPH_PRETRAIN_KWARGS
names a JSON dump of the same arguments.

    python benchmarks/tune_views/schedule_grid.py WORK 64:30:32 128:60:32 64:200:32
"""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from protocol import median_accuracy, probe_rule
from nanomorph.probe.features import extract_features
from nanomorph.ssl.train import pretrain

SIZES = (1, 2, 4, 8, 80)  # split seeds: protocol.SEEDS (1000-1019)


def cpu_arguments() -> dict:
    dump = os.environ.get("NANOMORPH_PRETRAIN_KWARGS")
    if dump:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(Path(dump).read_text()).items()}
    from nanomorph.config import load_config
    from nanomorph.ssl.train import pretrain_arguments
    return pretrain_arguments(load_config("params.yaml", "cpu").pretrain, "simclr")


def spec_arguments(spec: str, base: dict) -> dict:
    """`pretrain` keywords of a spec `view:epochs:batch[:key=value...]`: `base` (the cpu profile's arguments) with
    the view side, epochs, batch and each override (tuples as dash-separated values), no checkpoints."""
    view, epochs, batch, *overrides = spec.split(":")
    kw = {**base, "image_size": int(view), "epochs": int(epochs), "batch_size": int(batch), "checkpoint_every": 0}
    for item in overrides:
        key, value = item.split("=")
        if isinstance(kw[key], tuple):  # e.g. crop_side=0.25-0.5, projector_dims=512-128
            kw[key] = tuple(type(kw[key][0])(v) for v in value.split("-"))
        else:
            kw[key] = type(kw[key])(value)
    return kw


def resized(task: np.ndarray, side: int) -> np.ndarray:
    if side == task.shape[-1]:
        return task
    return torch.nn.functional.interpolate(torch.from_numpy(task)[:, None], size=side, mode="bilinear",
                                           antialias=True)[:, 0].numpy()


def score(encoder, task: np.ndarray, labels: np.ndarray, sides, out: Path, head: dict, tail: dict,
          device: str = "cpu") -> None:
    """Probe `encoder`'s layer3+layer4 features (averaged over the 8 rotations/flips) read at each side with the
    tuning protocol; one JSON line per side, {**head, feature_side, median, mean_n_le_8, **tail}, printed and
    appended to `out`."""
    for side in sides:
        Z = extract_features(encoder, resized(task, side), device=device, stages=("layer3", "layer4"), dihedral=True)
        med, _ = median_accuracy(labels, lambda train, fit, test: probe_rule(Z, labels, fit, test), sizes=SIZES)
        row = {**head, "feature_side": side, "median": med,
               "mean_n_le_8": round(float(np.mean([med[n] for n in SIZES if n <= 8])), 4), **tail}
        print(json.dumps(row), flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")


def main() -> None:
    work, specs = Path(sys.argv[1]), sys.argv[2:]
    z = np.load(work / "stacks.npz")
    task, labels = z["task"].astype(np.float32), z["labels"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = cpu_arguments()
    for spec in specs:
        kw = spec_arguments(spec, base)
        started = time.time()
        result = pretrain(task, **kw, checkpoint_path=None, device=device, progress=False)
        seconds = round(time.time() - started)
        last = {k: round(float(result.history[-1][k]), 4) for k in ("loss", "effective_rank")}
        score(result.encoder, task, labels, sorted({kw["image_size"], 64, 128}), work / "schedule_grid.jsonl",
              {"spec": spec}, {"pretrain_s": seconds, "device": device, **last}, device)


if __name__ == "__main__":
    main()
