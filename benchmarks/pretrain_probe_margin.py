"""Does pretraining learn? Few-shot probe accuracy of pretrained encoders against random-init ones.

For every seed, SimCLR and Barlow Twins are pretrained with the settings of a params.yaml profile (default
`cpu`) on the procedural generic EM images (384 at 128 px, generator seed 1), and each encoder -- and a
random-init encoder of the same architecture under the same seed -- embeds the procedural nanowire set
(4 classes x 100 images at 128 px, generator seed 0, decoded at the profile's image size like the probe
stage does). A linear probe is fitted on `--labels-per-class` labels per class and scored on the held-out
20 % over `--split-seeds` stratified splits (nanomorph.probe.sweep.probe_sweep, the profile's probe
settings). Reported: the median accuracy over splits per encoder and seed, and each pretrained encoder's
margin over the random-init encoder of the same seed.

    python benchmarks/pretrain_probe_margin.py            # ~2 min per pretraining on 2 free cores
    python benchmarks/pretrain_probe_margin.py --threads 1   # on a busy shared machine

Results go to benchmarks/results/pretrain_probe_margin.json (rewritten after every encoder, so a run cut
short keeps what it finished, and `--resume` goes on from there) and to MLflow experiment
"nanomorph-benchmarks".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from _tracking import benchmark_run
from nanomorph.config import load_config
from nanomorph.data.io import load_image_stack
from nanomorph.data.layout import find_images, find_nanowire_dataset
from nanomorph.data.synthetic import write_generic_em_dataset, write_nanowire_dataset
from nanomorph.models.encoder import random_encoder
from nanomorph.probe.features import extract_features
from nanomorph.probe.solvers import SolverSettings
from nanomorph.probe.sweep import probe_sweep
from nanomorph.ssl.train import pretrain


def make_data(work: Path, classes: tuple[str, ...], image_size: int, source_size: int):
    """Generic pretraining stack, nanowire probe stack and labels, from freshly generated images."""
    write_generic_em_dataset(work / "generic", n_images=384, size=128, seed=1, progress=False)
    write_nanowire_dataset(work / "nanowires", classes, 100, 128, seed=0, progress=False)
    generic = load_image_stack(find_images(work / "generic"), source_size)
    samples = find_nanowire_dataset(work / "nanowires", classes)
    nanowires = load_image_stack([s.image for s in samples], image_size)
    return generic, nanowires, np.array([s.label for s in samples])


def probe_accuracy(features: np.ndarray, labels: np.ndarray, cfg, n: int, split_seeds: int) -> dict[str, float]:
    pr = cfg.probe
    settings = SolverSettings(solver=pr.solver, C=pr.C, tol=pr.tol, max_iter=pr.max_iter)
    table = probe_sweep({("features", 0): features}, labels, [n], list(range(split_seeds)), pr.test_fraction,
                        settings, classifiers=("linear",)).table
    acc = table["accuracy"]
    return {"median_accuracy": float(acc.median()), "accuracy_q1": float(acc.quantile(0.25)),
            "accuracy_q3": float(acc.quantile(0.75)), "splits": int(len(acc))}


def pretrained_encoder(images: np.ndarray, cfg, method: str, seed: int):
    p = cfg.pretrain
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a collapse warning is recorded in the history's embedding_std
        result = pretrain(
            images, method=method, arch=p.arch, image_size=p.image_size, batch_size=p.batch_size, epochs=p.epochs,
            optimizer=p.optimizer, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay,
            warmup_epochs=p.warmup_epochs, temperature=p.temperature, lambd=p.lambd,
            projector_dims=p.projector_dims, crop_side=p.crop_side, flip_p=p.flip_p, jitter_p=p.jitter_p,
            brightness=p.brightness, contrast=p.contrast, seed=seed, dihedral=p.dihedral, blur_p=p.blur_p,
            blur_sigma=p.blur_sigma, noise_std=p.noise_std, checkpoint_path=None, checkpoint_every=0,
            accumulate_steps=p.accumulate_steps, compile_model=p.compile, cpu_bf16=p.cpu_bf16,
            progress=False,
            device="cuda" if torch.cuda.is_available() else "cpu",
        )
    last = result.history[-1]
    return result.encoder, {k: float(last[k]) for k in ("loss", "embedding_std", "effective_rank")}


def summarise(runs: list[dict], methods: list[str]) -> dict:
    random_by_seed = {r["seed"]: r["median_accuracy"] for r in runs if r["encoder"] == "random"}
    summary = {"random": {"median_accuracy_by_seed": random_by_seed}}
    for method in methods:
        by_seed = {r["seed"]: r["median_accuracy"] for r in runs if r["encoder"] == method}
        margins = {s: by_seed[s] - random_by_seed[s] for s in by_seed if s in random_by_seed}
        summary[method] = {"median_accuracy_by_seed": by_seed, "margin_over_random_by_seed": margins,
                           "mean_margin": float(np.mean(list(margins.values()))) if margins else None,
                           "seeds_above_random": sum(m > 0 for m in margins.values())}
    return summary


def log_to_mlflow(params: dict, runs: list[dict], summary: dict) -> None:
    with benchmark_run("pretrain_probe_margin") as mlflow:
        mlflow.log_params(params)
        for r in runs:
            mlflow.log_metric(f"{r['encoder']}.seed{r['seed']}.median_accuracy", r["median_accuracy"])
        for method, s in summary.items():
            if s.get("mean_margin") is not None:
                mlflow.log_metric(f"{method}.mean_margin_over_random", s["mean_margin"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["simclr", "barlow_twins"])
    parser.add_argument("--labels-per-class", type=int, default=8)
    parser.add_argument("--split-seeds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's); 1 on a machine shared with other jobs, "
                             "where two threads contending for busy cores make every step several times slower")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pretrain_probe_margin.json"))
    parser.add_argument("--resume", action="store_true",
                        help="keep the (encoder, seed) results already in --out, if run with the same params")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.params, profile=args.profile)
    p = cfg.pretrain
    params = {"profile": args.profile, "seeds": args.seeds, "methods": args.methods,
              "labels_per_class": args.labels_per_class, "split_seeds": args.split_seeds, "arch": p.arch,
              "image_size": p.image_size, "source_size": p.source_size, "batch_size": p.batch_size,
              "epochs": p.epochs, "optimizer": p.optimizer, "lr": p.lr, "probe_solver": cfg.probe.solver,
              "generic_images": "384 x 128 px, generator seed 1", "nanowires": "4 x 100 x 128 px, seed 0"}
    machine = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
               "python": platform.python_version(),
               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    runs: list[dict] = []
    if args.resume and args.out.is_file():
        previous = json.loads(args.out.read_text())
        if previous["params"] != params:
            raise SystemExit(f"{args.out} was written with other params; rerun without --resume")
        runs = previous["runs"]
    done = {(r["encoder"], r["seed"]) for r in runs}

    def save() -> dict:
        summary = summarise(runs, args.methods)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"params": params, "machine": machine, "runs": runs, "summary": summary},
                                       indent=2) + "\n")
        return summary

    with tempfile.TemporaryDirectory() as tmp:
        generic, nanowires, labels = make_data(Path(tmp), cfg.data.classes, p.image_size, p.source_size)
    for seed in args.seeds:
        if ("random", seed) not in done:
            features = extract_features(random_encoder(p.arch, seed), nanowires)
            runs.append({"encoder": "random", "seed": seed,
                         **probe_accuracy(features, labels, cfg, args.labels_per_class, args.split_seeds)})
            save()
        for method in args.methods:
            if (method, seed) in done:
                continue
            started = time.perf_counter()
            encoder, last = pretrained_encoder(generic, cfg, method, seed)
            seconds = time.perf_counter() - started
            features = extract_features(encoder, nanowires)
            runs.append({"encoder": method, "seed": seed, "pretrain_seconds": seconds, **last,
                         **probe_accuracy(features, labels, cfg, args.labels_per_class, args.split_seeds)})
            print(json.dumps(runs[-1]), flush=True)
            save()
    summary = save()
    print(json.dumps(summary, indent=2))
    log_to_mlflow({k: str(v) for k, v in params.items()}, runs, summary)


if __name__ == "__main__":
    main()
