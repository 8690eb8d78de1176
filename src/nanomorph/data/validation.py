"""Per-file checks that build the data manifest and the quarantine list.

Every raw file gets one manifest row; a file that fails a check is listed in the quarantine with the check
and the reason, and is left where it is (raw files are never moved or deleted). Downstream stages read only
the rows marked `ok`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nanomorph.data.io import read_image, read_mask
from nanomorph.data.layout import Sample
from nanomorph.errors import ImageReadError, NanomorphError


@dataclass(frozen=True)
class Thresholds:
    min_side: int
    max_side: int
    min_std: float
    max_saturated_fraction: float


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _image_problems(pixels: np.ndarray, limits: Thresholds) -> list[tuple[str, str]]:
    height, width = pixels.shape
    problems = []
    if min(height, width) < limits.min_side or max(height, width) > limits.max_side:
        problems.append(("size", f"{width}x{height} px is outside [{limits.min_side}, {limits.max_side}]"))
    if float(pixels.std()) < limits.min_std:
        problems.append(("near_constant", f"intensity std {pixels.std():.4f} < {limits.min_std}"))
    saturated = float(np.mean((pixels <= 0.0) | (pixels >= 1.0)))
    if saturated > limits.max_saturated_fraction:
        problems.append(("saturated", f"{saturated:.0%} of pixels at the range limits"))
    return problems


def check_sample(sample: Sample, kind: str, limits: Thresholds) -> dict:
    """One manifest row for `sample`; `status` is 'ok' or the names of the failed checks."""
    row: dict = {"kind": kind, "path": str(sample.image), "label": sample.label,
                 "mask_path": str(sample.mask) if sample.mask else None}
    problems: list[tuple[str, str]] = []
    try:
        row["sha256"] = sha256_of(sample.image)
        pixels = read_image(sample.image)
    except (OSError, ImageReadError) as exc:
        problems.append(("decodable", str(exc)))
        pixels = None
    if pixels is not None:
        row.update(height=pixels.shape[0], width=pixels.shape[1], intensity_min=float(pixels.min()),
                   intensity_max=float(pixels.max()), intensity_mean=float(pixels.mean()),
                   intensity_std=float(pixels.std()))
        problems += _image_problems(pixels, limits)
    if sample.mask is not None:
        try:
            mask = read_mask(sample.mask)
            row["mask_coverage"] = float(mask.mean())
            if pixels is not None and mask.shape != pixels.shape:
                problems.append(("mask_size", f"mask {sample.mask} is {mask.shape[1]}x{mask.shape[0]}, "
                                              f"image is {pixels.shape[1]}x{pixels.shape[0]}"))
        except (OSError, ImageReadError) as exc:
            problems.append(("mask_decodable", str(exc)))
    row["status"] = "ok" if not problems else ";".join(name for name, _ in problems)
    row["reason"] = "; ".join(reason for _, reason in problems)
    return row


def build_manifest(nanowires: Iterable[Sample], generic: Iterable[Path], limits: Thresholds) -> pd.DataFrame:
    rows = [check_sample(s, "nanowire", limits) for s in nanowires]
    rows += [check_sample(Sample(image=p, mask=None, label=None), "generic", limits) for p in generic]
    manifest = pd.DataFrame(rows)
    ok = manifest["status"] == "ok"
    duplicated = ok & manifest["sha256"].duplicated(keep="first")
    manifest.loc[duplicated, "status"] = "duplicate"
    manifest.loc[duplicated, "reason"] = "same bytes as an earlier file"
    return manifest


def quarantine_of(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest.loc[manifest["status"] != "ok", ["path", "kind", "status", "reason"]]


def require_classes(manifest: pd.DataFrame, classes: Iterable[str]) -> None:
    """Critical check: every class keeps at least one usable image."""
    ok = manifest[(manifest["kind"] == "nanowire") & (manifest["status"] == "ok")]
    empty = [c for c in classes if not (ok["label"] == c).any()]
    if empty:
        raise NanomorphError(f"no usable images left for class(es) {', '.join(empty)} after validation")


def accepted(manifest_path: str | Path, kind: str) -> pd.DataFrame:
    """The manifest rows of `kind` that passed every check, in manifest order."""
    path = Path(manifest_path)
    if not path.is_file():
        raise NanomorphError(f"{path}: no manifest; run the validate stage first")
    manifest = pd.read_csv(path)
    return manifest[(manifest["kind"] == kind) & (manifest["status"] == "ok")].reset_index(drop=True)
