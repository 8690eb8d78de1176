"""Compare the synthetic nanowire generator with the paper's four real TEM panels.

Writes `benchmarks/results/generator_realism.json`: for each statistic of `nanomorph.data.realism`, the value on each
real panel (resized to the generated images' side, so both show one field of view; rough wire mask) and the
median and interquartile range over generated images of its class, measured with the same rough mask and,
for the mask-based statistics, with the exact mask too. Also a global Otsu threshold's dice on the generated
images (reported only: never a calibration target) and the generation time.

Writes `benchmarks/results/generator_realism.png`: each real panel beside two generated images of its class and the
first one's exact mask outline.

    python scripts/generator_realism.py [--panels /work/shared/data/lu2022-figure] [--per-class 25] [--seed 7]

The data seed (7) differs from the pipeline's (0), so the images checked are not the ones trained on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402
from skimage.filters import threshold_otsu  # noqa: E402
from skimage.morphology import remove_small_objects  # noqa: E402
from skimage.transform import resize  # noqa: E402

from nanomorph.data.realism import (  # noqa: E402
    MASK_STATISTICS, STATISTICS, crop_flat_borders, image_statistics, normalise, overlay_mask,
)
from nanomorph.data.synthetic import CLASSES, _image_rng, _NANOWIRE_STREAM, generate_nanowire_image  # noqa: E402

DEFAULT_PANELS = Path("/work/shared/data/lu2022-figure")


def load_panel(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A real panel as float intensities without its frame rows, and the pixels not under its overlays."""
    image = crop_flat_borders(np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255.0)
    return image, ~overlay_mask(image)


def generated(name: str, index: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Image `index` of class `name` exactly as `write_nanowire_dataset(..., seed)` writes it, in [0, 1]."""
    image, mask = generate_nanowire_image(name, size, _image_rng(seed, _NANOWIRE_STREAM, CLASSES.index(name), index))
    return image / 65535.0, mask


def _remove_specks(mask: np.ndarray) -> np.ndarray:
    """skimage's remove_small_objects, 8-connected objects under 4 px (its keyword changed in 0.26)."""
    try:
        return remove_small_objects(mask, max_size=3, connectivity=2)
    except TypeError:
        return remove_small_objects(mask, min_size=4, connectivity=2)


def otsu_dice(image: np.ndarray, mask: np.ndarray) -> float:
    """Dice of a global Otsu threshold (wires darker), 8-connected specks under 4 px removed."""
    found = _remove_specks(image < threshold_otsu(image))
    total = found.sum() + mask.sum()
    return 1.0 if total == 0 else float(2 * (found & mask).sum() / total)


def summary(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"median": float("nan"), "q25": float("nan"), "q75": float("nan"), "n": 0}
    q25, med, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"median": float(med), "q25": float(q25), "q75": float(q75), "n": int(len(v))}


def outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def figure(panels: dict, examples: dict, size: int, path: Path) -> None:
    fig, axes = plt.subplots(len(CLASSES), 4, figsize=(12, 3.1 * len(CLASSES)))
    for row, name in enumerate(CLASSES):
        real, valid = panels[name]
        shown = np.clip(normalise(resize(real, (size, size), anti_aliasing=True), None), 0, 1)
        tiles = [shown] + [np.clip(normalise(im, None), 0, 1) for im, _ in examples[name][:2]]
        first, first_mask = examples[name][0]
        overlay = np.repeat(np.clip(normalise(first, None), 0, 1)[..., None], 3, axis=2)
        overlay[outline(first_mask)] = (1.0, 0.1, 0.1)
        titles = [f"real {name} ({real.shape[1]} px -> {size})", f"generated {name} #0", f"generated {name} #1",
                  "#0 + exact mask outline"]
        for col, (tile, title) in enumerate(zip(tiles + [overlay], titles)):
            ax = axes[row, col]
            ax.imshow(tile, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.suptitle("Real TEM panels (Lu et al., CC0) vs the synthetic generator, same field of view, 1-99 % stretch",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--panels", type=Path, default=DEFAULT_PANELS)
    parser.add_argument("--per-class", type=int, default=25)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    panels = {name: load_panel(args.panels / f"{name}.png") for name in CLASSES}
    real = {name: image_statistics(image, valid=valid, side=args.size) for name, (image, valid) in panels.items()}

    rough, exact, dice, dice_half, examples = {}, {}, {}, {}, {}
    seconds = 0.0
    for name in CLASSES:
        rough[name], exact[name], dice[name], dice_half[name], examples[name] = [], [], [], [], []
        for i in range(args.per_class):
            start = time.perf_counter()
            image, mask = generated(name, i, args.size, args.seed)
            seconds += time.perf_counter() - start
            valid = ~overlay_mask(image)
            rough[name].append(image_statistics(image, valid=valid, side=args.size))
            exact[name].append(image_statistics(image, mask=mask, valid=valid, side=args.size))
            dice[name].append(otsu_dice(image, mask))
            # As the pipeline sees it at the cpu profile: resized to half the side (bilinear, anti-aliased;
            # the mask by nearest neighbour), as nanomorph.data.io does.
            half = args.size // 2
            small = np.clip(resize(image, (half, half), order=1, anti_aliasing=True, preserve_range=True,
                                   mode="reflect"), 0.0, 1.0)
            small_mask = resize(mask.astype(np.float64), (half, half), order=0, anti_aliasing=False,
                                preserve_range=True, mode="reflect") > 0.5
            dice_half[name].append(otsu_dice(small, small_mask))
            if i < 2:
                examples[name].append((image, mask))

    statistics = {}
    for stat in STATISTICS:
        entry = {
            "real": {name: real[name][stat] for name in CLASSES},
            "generated": {name: summary([s[stat] for s in rough[name]]) for name in CLASSES},
        }
        if stat in MASK_STATISTICS:
            entry["generated_exact_mask"] = {name: summary([s[stat] for s in exact[name]]) for name in CLASSES}
        statistics[stat] = entry
    report = {
        "description": "real: the paper's panels resized to `size` px (rough wire mask, overlays left out); "
                       "generated: `per_class` images per class (data seed `seed`), same statistics and rough "
                       "mask; generated_exact_mask: with the exact wire mask. See nanomorph.data.realism.",
        "size": args.size, "per_class": args.per_class, "seed": args.seed,
        "statistics": statistics,
        "otsu_dice_global": {"note": "reported only, never a calibration target; at `size` px",
                             **{name: summary(dice[name]) for name in CLASSES},
                             "all": summary([d for name in CLASSES for d in dice[name]])},
        "otsu_dice_global_half_size": {"note": "the same, after resizing to size / 2 as the pipeline does",
                                       **{name: summary(dice_half[name]) for name in CLASSES},
                                       "all": summary([d for name in CLASSES for d in dice_half[name]])},
        "generation_seconds_per_image": seconds / (len(CLASSES) * args.per_class),
    }
    (args.out / "generator_realism.json").write_text(json.dumps(report, indent=2) + "\n")
    figure(panels, examples, args.size, args.out / "generator_realism.png")

    width = max(len(s) for s in STATISTICS)
    print(f"{'statistic':<{width}}  " + "  ".join(f"{n:>22}" for n in CLASSES))
    for stat in STATISTICS:
        cells = []
        for name in CLASSES:
            g = statistics[stat]["generated"][name]
            cells.append(f"{real[name][stat]:7.3f} | {g['median']:6.3f} [{g['q25']:.2f},{g['q75']:.2f}]")
        print(f"{stat:<{width}}  " + "  ".join(f"{c:>22}" for c in cells))
    print("otsu dice median", round(report["otsu_dice_global"]["all"]["median"], 3),
          f"(at {args.size // 2} px:", round(report["otsu_dice_global_half_size"]["all"]["median"], 3), end=") ")
    print("| s/image", round(report["generation_seconds_per_image"], 4))


if __name__ == "__main__":
    main()
