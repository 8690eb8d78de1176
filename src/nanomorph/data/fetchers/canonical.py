"""Writing found files into the canonical layout, with one record per source file.

Every fetcher ends here: images (and masks) are copied, or hard-linked, into a staging folder that replaces
the output folder only when complete. Each source file yields a `FileRecord` saying where it went (`placed`,
`renamed` when its name had to change) or why it did not (`unplaced`, `skipped`), so the fetch report accounts
for every file.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from nanomorph.data.archive import staged_folder
from nanomorph.data.layout import SPLITS_FILE, LabelledImage, Unplaced, display_path, utf8_safe_name
from nanomorph.errors import NanomorphError

LINK_MODES = ("copy", "hardlink")


@dataclass(frozen=True)
class FileRecord:
    source: str
    target: str
    role: str      # image | mask | generic | class | member | download
    label: str
    split: str
    status: str    # placed | renamed | unplaced | skipped | empty | downloaded | present
    reason: str


RECORD_FIELDS = tuple(FileRecord.__dataclass_fields__)


def record(source: str | Path, status: str, reason: str = "", *, target: str | Path = "", role: str = "",
           label: str | None = "", split: str | None = "") -> FileRecord:
    return FileRecord(display_path(source), display_path(target) if target else "", role, label or "", split or "",
                      status, reason)


def unplaced_records(items: Iterable[Unplaced], role: str) -> list[FileRecord]:
    return [record(item.path, "unplaced", item.reason, role=role) for item in items]


def empty_class_records(classes: Iterable[str], where: str | Path) -> list[FileRecord]:
    return [record(where, "empty", f"no images found for class '{c}'", role="class", label=c) for c in classes]


def place_file(source: Path, target: Path, link: str) -> None:
    """Copy (keeping times) or hard-link `source` to `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if link == "copy":
        shutil.copy2(source, target)
    elif link == "hardlink":
        try:
            os.link(source, target)
        except OSError as exc:
            raise NanomorphError(f"cannot hard-link {display_path(source)} into {display_path(target.parent)} "
                                 f"({exc.strerror}); set data.folder.link: copy") from None
    else:
        raise NanomorphError(f"unknown link mode '{link}' (choose {', '.join(LINK_MODES)})")


class _Names:
    """Unique, printable file stems within one folder (case-insensitively, for portable layouts)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def claim(self, wanted: str) -> tuple[str, str]:
        """(stem, why it differs from `wanted` or '')."""
        safe = utf8_safe_name(wanted).replace("/", "_").replace("\\", "_") or "unnamed"
        stem, n = safe, 2
        while stem.casefold() in self.used:
            stem, n = f"{safe}__{n}", n + 1
        self.used.add(stem.casefold())
        reasons = []
        if safe != wanted:
            reasons.append("file name was not valid UTF-8: undecodable bytes written as %XX")
        if stem != safe:
            reasons.append(f"name '{safe}' already taken in the class folder")
        return stem, "; ".join(reasons)


def write_nanowire_tree(samples: Sequence[LabelledImage], out_dir: str | Path, link: str = "copy") -> list[FileRecord]:
    """Write `<out>/<class>/images/<name><suffix>` and `<out>/<class>/labels/<name><mask suffix>` (+ splits.csv).

    `out_dir` is replaced as a whole, atomically. Returns one record per image and per mask.
    """
    out_dir = Path(out_dir)
    names: dict[str, _Names] = {}
    records: list[FileRecord] = []
    splits: list[tuple[str, str]] = []
    with staged_folder(out_dir) as staging:
        for sample in samples:
            stem, why = names.setdefault(sample.label, _Names()).claim(sample.name)
            image_rel = Path(sample.label) / "images" / f"{stem}{sample.image.suffix}"
            place_file(sample.image, staging / image_rel, link)
            records.append(record(sample.image, "renamed" if why else "placed", why, target=out_dir / image_rel,
                                  role="image", label=sample.label, split=sample.split))
            if sample.mask is not None:
                mask_rel = Path(sample.label) / "labels" / f"{stem}{sample.mask.suffix.lower()}"
                place_file(sample.mask, staging / mask_rel, link)
                records.append(record(sample.mask, "placed", f"mask of {image_rel.name}", target=out_dir / mask_rel,
                                      role="mask", label=sample.label, split=sample.split))
            if sample.split:
                splits.append((image_rel.as_posix(), sample.split))
        if splits:
            with open(staging / SPLITS_FILE, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["image", "split"])
                writer.writerows(splits)
    return records


def write_flat(files: Sequence[tuple[Path, str]], out_dir: str | Path, link: str = "copy") -> list[FileRecord]:
    """Write each (source, wanted stem) as `<out>/<stem><suffix>`, replacing `out_dir` atomically."""
    out_dir = Path(out_dir)
    names = _Names()
    records = []
    with staged_folder(out_dir) as staging:
        for source, wanted in files:
            stem, why = names.claim(wanted)
            target = f"{stem}{source.suffix.lower()}"
            place_file(source, staging / target, link)
            records.append(record(source, "renamed" if why else "placed", why, target=out_dir / target, role="generic"))
    return records


def write_records(records: Sequence[FileRecord], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=RECORD_FIELDS)
        writer.writeheader()
        writer.writerows(asdict(r) for r in records)
    return path
