"""Stage `fetch`: bring the raw data into data/raw (procedural by default, no network needed)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import mlflow

from nanomorph.config import Config
from nanomorph.data.synthetic import write_generic_em_dataset, write_nanowire_dataset
from nanomorph.errors import NanomorphError
from nanomorph.stages._common import stage_main, tracked, write_json

NOT_YET = {"zenodo", "cem500k", "folder"}


def fetch(cfg: Config, _args: argparse.Namespace) -> None:
    data = cfg.data
    if data.source in NOT_YET:
        raise NanomorphError(
            f"data source '{data.source}' is not implemented yet (tracked in issue #7); set data.source: synthetic"
        )
    if data.source != "synthetic":
        raise NanomorphError(f"unknown data source '{data.source}' (choose synthetic, zenodo, cem500k or folder)")
    with tracked(cfg, "fetch", ("data",)):
        for out in (Path(data.nanowire_dir), Path(data.generic_dir)):
            if out.exists():  # regenerate from scratch: stale files from another scale must not linger
                shutil.rmtree(out)
        nanowire_files = write_nanowire_dataset(
            Path(data.nanowire_dir), data.classes, data.images_per_class, data.image_size, data.seed
        )
        generic_files = write_generic_em_dataset(Path(data.generic_dir), data.generic_images, data.generic_size,
                                                 data.seed + 1)
        counts = {"nanowire_images": len(nanowire_files), "generic_images": len(generic_files)}
        mlflow.log_metrics(counts)
        write_json("metrics/fetch.json", {"source": data.source, **counts})


def main(argv: list[str] | None = None) -> int:
    return stage_main("fetch", fetch, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
