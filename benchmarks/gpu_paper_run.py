"""One measured run of the `paper` profile on a GPU (issue 18), sized for at most ~10 minutes on one H200.

In one process, with what the machine has (no network: the data are the procedural default, generated here):
1. Data: `data.generic_images` generic EM images and the nanowire set (4 x `data.images_per_class`) at the
   profile's sizes, generator seed `data.seed` (the pipeline's own).
2. Pretraining of each method (`--methods`) at the profile's batch size and resolution through the library's
   `pretrain` (on CUDA: bf16 autocast, channels-last, SyncBatchNorm under DDP; `--compile` adds torch.compile).
   One timed epoch fixes how many epochs fit `--pretrain-minutes`; then a fresh run of that many epochs (the
   cosine schedule spans them). Recorded: source images/s (each gives two views) over the whole run, peak
   device memory, FLOPs of one optimiser step (torch.utils.flop_counter on the step's forward + backward) and
   model FLOP utilisation against `--peak-tflops` (default: the device's dense bf16 peak where known).
3. Features of the nanowire set (`probe.feature_size`, stages, dihedral readout) for each pretrained encoder and
   the random-init one, and the linear probe sweep at `--labels` labels per class over `probe.split_seeds` splits.
4. A short segmentation sweep (`--segment-sizes` training images) with each encoder and the classical
   thresholds, at the profile's segmentation settings.
Everything goes to one JSON (`--out`), rewritten after each step, and to MLflow ("nanomorph-benchmarks").

    python benchmarks/gpu_paper_run.py                                     # H200: ~10 min
    python benchmarks/gpu_paper_run.py --profile micro --pretrain-minutes 0.05 --out /tmp/gpu.json   # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from _tracking import benchmark_run
from pretrain_probe_margin import pretrained_encoder
from nanomorph.config import load_config
from nanomorph.data.io import load_image_stack, load_mask_stack
from nanomorph.data.layout import find_images, find_nanowire_dataset
from nanomorph.data.synthetic import write_generic_em_dataset, write_nanowire_dataset
from nanomorph.models.encoder import Projector, ResNetEncoder, normalise, random_encoder
from nanomorph.probe.features import extract_features
from nanomorph.probe.solvers import SolverSettings
from nanomorph.probe.sweep import probe_sweep
from nanomorph.segment.sweep import segmentation_sweep

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def device_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def step_flops(arch: str, projector_dims: tuple[int, ...], batch: int, image_size: int, device: torch.device) -> int:
    """FLOPs of one optimiser step's forward + backward: both views of `batch` images through encoder + projector."""
    from torch.utils.flop_counter import FlopCounterMode

    encoder = ResNetEncoder(arch, 1).to(device)
    projector = Projector(encoder.out_dim, tuple(projector_dims)).to(device)
    views = torch.rand(2 * batch, 1, image_size, image_size, device=device)
    with FlopCounterMode(display=False) as counter:
        projector(encoder(normalise(views))).square().mean().backward()
    return int(counter.get_total_flops())


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB -> GiB, the whole process


def timed_pretraining(images: np.ndarray, cfg, method: str, epochs: int, device: torch.device, compile_model: bool):
    """(encoder, last epoch's metrics, seconds) of `pretrained_encoder` under the profile's settings with `epochs`
    epochs and `compile_model`; `device` is the one it picks (CUDA when there is one)."""
    cfg = replace(cfg, pretrain=replace(cfg.pretrain, epochs=epochs, compile=compile_model))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    encoder, last = pretrained_encoder(images, cfg, method, cfg.pretrain.seed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return encoder, last, time.perf_counter() - started


def generate_data(work: Path, cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    d = cfg.data
    write_generic_em_dataset(work / "generic", d.generic_images, d.generic_size, d.seed, progress=False)
    write_nanowire_dataset(work / "nanowires", d.classes, d.images_per_class, d.image_size, d.seed, progress=False)
    samples = find_nanowire_dataset(work / "nanowires", d.classes)
    generic = load_image_stack(find_images(work / "generic"), cfg.pretrain.source_size)
    stacks = {"generic": generic, "task": load_image_stack([s.image for s in samples], cfg.pretrain.source_size)}
    images = np.concatenate([stacks[source] for source in cfg.pretrain.images.split("+")])  # as the stage reads it
    labels = np.array([s.label for s in samples])
    return images, labels, np.array([str(s.image) for s in samples]), np.array([str(s.mask) for s in samples])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--methods", nargs="+", default=["simclr", "barlow_twins"])
    parser.add_argument("--pretrain-minutes", type=float, default=2.5, help="per method, after the timed epoch")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder + projector")
    parser.add_argument("--labels", type=int, nargs="+", default=[1, 8, 80])
    parser.add_argument("--segment-sizes", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_paper_run.json"))
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args(argv)
    cfg = load_config(args.params, profile=args.profile)
    p, pr, sg = cfg.pretrain, cfg.probe, cfg.segment
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = args.peak_tflops or device_peak_tflops(device)
    out: dict = {
        "what": "paper-profile pretraining, probe sweep and segmentation sweep on the procedural default in one run",
        "machine": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
                    "torch": torch.__version__, "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
                    "peak_bf16_tflops": peak},
        "profile": args.profile, "pretrain_config": {k: (list(v) if isinstance(v, tuple) else v)
                                                     for k, v in asdict(p).items()},
        "compile": args.compile, "pretrain": {}, "probe": {}, "segment": {}, "seconds": {},
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1, default=float) + "\n")

    run_started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        images, labels, image_paths, mask_paths = generate_data(Path(tmp), cfg)
        feature_images = load_image_stack(list(image_paths), pr.feature_size)
        seg_images = load_image_stack(list(image_paths), sg.image_size)
        seg_masks = load_mask_stack(list(mask_paths), sg.image_size)
    out["seconds"]["data"] = time.perf_counter() - started
    out["data"] = {"pretrain_images": len(images), "nanowire_images": len(labels), "seed": cfg.data.seed}

    flops = step_flops(p.arch, p.projector_dims, p.batch_size, p.image_size, device)
    encoders = {}
    for method in args.methods:
        *_, epoch_seconds = timed_pretraining(images, cfg, method, 1, device, args.compile)
        epochs = max(1, math.floor(args.pretrain_minutes * 60 / epoch_seconds))
        encoder, last, seconds = timed_pretraining(images, cfg, method, epochs, device, args.compile)
        steps = epochs * (len(images) // (p.batch_size * p.accumulate_steps))
        achieved = flops * steps / seconds
        out["pretrain"][method] = {
            "epochs": epochs, "steps": steps, "seconds": seconds, "first_epoch_seconds": epoch_seconds,
            "images_per_s": epochs * len(images) / seconds, "step_tflop": flops / 1e12,
            "achieved_tflops": achieved / 1e12, "mfu": achieved / (peak * 1e12) if peak else None,
            "peak_memory_gib": peak_memory_gib(device),
            "last_epoch": last,
        }
        encoders[method] = encoder
        save()
    encoders["random"] = random_encoder(p.arch, p.seed)

    started = time.perf_counter()
    features = {(name, p.seed): extract_features(enc, feature_images, device=device, stages=pr.feature_stages,
                                                 dihedral=pr.feature_dihedral) for name, enc in encoders.items()}
    settings = SolverSettings(solver=pr.solver, C=pr.C, tol=pr.tol, max_iter=pr.max_iter)
    sizes = [n for n in args.labels if n <= int(0.8 * cfg.data.images_per_class)]
    table = probe_sweep(features, labels, sizes, list(range(pr.split_seeds)), pr.test_fraction, settings,
                        classifiers=("linear",)).table
    out["probe"] = {name: {f"n{n}": float(g["accuracy"].median()) for n, g in table[table["encoder"] == name].groupby("n")}
                    for name in encoders}
    out["seconds"]["features_and_probe"] = time.perf_counter() - started
    save()

    started = time.perf_counter()
    states = {name: enc.resnet_state_dict() for name, enc in encoders.items()}
    scored = segmentation_sweep(
        seg_images, seg_masks, states, arch=p.arch, train_sizes=args.segment_sizes, epochs_for=sg.epochs_for,
        seeds=[sg.seed], test_fraction=sg.test_fraction, lr=sg.lr, batch_size=sg.batch_size,
        freeze_encoder=sg.freeze_encoder, strata=labels, device=str(device), progress=False,
        classical=sg.classical, object_min_size=sg.object_min_size, steps=sg.steps, crop_size=sg.crop_size,
        dihedral=sg.dihedral, loss=sg.loss, balanced_subsets=sg.balanced_subsets,
    )
    test = scored[scored["split"] == "test"]
    out["segment"] = {name: {f"n{n}": float(g["dice"].median()) for n, g in test[test["encoder"] == name].groupby("n")}
                      for name in dict.fromkeys(test["encoder"])}
    out["seconds"]["segment"] = time.perf_counter() - started
    out["seconds"]["total"] = time.perf_counter() - run_started
    save()
    if not args.no_mlflow:
        with benchmark_run("gpu_paper_run") as mlflow:
            mlflow.log_params({"profile": args.profile, "device": out["machine"]["device"], "compile": args.compile})
            for method, r in out["pretrain"].items():
                mlflow.log_metrics({f"{method}.{k}": v for k, v in r.items() if isinstance(v, (int, float)) and v is not None})
            for name, per_n in out["probe"].items():
                for n, acc in per_n.items():
                    mlflow.log_metric(f"{name}.probe_median_acc", acc, step=int(n[1:]))
            mlflow.log_artifact(str(args.out))
    print(json.dumps({k: out[k] for k in ("pretrain", "probe", "segment", "seconds")}, indent=1, default=float))
    return out


if __name__ == "__main__":
    main()
