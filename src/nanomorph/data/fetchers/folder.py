"""The `folder` source: any local directory tree (or CSV manifest) copied into the canonical layouts.

Nanowire set: classes from folder names (`scan_class_tree`) or from a CSV manifest with columns
path,label[,mask][,split] (`read_sample_manifest`); masks by name convention or the manifest.
Generic set: every image file anywhere under the folder, flattened into one folder.
Nothing is dropped silently: files that are not placed are in the returned records with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nanomorph.data.fetchers.canonical import (
    FileRecord,
    empty_class_records,
    record,
    unplaced_records,
    write_flat,
    write_nanowire_tree,
)
from nanomorph.data.layout import TreeRules, read_sample_manifest, scan_class_tree, walk_files
from nanomorph.errors import NanomorphError


def fetch_folder_nanowires(*, root: str | Path | None, manifest: str | Path | None, out_dir: str | Path,
                           classes: Sequence[str], rules: TreeRules, link: str) -> list[FileRecord]:
    """Arrange a labelled tree (or the files a manifest lists) into `<out>/<class>/{images,labels}/`."""
    if manifest:
        scan = read_sample_manifest(manifest, classes, rules)
        where = Path(manifest)
    elif root:
        scan = scan_class_tree(root, classes, rules)
        where = Path(root)
    else:
        raise NanomorphError("data.source is 'folder' but neither data.folder.nanowire_root nor "
                             "data.folder.nanowire_manifest is set")
    records = write_nanowire_tree(scan.samples, out_dir, link)
    records += unplaced_records(scan.unplaced, role="file")
    records += empty_class_records(scan.empty_classes, where)
    return records


def fetch_folder_generic(*, root: str | Path | None, out_dir: str | Path, image_suffixes: Sequence[str],
                         link: str) -> list[FileRecord]:
    """Every image under `root`, flattened into `out_dir` (sub-folders joined into the name with '__')."""
    if not root:
        raise NanomorphError("data.generic_source is 'folder' but data.folder.generic_root is not set")
    root = Path(root)
    if not root.is_dir():
        raise NanomorphError(f"{root}: generic image folder not found")
    suffixes = {s.lower() for s in image_suffixes}
    picked, records = [], []
    for path in walk_files(root):
        relative = path.relative_to(root)
        if path.is_symlink():
            records.append(record(path, "unplaced", "symbolic link (not followed)", role="file"))
        elif any(part.startswith(".") for part in relative.parts):
            records.append(record(path, "unplaced", "hidden file or folder (skipped)", role="file"))
        elif path.suffix.lower() not in suffixes:
            records.append(record(path, "unplaced", f"not an image ('{path.suffix or 'no suffix'}')", role="file"))
        else:
            picked.append((path, "__".join(relative.with_suffix("").parts)))
    if not picked:
        raise NanomorphError(f"{root}: no images ({', '.join(sorted(suffixes))}) found")
    return write_flat(picked, out_dir, link) + records
