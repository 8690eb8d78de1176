"""Tuning study of the segmentation schedule, on TUNING data the pipeline's report never shows.

Generates the default nanowire set under generator seed `--data-seed` (default 1; the report uses 0) and runs the
segment stage's sweep (nanomorph.segment.sweep.segmentation_sweep, cpu-profile sizes, seeds from `--seed`
1000) for each schedule in `--steps` (0 = the paper's epochs per size x epoch_scale; else fixed optimiser
steps), with the random-init encoder and any encoder files given by `--encoders` (e.g. the ones
benchmarks/tune_probe.py can save), next to the classical segmenters. Reports the median VALIDATION dice
per schedule, encoder and n (test rows are not read), so the schedule is chosen on validation images of
tuning data.

    python benchmarks/tune_segment.py --steps 0 100 200 400

Writes benchmarks/results/tune_segment.json and logs it to MLflow experiment "nanomorph-benchmarks".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from _tracking import benchmark_run
from nanomorph.config import load_config
from nanomorph.data.io import load_image_stack, load_mask_stack
from nanomorph.data.layout import find_nanowire_dataset
from nanomorph.data.synthetic import write_nanowire_dataset
from nanomorph.models.encoder import load_encoder, random_encoder
from nanomorph.segment.sweep import segmentation_sweep


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--data-seed", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 200])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="default: the profile's train_sizes")
    parser.add_argument("--encoders", type=Path, nargs="*", default=[], help="encoder .pt files besides random")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tune_segment.json"))
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.data_seed == load_config("params.yaml", args.profile).data.seed:
        parser.error("--data-seed 0 is the reported data; tune on another generator seed")
    cfg = load_config("params.yaml", args.profile)
    d, sg, pt = cfg.data, cfg.segment, cfg.pretrain
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        write_nanowire_dataset(Path(tmp), d.classes, d.images_per_class, d.image_size, args.data_seed, progress=False)
        samples = find_nanowire_dataset(Path(tmp), d.classes)
        images = load_image_stack([s.image for s in samples], sg.image_size)
        masks = load_mask_stack([s.mask for s in samples], sg.image_size)
    labels = np.array([s.label for s in samples])
    states = {"random": random_encoder(pt.arch, pt.seed).resnet_state_dict()}
    for path in args.encoders:
        states[path.stem] = load_encoder(path)[0].resnet_state_dict()
    results = {}
    for steps in args.steps:
        t0 = time.perf_counter()
        scored = segmentation_sweep(
            images, masks, states, arch=pt.arch, train_sizes=args.sizes or sg.train_sizes, epochs_for=sg.epochs_for,
            seeds=[args.seed], test_fraction=sg.test_fraction, lr=sg.lr, batch_size=sg.batch_size,
            freeze_encoder=sg.freeze_encoder, validation_fraction=sg.validation_fraction, strata=labels,
            progress=False, classical=sg.classical, object_min_size=sg.object_min_size, steps=steps or None)
        validation = scored[scored["split"] == "validation"]
        medians = validation.groupby(["encoder", "n"])["dice"].median().unstack("n")
        name = "paper_epochs" if steps == 0 else f"steps{steps}"
        results[name] = {e: {str(n): float(v) for n, v in row.items()} for e, row in medians.iterrows()}
        print(f"{name} ({time.perf_counter() - t0:.0f} s): median validation dice\n{medians.round(3).to_string()}",
              flush=True)
    payload = {"data_seed": args.data_seed, "seed": args.seed, "profile": args.profile,
               "segment": dataclasses.asdict(sg), "median_validation_dice": results,
               "seconds": time.perf_counter() - started}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    with benchmark_run("tune_segment") as mlflow:
        mlflow.log_params({"data_seed": args.data_seed, "seed": args.seed, "steps": str(args.steps)})
        mlflow.log_artifact(str(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
