"""Finding images on disk: the canonical nanowire layout, flat image trees, and arbitrary labelled trees.

Canonical nanowire layout (what `fetch` writes and every later stage reads)::

    <root>/<class>/images/<name>.<tif|png|...>
    <root>/<class>/labels/<name>.png        (or .tif/.tiff: the mask of image <name>, optional)
    <root>/splits.csv                       (optional: columns image,split; image relative to <root>)

Arbitrary trees (the `folder` and `zenodo` sources) are read with `scan_class_tree` and a `TreeRules`:

* class: the nearest enclosing folder whose name (case-insensitive, after `class_aliases`) is a class;
* split: the nearest enclosing folder named like a split (`train`, `val`, `test`; optional);
* mask: a file with a mask suffix that sits in a mask folder (`labels/`, `masks/`), or whose stem ends with a
  mask marker (`_mask`, `_label`, ...), or whose suffix is a mask suffix but not an image suffix;
* image: any other file with an image suffix;
* a mask belongs to the image with the same stem (marker removed) in the same folder, where an `images/`
  folder and its `labels/` or `masks/` sibling count as the same folder.

Or from a CSV manifest (`read_sample_manifest`): columns path,label and optionally mask and split.
Nothing is silently dropped: every file that does not become an image or a mask is returned as `Unplaced`
with the reason.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nanomorph.errors import NanomorphError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff")
SPLITS_FILE = "splits.csv"


@dataclass(frozen=True)
class Sample:
    """One image with its mask file (None when unlabelled), its class name and split (None when unknown)."""

    image: Path
    mask: Path | None
    label: str | None
    split: str | None = None


@dataclass(frozen=True)
class LabelledImage:
    """An image found in a source tree, with its mask, class, split and the stem it gets in the canonical layout."""

    image: Path
    mask: Path | None
    label: str
    split: str | None
    name: str


@dataclass(frozen=True)
class Unplaced:
    """A source file that does not go into the canonical layout, and why (or a class that got no images)."""

    path: Path | str
    reason: str


@dataclass
class TreeScan:
    samples: list[LabelledImage] = field(default_factory=list)
    unplaced: list[Unplaced] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TreeRules:
    """How to recognise images, masks, classes and splits in a source tree (see the module docstring)."""

    image_suffixes: tuple[str, ...] = IMAGE_SUFFIXES
    mask_suffixes: tuple[str, ...] = MASK_SUFFIXES
    mask_markers: tuple[str, ...] = ("_mask", "_label", "_labels", "_seg")
    mask_dirs: tuple[str, ...] = ("labels", "masks")
    image_dirs: tuple[str, ...] = ("images",)
    split_dirs: tuple[str, ...] = ("train", "val", "validation", "test")
    class_aliases: Mapping[str, str] = field(default_factory=dict)


def _is_image(path: Path) -> bool:
    # Dot-files are editor/OS debris (e.g. macOS "._name.png" resource forks), never images.
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_image(p))


def utf8_safe_name(name: str) -> str:
    """`name` unchanged when it is valid UTF-8; otherwise its undecodable bytes written as %XX.

    On Linux a file name is bytes; Python shows bytes that are not UTF-8 as lone surrogates, which cannot be
    written to a UTF-8 CSV or HTML page. The escaped form is readable and still unique.
    """
    raw = os.fsencode(name)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="surrogateescape")
        return "".join(f"%{ord(c) - 0xDC00:02X}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)


def display_path(path: str | Path) -> str:
    """The path as printable UTF-8 text (undecodable bytes as %XX)."""
    return utf8_safe_name(str(path))


def _label_file(label_dir: Path, stem: str) -> Path | None:
    for suffix in MASK_SUFFIXES:  # .png first: the Zenodo set's labels
        candidate = label_dir / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def read_splits(root: Path) -> dict[Path, str]:
    """`<root>/splits.csv` as {image path: split}; empty when the file is absent."""
    path = root / SPLITS_FILE
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not {"image", "split"} <= set(reader.fieldnames or []):
            raise NanomorphError(f"{path}: needs the columns image,split")
        rows = list(reader)
    return {root / row["image"]: row["split"] for row in rows if row.get("split")}


def scan_nanowire_dataset(root: str | Path, classes: Sequence[str]) -> tuple[list[Sample], list[str]]:
    """Samples of the canonical nanowire layout, and the classes that have no images (missing or empty folder).

    Classes come in the given order, images sorted by name within each; an image without a label file gets
    `mask=None`. Only a missing root is an error: empty classes are for the caller to judge.
    """
    root = Path(root)
    if not root.is_dir():
        raise NanomorphError(f"{root}: nanowire dataset folder not found")
    splits = read_splits(root)
    samples, empty = [], []
    for name in classes:
        image_dir = root / name / "images"
        images = _images_in(image_dir) if image_dir.is_dir() else []
        if not images:
            empty.append(name)
        label_dir = root / name / "labels"
        for image in images:
            samples.append(Sample(image=image, mask=_label_file(label_dir, image.stem), label=name,
                                  split=splits.get(image)))
    return samples, empty


def find_nanowire_dataset(root: str | Path, classes: Sequence[str]) -> list[Sample]:
    """Samples of the nanowire set laid out as `root/<class>/images/<name>` + `root/<class>/labels/<stem>.png`.

    Like `scan_nanowire_dataset`, but a missing class folder or a class without images is an error.
    """
    root = Path(root)
    samples, empty = scan_nanowire_dataset(root, classes)
    for name in empty:
        image_dir = root / name / "images"
        if not image_dir.is_dir():
            raise NanomorphError(f"{image_dir}: missing image folder for class '{name}' (expected <root>/<class>/images/)")
        raise NanomorphError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) for class '{name}'")
    return samples


def find_images(root: str | Path) -> list[Path]:
    """All image files (png, jpg, jpeg, tif, tiff; any case) anywhere under `root`, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise NanomorphError(f"{root}: image folder not found")
    return sorted(p for p in root.rglob("*") if _is_image(p))


# ----------------------------------------------------------------------------------------------------------
# Arbitrary source trees
# ----------------------------------------------------------------------------------------------------------


def walk_files(root: Path) -> list[Path]:
    """Every entry under `root` that is not a folder (links are not followed), sorted."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        here = Path(folder)
        found += [here / d for d in dirs if (here / d).is_symlink()]
        found += [here / f for f in sorted(files)]
    return found


def _class_index(dirs: Sequence[str], classes: Mapping[str, str]) -> int | None:
    for i in range(len(dirs) - 1, -1, -1):
        if dirs[i].casefold() in classes:
            return i
    return None


def _class_lookup(classes: Sequence[str], aliases: Mapping[str, str]) -> dict[str, str]:
    lookup = {c.casefold(): c for c in classes}
    for folder, name in aliases.items():
        if name not in classes:
            raise NanomorphError(f"class alias '{folder}' -> '{name}': '{name}' is not one of data.classes {list(classes)}")
        lookup[str(folder).casefold()] = name
    return lookup


def _marker(stem: str, markers: Sequence[str]) -> str | None:
    lower = stem.lower()
    return next((m for m in sorted(markers, key=len, reverse=True) if lower.endswith(m.lower())), None)


def scan_class_tree(root: str | Path, classes: Sequence[str], rules: TreeRules) -> TreeScan:
    """Images, their masks, classes and splits under `root`, by `rules` (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise NanomorphError(f"{root}: source folder not found")
    lookup = _class_lookup(classes, rules.class_aliases)
    image_suffixes = {s.lower() for s in rules.image_suffixes}
    mask_suffixes = {s.lower() for s in rules.mask_suffixes}
    mask_dirs = {d.casefold() for d in rules.mask_dirs}
    image_dirs = {d.casefold() for d in rules.image_dirs}
    split_dirs = {d.casefold() for d in rules.split_dirs}
    scan = TreeScan()
    # key: (folders down to the class folder, folders below it, stem) -> files
    images: dict[tuple, list[tuple[Path, str, str | None, list[str]]]] = defaultdict(list)
    masks: dict[tuple, list[Path]] = defaultdict(list)
    for path in walk_files(root):
        relative = path.relative_to(root)
        dirs = list(relative.parts[:-1])
        if path.is_symlink():
            scan.unplaced.append(Unplaced(path, "symbolic link (not followed)"))
            continue
        if any(part.startswith(".") for part in relative.parts):
            scan.unplaced.append(Unplaced(path, "hidden file or folder (skipped)"))
            continue
        at = _class_index(dirs, lookup)
        if at is None:
            scan.unplaced.append(Unplaced(path, f"not inside a class folder (one of {', '.join(classes)})"))
            continue
        label = lookup[dirs[at].casefold()]
        split = next((d.casefold() for d in reversed(dirs) if d.casefold() in split_dirs), None)
        below = dirs[at + 1:]
        suffix, stem = path.suffix.lower(), path.stem
        marker = _marker(stem, rules.mask_markers)
        in_mask_dir = bool(below) and below[-1].casefold() in mask_dirs
        if suffix in mask_suffixes and (in_mask_dir or marker or suffix not in image_suffixes):
            key_dirs = below[:-1] if in_mask_dir else below
            base = stem[: -len(marker)] if marker else stem
            masks[(tuple(dirs[: at + 1]), tuple(key_dirs), base)].append(path)
        elif suffix in image_suffixes:
            key_dirs = below[:-1] if below and below[-1].casefold() in image_dirs else below
            images[(tuple(dirs[: at + 1]), tuple(key_dirs), stem)].append((path, label, split, list(key_dirs)))
        else:
            kinds = ", ".join(sorted(image_suffixes | mask_suffixes))
            scan.unplaced.append(Unplaced(path, f"not an image or mask file ('{suffix or 'no suffix'}'; expected {kinds})"))
    for key, found in masks.items():
        owners = images.get(key, [])
        if not owners:
            scan.unplaced += [Unplaced(p, f"mask without a matching image (no image named '{key[2]}' in its folder "
                                          "or the images/ folder beside it)") for p in found]
        elif len(owners) > 1:
            names = ", ".join(sorted(o[0].name for o in owners))
            scan.unplaced += [Unplaced(p, f"ambiguous mask: several images share its stem ({names})") for p in found]
        elif len(found) > 1:
            names = ", ".join(sorted(p.name for p in found))
            scan.unplaced += [Unplaced(p, f"one of several masks for {owners[0][0].name} ({names}); none used")
                              for p in found]
    for key in sorted(images, key=lambda k: [str(p) for p, *_ in images[k]]):
        found = masks.get(key, [])
        owners = images[key]
        mask = found[0] if len(found) == 1 and len(owners) == 1 else None
        for path, label, split, key_dirs in owners:
            parts = [*key_dirs, path.stem]
            if split and split not in {d.casefold() for d in key_dirs}:
                parts.insert(0, split)
            scan.samples.append(LabelledImage(path, mask, label, split, "__".join(parts)))
    scan.samples.sort(key=lambda s: (classes.index(s.label), str(s.image)))
    present = {s.label for s in scan.samples}
    scan.empty_classes = [c for c in classes if c not in present]
    return scan


def read_sample_manifest(manifest: str | Path, classes: Sequence[str], rules: TreeRules) -> TreeScan:
    """Images listed in a CSV (columns path,label and optionally mask,split; paths relative to the CSV's folder).

    Rows naming missing files or unknown classes are returned as `Unplaced`; so is every file under the CSV's
    folder that no row names (apart from the CSV itself).
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise NanomorphError(f"{manifest}: manifest file not found")
    base = manifest.parent
    lookup = _class_lookup(classes, rules.class_aliases)
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or [])
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise NanomorphError(f"{manifest}: not UTF-8 text ({exc})") from None
    if not {"path", "label"} <= columns:
        raise NanomorphError(f"{manifest}: needs the columns path,label (optional: mask, split); found {sorted(columns)}")
    scan = TreeScan()
    listed: set[Path] = {manifest.resolve()}
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{manifest.name} line {number}"
        raw_path, raw_label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        raw_mask, raw_split = (row.get("mask") or "").strip(), (row.get("split") or "").strip()
        image = base / raw_path if raw_path else None
        mask = base / raw_mask if raw_mask else None
        for listed_path in (image, mask):
            if listed_path is not None:
                listed.add(listed_path.resolve())
        if image is None:
            scan.unplaced.append(Unplaced(where, "row without a path"))
            continue
        if not image.is_file():
            scan.unplaced.append(Unplaced(image, f"{where}: no such file"))
            continue
        if image.suffix.lower() not in {s.lower() for s in rules.image_suffixes}:
            scan.unplaced.append(Unplaced(image, f"{where}: not an image type ({image.suffix or 'no suffix'})"))
            continue
        if raw_label.casefold() not in lookup:
            scan.unplaced.append(Unplaced(image, f"{where}: label '{raw_label}' is not one of {', '.join(classes)}"))
            continue
        if mask is not None and not mask.is_file():
            scan.unplaced.append(Unplaced(mask, f"{where}: mask file not found; image kept without a mask"))
            mask = None
        name = "__".join(p for p in Path(raw_path).with_suffix("").parts if p not in ("/", "..", ".")) or image.stem
        scan.samples.append(LabelledImage(image, mask, lookup[raw_label.casefold()], raw_split.casefold() or None, name))
    for path in walk_files(base):
        if path.resolve() not in listed:
            scan.unplaced.append(Unplaced(path, "not listed in the manifest"))
    present = {s.label for s in scan.samples}
    scan.empty_classes = [c for c in classes if c not in present]
    return scan
