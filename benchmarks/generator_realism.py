"""How TEM-like is the default generator? Real panels vs generated images, side by side and in numbers.

Reads the paper's four real nanowire TEM panels (`../shared/data/lu2022-figure/<class>.png`, CC0; the lower-right
quarter, where the figure's pasted "100 nm" label sits, is left out of the statistics) and generates
`--per-class` images per class at 256 px (the panels' pixel count for the same field of view) under generator seed `--data-seed` (7: neither the pipeline's 0 nor
the tuning seed 1). For every statistic of nanomorph.data.realism.image_statistics it records the real panel's
value and the generated median and interquartile range per class; it also scores a global Otsu and a local
threshold (nanomorph.segment.classical, fitted on one image per class) on the generated images resized to 64 px (the cpu profile's segmentation size), the
classical baseline's figure for this version of the generator.

    python benchmarks/generator_realism.py

Writes benchmarks/results/generator_realism.json and generator_realism.png (the report shows the figure).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from skimage.transform import resize

from _tracking import benchmark_run
from nanomorph.data.realism import STATISTICS, image_statistics
from nanomorph.data.synthetic import CLASSES, _image_rng, generate_nanowire_image
from nanomorph.segment.classical import CLASSICAL_SEGMENTERS, fit_classical
from nanomorph.segment.metrics import dice_iou

SIDE = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--panels", type=Path, default=Path("../shared/data/lu2022-figure"))
    parser.add_argument("--data-seed", type=int, default=7)
    parser.add_argument("--per-class", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/generator_realism.json"))
    args = parser.parse_args()
    if not args.panels.is_dir():
        raise SystemExit(f"{args.panels}: the real panels are not here (../shared/data/lu2022-figure)")
    table, generated = {}, {}
    for c in CLASSES:
        real = np.asarray(Image.open(args.panels / f"{c}.png").convert("L"), dtype=np.float64) / 255.0
        h, w = real.shape
        real_stats = image_statistics(real[: int(0.75 * h), : int(0.75 * w)])
        # Generated at 256 px, the real panels' resolution for the same field of view (the geometry is
        # resolution-independent), then cropped like the panels (their scale bar sits in a lower corner).
        images, masks = zip(*(generate_nanowire_image(c, SIDE, _image_rng(args.data_seed, 0, CLASSES.index(c), i))
                              for i in range(args.per_class)))
        generated[c] = (np.array(images) / 65535.0, np.array(masks), real)
        crop = int(0.75 * SIDE)
        stats = [image_statistics(im[:crop, :crop]) for im in generated[c][0]]
        table[c] = {k: {"real": real_stats[k], "generated_median": float(np.median([s[k] for s in stats])),
                        "generated_q1": float(np.quantile([s[k] for s in stats], 0.25)),
                        "generated_q3": float(np.quantile([s[k] for s in stats], 0.75))} for k in STATISTICS}
    small = np.array([resize(im, (64, 64), anti_aliasing=True) for c in CLASSES for im in generated[c][0]])
    truth = np.array([resize(m.astype(float), (64, 64), order=0) > 0.5 for c in CLASSES for m in generated[c][1]])
    fit = np.arange(0, len(small), args.per_class)  # the first image of each class
    classical = {}
    for method in CLASSICAL_SEGMENTERS:
        segmenter = fit_classical(method, small[fit], truth[fit])
        rest = np.setdiff1d(np.arange(len(small)), fit)
        classical[method] = {"setting": segmenter.describe(), "median_dice": float(np.median(
            [dice_iou(p, t)[0] for p, t in zip(segmenter.predict(small[rest]), truth[rest])]))}

    fig, axes = plt.subplots(len(CLASSES), 3, figsize=(9, 12))
    for row, c in enumerate(CLASSES):
        images, _masks, real = generated[c]
        for col, (picture, title) in enumerate([(real, f"real {c} (Lu et al. Fig. 2B)"),
                                                (images[0], f"generated {c}"), (images[1], f"generated {c}")]):
            axes[row, col].imshow(picture, cmap="gray", vmin=0, vmax=1)
            axes[row, col].set_title(title, fontsize=9)
            axes[row, col].axis("off")
    fig.suptitle("Real TEM panels vs the default generator")
    fig.tight_layout()
    figure = args.out.with_suffix(".png")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=90)
    payload = {"data_seed": args.data_seed, "per_class": args.per_class, "statistics": table,
               "classical_on_generated_64px": classical}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    with benchmark_run("generator_realism") as mlflow:
        mlflow.log_params({"data_seed": args.data_seed, "per_class": args.per_class})
        mlflow.log_metrics({f"{m}.median_dice": v["median_dice"] for m, v in classical.items()})
        mlflow.log_artifact(str(args.out))
        mlflow.log_artifact(str(figure))
    for c, stats in table.items():
        print(c, {k: f"real {v['real']:.3f} / generated {v['generated_median']:.3f}" for k, v in stats.items()})
    print("classical on generated images:", classical)
    print(f"wrote {args.out} and {figure}")


if __name__ == "__main__":
    main()
