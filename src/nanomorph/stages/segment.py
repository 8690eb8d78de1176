"""Stage `segment`: few-shot U-Net sweep with transferred, frozen encoders; per-image dice and IoU.

A validation part (`segment.validation_fraction` of the train part, stratified, never trained on) is
scored alongside the test images. After the sweep, the test-set predictions of one model -- the encoder
with the highest median VALIDATION dice at the largest training-set size, first seed -- are analysed as the
paper's downstream tasks would use them: percolation verdicts (dispersed vs network) and pixel densities
from PREDICTED masks against the labels and the true masks, and per-object statistics of both. The masks
are compared at the sweep's `image_size`, the resolution the model was trained and evaluated at. The test
images play no part in the choice, so these numbers are an honest estimate for the chosen model.

Classical segmenters (`segment.classical`: global Otsu and a local threshold, nanomorph.segment.classical) are
fitted on the same training images of every run and scored on the same images; `headline_tests` in
metrics/segment.json compares every learned segmenter with them and with random-init (paired Wilcoxon over test
images, Holm), and the downstream readings of the validation-chosen classical segmenter stand beside the
learned one's under `classical_downstream`.

Outputs: test rows in metrics/segment_results.csv (the study's numbers), validation rows in
metrics/segment_validation.csv (only for the choice).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from nanomorph.config import Config
from nanomorph.data.io import load_image_stack, load_mask_stack
from nanomorph.data.validation import accepted
from nanomorph.errors import NanomorphError
from nanomorph.models.encoder import resolve_encoder
from nanomorph.models.precision import best_device
from nanomorph.plotting.common import grouped_boxplot
from nanomorph.probe.splits import split_rule
from nanomorph.probe.stats import pairwise_wilcoxon
from nanomorph.segment.figures import overlay_figure
from nanomorph.segment.morphology import morphology_agreement, morphology_table
from nanomorph.segment.sweep import SweepRun, segmentation_sweep
from nanomorph.stages._common import on_terminal, stage_main, tracked, write_json
from nanomorph.tracking.runs import log_curve

FIGURE_DIR = Path("figures/segment")
MORPHOLOGY_CSV = Path("metrics/segment_morphology.csv")
VALIDATION_CSV = Path("metrics/segment_validation.csv")


class LargestRunPredictions:
    """`on_run` callback keeping, per encoder, the test predictions of its largest-n run of one seed."""

    def __init__(self, seed: int):
        self.seed = seed
        self.runs: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}  # encoder -> (n, test_idx, pred)

    def __call__(self, run: SweepRun) -> None:
        if run.seed == self.seed and (run.encoder not in self.runs or run.n >= self.runs[run.encoder][0]):
            self.runs[run.encoder] = (run.n, run.test_idx, run.pred)


def best_encoder(validation: pd.DataFrame, encoders: tuple[str, ...]) -> tuple[str, int]:
    """(encoder, n): highest median validation dice at the largest n; ties go to the encoder listed first."""
    if validation.empty:
        raise NanomorphError("segment: no validation images to choose a model on; "
                             "set segment.validation_fraction > 0 with enough images")
    if set(validation["split"]) != {"validation"}:
        raise ValueError("best_encoder must be given validation rows only")
    n_max = int(validation["n"].max())
    medians = validation[validation["n"] == n_max].groupby("encoder")["dice"].median()
    return max((name for name in encoders if name in medians), key=lambda name: medians[name]), n_max


def headline_tests(results: pd.DataFrame, learned: tuple[str, ...], classical: tuple[str, ...]) -> list[dict]:
    """Every learned segmenter vs every classical one and vs `random` at every n: paired Wilcoxon over the
    shared test images (per-image dice averaged over seeds), Holm-corrected over this family."""
    baselines = [*classical, *(["random"] if "random" in learned else [])]
    pairs = [(m, b) for m in learned if m != "random" for b in baselines]
    if not pairs:
        return []
    tests = pairwise_wilcoxon(results, value="dice", unit="image_index", pairs=pairs)
    return [{"n": int(r.n), "method": r.method_a, "baseline": r.method_b, "median_difference": r.median_difference,
             "p": r.p, "p_holm": r.p_holm} for r in tests.itertuples()]


def median_example(scores: pd.DataFrame) -> int:
    """Row position (in `scores`) of the image whose dice is closest to its group's median."""
    return int(np.argmin(np.abs(scores["dice"].to_numpy() - scores["dice"].median())))


def _flat_metrics(prefix: str, values: dict) -> dict[str, float]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat_metrics(f"{prefix}{key}.", value))
        elif value is not None and not (isinstance(value, float) and np.isnan(value)):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def write_figures(results: pd.DataFrame, best: dict, images: np.ndarray, masks: np.ndarray, pred: np.ndarray,
                  test_idx: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> list[Path]:
    """Dice and IoU box plots over training-set sizes, and one overlay per class (its median-dice image)."""
    FIGURE_DIR.mkdir(parents=True, exist_ok=True)
    # The stage owns figures/segment: overlays of classes absent from this run's test split must not linger.
    for stale in FIGURE_DIR.glob("*.png"):
        stale.unlink()
    paths = [
        grouped_boxplot(results, value, "training images", f"per-image {value}",
                        f"U-Net with transferred frozen encoder: test {value}",
                        FIGURE_DIR / f"{value}_vs_train_size.png")
        for value in ("dice", "iou")
    ]
    scores = results[(results["encoder"] == best["encoder"]) & (results["n"] == best["n"])
                     & (results["seed"] == best["seed"])].set_index("image_index").loc[test_idx].reset_index()
    test_labels = labels[test_idx]
    for label in [c for c in classes if c in set(test_labels)]:
        in_class = np.flatnonzero(test_labels == label)
        k = in_class[median_example(scores.iloc[in_class])]
        title = (f"{label}: test image {int(test_idx[k])}, {best['encoder']} encoder, n={best['n']}, "
                 f"dice {scores['dice'].iloc[k]:.2f}")
        paths.append(overlay_figure(images[test_idx[k]], masks[test_idx[k]], pred[k],
                                    FIGURE_DIR / f"overlay_{label}.png", title))
    return paths


def run_segment(cfg: Config, _args: argparse.Namespace) -> None:
    sg, pt = cfg.segment, cfg.pretrain
    rows = accepted(cfg.validate.manifest, "nanowire")
    rows = rows[rows["mask_path"].notna()].reset_index(drop=True)
    if rows.empty:
        raise NanomorphError(f"{cfg.validate.manifest}: no nanowire images with masks to segment")
    images = load_image_stack([Path(p) for p in rows["path"]], sg.image_size)
    masks = load_mask_stack([Path(p) for p in rows["mask_path"]], sg.image_size)
    labels = rows["label"].to_numpy(dtype=str)
    rule = split_rule(rows, sg.test_fraction, cfg.validate.manifest)
    states = {name: resolve_encoder(name, pt.arch, pt.seed).resnet_state_dict() for name in sg.encoders}
    kept = LargestRunPredictions(seed=sg.seed)
    with tracked(cfg, "segment", ("segment",)):
        mlflow.log_params({"arch": pt.arch, "n_images": len(images)})
        scored = segmentation_sweep(
            images, masks, states, arch=pt.arch, train_sizes=sg.train_sizes, epochs_for=sg.epochs_for,
            seeds=[sg.seed + k for k in range(sg.seeds)], test_fraction=rule, lr=sg.lr,
            batch_size=sg.batch_size, freeze_encoder=sg.freeze_encoder, validation_fraction=sg.validation_fraction,
            strata=labels, device=best_device(), on_run=kept, classical=sg.classical, progress=on_terminal(),
            object_min_size=sg.object_min_size, steps=sg.steps, crop_size=sg.crop_size, encoder_lr=sg.encoder_lr,
            dihedral=sg.dihedral, loss=sg.loss, cpu_bf16=sg.cpu_bf16,
            balanced_subsets=sg.balanced_subsets, predict_cpu_bf16=sg.predict_cpu_bf16,
        )
        scored["image"] = rows["path"].to_numpy()[scored["image_index"].to_numpy()]
        validation = scored[scored["split"] == "validation"]
        results = scored[scored["split"] == "test"].drop(columns="split")
        validation.drop(columns="split").to_csv(VALIDATION_CSV, index=False)
        results.to_csv("metrics/segment_results.csv", index=False)
        grouped = results.groupby(["n", "encoder"])
        summary = grouped["dice"].median().unstack("encoder").reset_index()
        summary.to_csv("metrics/segment_summary.csv", index=False)
        methods = (*sg.encoders, *sg.classical)
        metrics = {
            name: {f"n{int(n)}": {"dice": float(g["dice"].median()), "iou": float(g["iou"].median())}
                   for n, g in results[results["encoder"] == name].groupby("n")}
            for name in methods
        }
        tests = headline_tests(results, sg.encoders, sg.classical)
        for name, per_n in metrics.items():
            for n, values in per_n.items():
                mlflow.log_metrics({f"{name}.{k}.{n}": v for k, v in values.items()})
            for k in ("dice", "iou"):  # curves against the number of training images in the MLflow UI
                log_curve(f"{name}.median_{k}", {int(n[1:]): values[k] for n, values in per_n.items()})

        encoder, n_best = best_encoder(validation, sg.encoders)
        n_kept, test_idx, pred = kept.runs[encoder]
        if n_kept != n_best:  # the largest n of the first seed is the largest n of all seeds (same split sizes)
            raise NanomorphError(f"segment: kept predictions for n={n_kept}, expected n={n_best}")
        best = {"encoder": encoder, "n": n_best, "seed": sg.seed, "chosen_on": "validation",
                "median_validation_dice": float(validation[(validation["encoder"] == encoder)
                                                           & (validation["n"] == n_best)]["dice"].median()),
                "median_dice": metrics[encoder][f"n{n_best}"]["dice"]}
        morphology = morphology_table(pred, masks[test_idx], labels[test_idx], min_size=sg.object_min_size)
        morphology.insert(0, "image", rows["path"].to_numpy()[test_idx])
        morphology.to_csv(MORPHOLOGY_CSV, index=False)
        downstream = morphology_agreement(morphology)
        classical_downstream = {}
        if sg.classical:
            # The same downstream reading of the classical segmenter chosen the same way (validation dice).
            method, _ = best_encoder(validation, sg.classical)
            _n, c_idx, c_pred = kept.runs[method]
            c_table = morphology_table(c_pred, masks[c_idx], labels[c_idx], min_size=sg.object_min_size)
            classical_downstream = {"method": method, **morphology_agreement(c_table)}
        figures = write_figures(results, best, images, masks, pred, test_idx, labels, cfg.data.classes)

        write_json("metrics/segment.json", {"median": metrics, "best": best, "image_size": sg.image_size,
                                            "classical": list(sg.classical), "headline_tests": tests,
                                            **downstream, "classical_downstream": classical_downstream})
        at_best = ", ".join(f"{name} {metrics[name][f'n{n_best}']['dice']:.3f}" for name in methods
                            if f"n{n_best}" in metrics[name])
        print(f"segment: {len(results)} test masks scored over {results['n'].nunique()} training-set sizes; median "
              f"test dice at n={n_best}: {at_best}; {encoder} chosen on validation")
        mlflow.log_params({"best_encoder": encoder, "best_n": n_best})
        mlflow.log_metrics(_flat_metrics("downstream.", downstream))
        mlflow.log_artifact("metrics/segment_results.csv")
        mlflow.log_artifact(str(VALIDATION_CSV))
        mlflow.log_artifact(str(MORPHOLOGY_CSV))
        for path in figures:
            mlflow.log_artifact(str(path), artifact_path="figures")


def main(argv: list[str] | None = None) -> int:
    return stage_main("segment", run_segment, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
