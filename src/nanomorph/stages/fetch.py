"""Stage `fetch`: bring the raw data into data/raw (procedural by default, no network needed).

Two sets, each from its own source:
* the nanowire set (`data.source`): synthetic | zenodo | folder -> `data.nanowire_dir` (<class>/images, labels);
* the generic pretraining images (`data.generic_source`): synthetic | cem500k | folder -> `data.generic_dir`.

Every source file gets one row in `metrics/fetch_files.csv` (where it went, or why not); the counts go to
`metrics/fetch.json` and MLflow. Outputs are replaced atomically; downloads are cached in `data.download_dir`.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import mlflow

from nanomorph.config import Config, DataConfig
from nanomorph.data.archive import staged_folder
from nanomorph.data.fetchers import (
    FileRecord,
    RetryPolicy,
    fetch_cem500k,
    fetch_folder_generic,
    fetch_folder_nanowires,
    fetch_zenodo,
    write_records,
)
from nanomorph.data.fetchers.canonical import record
from nanomorph.data.layout import TreeRules
from nanomorph.data.synthetic import write_generic_em_dataset, write_nanowire_dataset
from nanomorph.errors import NanomorphError
from nanomorph.stages._common import stage_main, tracked, write_json, on_terminal

NANOWIRE_SOURCES = ("synthetic", "zenodo", "folder")
GENERIC_SOURCES = ("synthetic", "cem500k", "folder")
FILES_REPORT = "metrics/fetch_files.csv"
SHOWN_PROBLEMS = 20


def _policy(data: DataConfig) -> RetryPolicy:
    return RetryPolicy(retries=data.http.retries, backoff_s=data.http.backoff_s, timeout_s=data.http.timeout_s)


def _rules(data: DataConfig, image_suffixes: tuple[str, ...], mask_suffixes: tuple[str, ...]) -> TreeRules:
    lay = data.layout
    return TreeRules(image_suffixes=image_suffixes, mask_suffixes=mask_suffixes, mask_markers=lay.mask_markers,
                     mask_dirs=lay.mask_dirs, image_dirs=lay.image_dirs, split_dirs=lay.split_dirs,
                     class_aliases=dict(lay.class_aliases))


def _synthetic_nanowires(data: DataConfig) -> list[FileRecord]:
    out = Path(data.nanowire_dir)
    with staged_folder(out) as staging:  # regenerated whole: stale files from another scale must not linger
        written = write_nanowire_dataset(staging, data.classes, data.images_per_class, data.image_size, data.seed,
                                         progress=on_terminal())
    records = []
    for image in written:
        label = image.parent.parent.name
        records.append(record("synthetic", "placed", target=out / image.relative_to(staging), role="image", label=label))
        mask = out / label / "labels" / f"{image.stem}.png"
        records.append(record("synthetic", "placed", target=mask, role="mask", label=label))
    return records


def _synthetic_generic(data: DataConfig) -> list[FileRecord]:
    out = Path(data.generic_dir)
    with staged_folder(out) as staging:
        written = write_generic_em_dataset(staging, data.generic_images, data.generic_size, data.seed + 1,
                                           progress=on_terminal())
    return [record("synthetic", "placed", target=out / p.relative_to(staging), role="generic") for p in written]


def fetch_nanowires(data: DataConfig) -> list[FileRecord]:
    if data.source == "synthetic":
        return _synthetic_nanowires(data)
    if data.source == "zenodo":
        z = data.zenodo
        return fetch_zenodo(api_url=z.api_url, record_id=z.record, patterns=z.files, download_dir=data.download_dir,
                            out_dir=data.nanowire_dir, classes=data.classes,
                            rules=_rules(data, z.image_suffixes, z.mask_suffixes), policy=_policy(data),
                            limits=data.archive)
    f = data.folder
    return fetch_folder_nanowires(root=f.nanowire_root, manifest=f.nanowire_manifest, out_dir=data.nanowire_dir,
                                  classes=data.classes, rules=_rules(data, f.image_suffixes, f.mask_suffixes),
                                  link=f.link)


def fetch_generic(data: DataConfig) -> list[FileRecord]:
    if data.generic_source == "synthetic":
        return _synthetic_generic(data)
    if data.generic_source == "cem500k":
        return fetch_cem500k(url=data.cem500k.url, checksum=data.cem500k.checksum, count=data.generic_images,
                             seed=data.seed, download_dir=data.download_dir, out_dir=data.generic_dir,
                             policy=_policy(data), limits=data.archive)
    return fetch_folder_generic(root=data.folder.generic_root, out_dir=data.generic_dir,
                                image_suffixes=data.folder.image_suffixes, link=data.folder.link)


def _check_sources(data: DataConfig) -> None:
    if data.source not in NANOWIRE_SOURCES:
        hint = " (cem500k provides pretraining images: set data.generic_source)" if data.source == "cem500k" else ""
        raise NanomorphError(f"unknown nanowire source data.source='{data.source}' "
                             f"(choose {', '.join(NANOWIRE_SOURCES)}){hint}")
    if data.generic_source not in GENERIC_SOURCES:
        raise NanomorphError(f"unknown pretraining image source data.generic_source='{data.generic_source}' "
                             f"(choose {', '.join(GENERIC_SOURCES)})")


def summarise(nanowire: list[FileRecord], generic: list[FileRecord]) -> dict[str, int]:
    every = nanowire + generic
    placed = ("placed", "renamed")
    status = Counter(r.status for r in every)
    return {
        "nanowire_images": sum(r.role == "image" and r.status in placed for r in nanowire),
        "nanowire_masks": sum(r.role == "mask" and r.status in placed for r in nanowire),
        "generic_images": sum(r.role == "generic" and r.status in placed for r in generic),
        "renamed": status["renamed"], "unplaced": status["unplaced"], "skipped_members": status["skipped"],
        "empty_classes": status["empty"], "downloaded": status["downloaded"], "already_present": status["present"],
    }


def fetch(cfg: Config, _args: argparse.Namespace) -> None:
    data = cfg.data
    _check_sources(data)
    with tracked(cfg, "fetch", ("data",)):
        nanowire = fetch_nanowires(data)
        generic = fetch_generic(data)
        counts = summarise(nanowire, generic)
        report = write_records(nanowire + generic, FILES_REPORT)
        problems = [r for r in nanowire + generic if r.status in ("unplaced", "skipped", "empty", "renamed")]
        for r in problems[:SHOWN_PROBLEMS]:
            print(f"fetch: {r.status} {r.source}: {r.reason}", file=sys.stderr)
        if len(problems) > SHOWN_PROBLEMS:
            print(f"fetch: ... and {len(problems) - SHOWN_PROBLEMS} more; every file is listed in {report}",
                  file=sys.stderr)
        mlflow.log_metrics(counts)
        mlflow.log_artifact(str(report))
        write_json("metrics/fetch.json", {"source": data.source, "generic_source": data.generic_source, **counts})
    print(f"fetch: {counts['nanowire_images']} nanowire images ({counts['nanowire_masks']} masks) from "
          f"{data.source}, {counts['generic_images']} pretraining images from {data.generic_source}; "
          f"{len(problems)} file(s) not placed as they came (listed in {report})")


def main(argv: list[str] | None = None) -> int:
    return stage_main("fetch", fetch, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
