"""Measuring every raw file into the data manifest (one row per image); the checks live in `expectations`.

A row records what a file is, never whether it is acceptable: path, sha256, size, storage mode and bit
depth, intensity statistics on the 0-1 scale downstream stages use, saturated fraction, class, split, mask
statistics, a perceptual hash, and which earlier file it duplicates exactly or nearly. Problems that stop a
measurement (an undecodable image, a file name that is not UTF-8) are recorded as text in `name_error`,
`decode_error` or `mask_error`. Raw files are only read, never moved or deleted.

The perceptual hash is a difference hash (dHash): the image is box-averaged to (size+1) x size, and each bit
says whether a pixel is brighter than its right neighbour. Two images are near-duplicates when the hash of
one is within `near_duplicate_bits` of the hash of the other in any of the 8 rotations/flips, so a rotated
or mirrored copy (a common augmentation) is caught as well.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from PIL import Image
from skimage.color import rgb2gray

from nanomorph.data.io import DEFAULT_MAX_PIXELS, TIFF_SUFFIXES, decode, file_digest, read_mask, to_unit_range
from nanomorph.data.layout import Sample, display_path
from nanomorph.errors import ImageReadError, NanomorphError

MAX_LISTED_MASK_VALUES = 8


# ----------------------------------------------------------------------------------------------------------
# Perceptual hash
# ----------------------------------------------------------------------------------------------------------


def dhash(pixels: np.ndarray, size: int = 16) -> np.ndarray:
    """Difference hash of a 2-D float image: `size * size` bools (True where a cell outshines its right neighbour)."""
    small = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32), mode="F").resize(
        (size + 1, size), Image.Resampling.BOX)
    cells = np.asarray(small)
    return (cells[:, 1:] > cells[:, :-1]).ravel()


def dihedral_dhashes(pixels: np.ndarray, size: int = 16) -> np.ndarray:
    """dHashes of the 8 rotations/flips of the image, packed: (8, size*size/64) uint64 (first: the image itself)."""
    variants = []
    for flipped in (pixels, np.fliplr(pixels)):
        for quarter_turns in range(4):
            variants.append(_pack(dhash(np.rot90(flipped, quarter_turns), size)))
    return np.stack(variants)


def _pack(bits: np.ndarray) -> np.ndarray:
    padded = np.zeros(-(-bits.size // 64) * 64, dtype=bool)
    padded[: bits.size] = bits
    return np.packbits(padded).view(">u8").astype(np.uint64)


def hash_hex(packed: np.ndarray) -> str:
    return "".join(f"{int(word):016x}" for word in packed)


def nearest_earlier(hashes: Sequence[np.ndarray], eligible: Sequence[bool], pairable) -> tuple[list, list]:
    """For each row, the earlier eligible row whose hash is closest over the 8 rotations/flips.

    `hashes[i]` is (8, words) from `dihedral_dhashes`; `pairable(i, j)` says whether rows i and j may be
    compared. Returns (index of the nearest earlier row or None, its distance in bits or None) per row.
    """
    nearest: list = [None] * len(hashes)
    distance: list = [None] * len(hashes)
    rows = [i for i in range(len(hashes)) if eligible[i]]
    if not rows:
        return nearest, distance
    own = np.stack([hashes[i][0] for i in rows])                  # (n, words)
    variants = np.stack([hashes[i] for i in rows])                # (n, 8, words)
    for k, i in enumerate(rows[1:], start=1):
        bits = np.bitwise_count(own[:k, None, :] ^ variants[k][None, :, :]).sum(axis=2).min(axis=1)  # (k,)
        for order in np.argsort(bits, kind="stable"):
            j = rows[order]
            if pairable(i, j):
                nearest[i], distance[i] = j, int(bits[order])
                break
    return nearest, distance


# ----------------------------------------------------------------------------------------------------------
# One file
# ----------------------------------------------------------------------------------------------------------


def storage_format(path: Path) -> tuple[str, int]:
    """(mode, bits per sample) as stored: PIL's mode names (L, I;16, RGB, RGBA, P, ...) for every format."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            samples, bits = int(page.samplesperpixel), int(page.bitspersample)
            palette = getattr(page.photometric, "name", "") == "PALETTE"
            floating = getattr(page.sampleformat, "name", "") == "IEEEFP"
        if palette:
            return "P", bits
        if samples == 1:
            return ("F" if floating else "L" if bits <= 8 else f"I;{bits}"), bits
        return {2: "LA", 3: "RGB", 4: "RGBA"}.get(samples, f"{samples}-channel"), bits
    with Image.open(path) as image:
        mode = image.mode
    bits = {"1": 1, "I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32, "F": 32}.get(mode, 8)
    return mode, bits


@dataclass(frozen=True)
class QualityRules:
    """The validate stage's per-image checks (params.yaml validate.min_side, min_std, max_saturated_fraction;
    these defaults are the shipped values) for images met outside the pipeline, e.g. by `nanomorph predict`."""

    min_side: int = 16
    min_std: float = 0.005
    max_saturated_fraction: float = 0.5


def quality_problems(image: np.ndarray, rules: QualityRules = QualityRules()) -> list[str]:
    """Why a decoded (H, W) [0, 1] image cannot be judged by a model: too small, blank, saturated (the validate
    stage's wording); empty when it can. A model would still answer for such an image, confidently and wrongly."""
    height, width = image.shape[:2]
    problems = []
    if min(height, width) < rules.min_side:
        problems.append(f"{width}x{height} px is below the {rules.min_side} px minimum side")
    std = float(image.std()) if image.size else 0.0
    if std < rules.min_std:
        problems.append(f"blank or near-constant: intensity std {std:.4f} < {rules.min_std}")
    saturated = float(np.mean((image <= 0.0) | (image >= 1.0))) if image.size else 0.0
    if saturated > rules.max_saturated_fraction:
        problems.append(f"saturated: {saturated:.1%} of pixels at 0 or 1 (> {rules.max_saturated_fraction:.1%})")
    return problems


def gray_unit(raw: np.ndarray) -> np.ndarray:
    """The float32 (H, W) 0-1 image downstream stages see (what `io.read_image` returns)."""
    unit = to_unit_range(raw)
    return rgb2gray(unit[..., :3]).astype(np.float32) if unit.ndim == 3 else unit


def describe_mask(path: Path, max_pixels: int) -> dict:
    """Mask size, coverage, distinct stored values and whether it is binary.

    Binary: a gray or paletted mask with at most two distinct values, an RGB mask with gray pixels only
    and at most two distinct levels, or an RGB label in the Zenodo encoding (wire where green != blue).
    """
    raw = decode(path, max_pixels, palette_indices=True)
    mask = read_mask(path, max_pixels)
    if raw.ndim == 3 and (raw[..., 1] != raw[..., 2]).any():
        values, binary = "encoded: wire where green != blue", True
    else:
        levels = np.unique(raw.max(axis=2) if raw.ndim == 3 else raw)
        shown = ",".join(str(v) for v in levels[:MAX_LISTED_MASK_VALUES])
        values = shown + (f",... ({len(levels)} values)" if len(levels) > MAX_LISTED_MASK_VALUES else "")
        binary = len(levels) <= 2
    return {"mask_width": int(mask.shape[1]), "mask_height": int(mask.shape[0]),
            "mask_size": f"{mask.shape[1]}x{mask.shape[0]}", "mask_values": values, "mask_binary": binary,
            "mask_coverage": float(mask.mean())}


def measure(sample: Sample, kind: str, max_pixels: int = DEFAULT_MAX_PIXELS, hash_size: int = 16
            ) -> tuple[dict, np.ndarray | None]:
    """One manifest row for `sample` and its dihedral dHashes (None when the image cannot be read)."""
    row: dict = {"kind": kind, "path": display_path(sample.image), "label": sample.label, "split": sample.split,
                 "mask_path": display_path(sample.mask) if sample.mask else None,
                 "name_error": None, "decode_error": None, "mask_error": None}
    shown = row["path"]
    if shown != str(sample.image):
        # Downstream stages could neither write nor reopen this name reliably; the file stays where it is.
        row["name_error"] = f"{shown}: file name is not valid UTF-8 (undecodable bytes shown as %XX); rename the file"
    hashes = None
    try:
        row["sha256"] = file_digest(sample.image)
        raw = decode(sample.image, max_pixels)
        pixels = gray_unit(raw)
        row["mode"], row["bit_depth"] = storage_format(sample.image)
    except (OSError, ImageReadError) as exc:
        row["decode_error"] = f"{shown}: {exc.reason}" if isinstance(exc, ImageReadError) else f"{shown}: {exc}"
        pixels = None
    if pixels is not None:
        height, width = pixels.shape
        row.update(width=int(width), height=int(height), image_size=f"{width}x{height}",
                   intensity_min=float(pixels.min()), intensity_max=float(pixels.max()),
                   intensity_mean=float(pixels.mean()), intensity_std=float(pixels.std()),
                   saturated_fraction=float(np.mean((pixels <= 0.0) | (pixels >= 1.0))))
        hashes = dihedral_dhashes(pixels, hash_size)
        row["phash"] = hash_hex(hashes[0])
    if sample.mask is not None:
        try:
            row.update(describe_mask(sample.mask, max_pixels))
        except (OSError, ImageReadError) as exc:
            row["mask_error"] = str(exc)
    return row, hashes


COLUMNS = (
    "kind", "path", "label", "split", "sha256", "width", "height", "image_size", "mode", "bit_depth",
    "intensity_min", "intensity_max", "intensity_mean", "intensity_std", "saturated_fraction", "phash",
    "mask_path", "mask_width", "mask_height", "mask_size", "mask_values", "mask_binary", "mask_coverage",
    "duplicate_of", "label_conflict", "near_duplicate_of", "near_duplicate_bits", "name_error", "decode_error", "mask_error",
)


def build_manifest(nanowires: Iterable[Sample], generic: Iterable[Path], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                   hash_size: int = 16, near_duplicate_bits: int = 32) -> pd.DataFrame:
    """Measure every file; mark exact duplicates (same sha256 as an earlier file, any kind) and nanowire
    near-duplicates (dHash within `near_duplicate_bits` of an earlier nanowire image in another split or
    with no split: the probe and segment stages draw their own train/test splits from these images)."""
    if hash_size < 2:
        raise NanomorphError(f"validate.hash_size must be at least 2 (got {hash_size})")
    measured = [measure(s, "nanowire", max_pixels, hash_size) for s in nanowires]
    measured += [measure(Sample(image=p, mask=None, label=None), "generic", max_pixels, hash_size) for p in generic]
    manifest = pd.DataFrame([row for row, _ in measured], columns=list(COLUMNS))
    hashes = [h for _, h in measured]

    first_of: dict[str, int] = {}
    duplicate_of: list = [None] * len(manifest)
    for i, digest in enumerate(manifest["sha256"]):
        if isinstance(digest, str):
            if digest in first_of:
                duplicate_of[i] = manifest.at[first_of[digest], "path"]
            else:
                first_of[digest] = i
    manifest["duplicate_of"] = duplicate_of
    # The same bytes under two class labels: which label is right cannot be told, so EVERY copy is quarantined
    # (keeping the first copy would keep its label silently).
    labels_of: dict[str, set[str]] = {}
    for digest, kind, label in zip(manifest["sha256"], manifest["kind"], manifest["label"]):
        if isinstance(digest, str) and kind == "nanowire" and isinstance(label, str):
            labels_of.setdefault(digest, set()).add(label)
    manifest["label_conflict"] = [
        ", ".join(sorted(labels_of[digest])) if kind == "nanowire" and len(labels_of.get(digest, ())) > 1 else None
        for digest, kind in zip(manifest["sha256"], manifest["kind"])]

    kinds, splits = manifest["kind"].tolist(), manifest["split"].tolist()
    eligible = [hashes[i] is not None and kinds[i] == "nanowire" and duplicate_of[i] is None for i in range(len(manifest))]

    def pairable(i: int, j: int) -> bool:
        return not (isinstance(splits[i], str) and isinstance(splits[j], str) and splits[i] == splits[j])

    nearest, distance = nearest_earlier(hashes, eligible, pairable)
    close = [d is not None and d <= near_duplicate_bits for d in distance]
    manifest["near_duplicate_of"] = [manifest.at[j, "path"] if ok else None for j, ok in zip(nearest, close)]
    manifest["near_duplicate_bits"] = [d if ok else None for d, ok in zip(distance, close)]
    manifest["mask_binary"] = manifest["mask_binary"].astype(object)
    for column in ("width", "height", "bit_depth", "mask_width", "mask_height", "near_duplicate_bits"):
        manifest[column] = manifest[column].astype("Int64")  # whole numbers, empty where not measured
    return manifest


def accepted(manifest_path: str | Path, kind: str) -> pd.DataFrame:
    """The manifest rows of `kind` that passed every check, in manifest order."""
    path = Path(manifest_path)
    if not path.is_file():
        raise NanomorphError(f"{path}: no manifest; run the validate stage first")
    manifest = pd.read_csv(path)
    return manifest[(manifest["kind"] == kind) & (manifest["status"] == "ok")].reset_index(drop=True)
