"""Image + mask pairs from real segmentation data sets, and a seeded train/validation/test split of them.

Two layouts:

* EMPS (Yildirim & Cole, J. Chem. Inf. Model. 2021): `images/<id>.png` (RGB electron micrographs),
  `segmaps/<id>.png` (16-bit instance maps, 0 = background), ids listed one per line in `train.csv`
  (first comma-separated field; an `.png` suffix or a header line naming the column are tolerated). The
  binary mask is segmap > 0, which is what `nanomorph.data.io.read_mask` returns for a gray 16-bit file.
* any folder of images and a folder of masks, paired by file stem (`a.tif` with `a.png`). Every image must
  have exactly one mask and every mask an image: an unpaired or ambiguous file is an error, never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from nanomorph.data.io import load_image_stack, load_mask_stack
from nanomorph.errors import NanomorphError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
_HEADER_NAMES = {"id", "ids", "filename", "file", "name", "image"}


@dataclass(frozen=True)
class MaskedImage:
    """One labelled image: its id (file stem), image file and mask file."""

    id: str
    image: Path
    mask: Path


def _examples(items: Sequence[str], k: int = 3) -> str:
    return ", ".join(sorted(items)[:k]) + (" ..." if len(items) > k else "")


def read_ids(path: Path) -> list[str]:
    """Ids from a one-id-per-line file (first comma-separated field), in file order, `.png` stripped."""
    if not path.is_file():
        raise NanomorphError(f"{path}: no such id list")
    ids = []
    for number, line in enumerate(path.read_text().splitlines()):
        field = line.split(",")[0].strip()
        if not field or (number == 0 and field.lower() in _HEADER_NAMES):
            continue
        ids.append(field[:-4] if field.lower().endswith(".png") else field)
    if len(set(ids)) != len(ids):
        raise NanomorphError(f"{path}: repeated ids")
    if not ids:
        raise NanomorphError(f"{path}: lists no ids")
    return ids


def emps_pairs(root: str | Path, ids_file: str = "train.csv") -> list[MaskedImage]:
    """The EMPS pairs listed in `root/ids_file`, in its order; a listed id without both files is an error."""
    root = Path(root)
    pairs, missing = [], []
    for id_ in read_ids(root / ids_file):
        image, mask = root / "images" / f"{id_}.png", root / "segmaps" / f"{id_}.png"
        if image.is_file() and mask.is_file():
            pairs.append(MaskedImage(id_, image, mask))
        else:
            missing.append(id_)
    if missing:
        raise NanomorphError(f"{root}: {len(missing)} ids of {ids_file} lack images/<id>.png or segmaps/<id>.png "
                             f"(e.g. {_examples(missing)})")
    return pairs


def _by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise NanomorphError(f"{folder}: no such folder")
    found: dict[str, list[Path]] = {}
    for path in folder.iterdir():
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            found.setdefault(path.stem, []).append(path)
    ambiguous = [stem for stem, paths in found.items() if len(paths) > 1]
    if ambiguous:
        raise NanomorphError(f"{folder}: several files share a stem, so pairing is ambiguous "
                             f"(e.g. {_examples(ambiguous)})")
    return {stem: paths[0] for stem, paths in found.items()}


def folder_pairs(images_dir: str | Path, masks_dir: str | Path) -> list[MaskedImage]:
    """Images and masks paired by file stem, sorted by stem."""
    images, masks = _by_stem(Path(images_dir)), _by_stem(Path(masks_dir))
    if not images:
        raise NanomorphError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    no_mask, no_image = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
    if no_mask or no_image:
        problems = []
        if no_mask:
            problems.append(f"{len(no_mask)} images without a mask in {masks_dir} (e.g. {_examples(no_mask)})")
        if no_image:
            problems.append(f"{len(no_image)} masks without an image in {images_dir} (e.g. {_examples(no_image)})")
        raise NanomorphError("; ".join(problems))
    return [MaskedImage(stem, images[stem], masks[stem]) for stem in sorted(images)]


def split_three_ways(n_items: int, val_fraction: float, test_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted, disjoint (train, validation, test) indices over range(n_items), drawn with `seed`."""
    if not (0 < test_fraction < 1 and 0 <= val_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 < test_fraction, 0 <= val_fraction and a sum below 1, "
                         f"got val {val_fraction}, test {test_fraction}")
    rest, test = train_test_split(np.arange(n_items), test_size=test_fraction, random_state=seed)
    if val_fraction == 0:
        return np.sort(rest), np.empty(0, dtype=int), np.sort(test)
    # The validation share is of the whole set, so rescale it to the part left after the test split.
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)


def load_pairs(pairs: Sequence[MaskedImage], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (N, size, size) in [0, 1], masks bool (N, size, size)), resized as in `nanomorph.data.io`."""
    return (load_image_stack([p.image for p in pairs], size), load_mask_stack([p.mask for p in pairs], size))
