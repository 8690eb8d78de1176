"""Stage `validate`: check every raw file, write the manifest and the quarantine list."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlflow

from nanomorph.config import Config
from nanomorph.data.layout import find_images, find_nanowire_dataset
from nanomorph.data.validation import Thresholds, build_manifest, quarantine_of, require_classes
from nanomorph.stages._common import stage_main, tracked, write_json


def validate(cfg: Config, _args: argparse.Namespace) -> None:
    v = cfg.validate
    limits = Thresholds(v.min_side, v.max_side, v.min_std, v.max_saturated_fraction)
    with tracked(cfg, "validate", ("data", "validate")):
        nanowires = find_nanowire_dataset(Path(cfg.data.nanowire_dir), cfg.data.classes)
        generic = find_images(Path(cfg.data.generic_dir))
        manifest = build_manifest(nanowires, generic, limits)
        quarantine = quarantine_of(manifest)
        Path(v.manifest).parent.mkdir(parents=True, exist_ok=True)
        manifest.to_csv(v.manifest, index=False)
        quarantine.to_csv(v.quarantine, index=False)
        for _, row in quarantine.iterrows():
            print(f"quarantined {row['path']}: {row['status']}: {row['reason']}", file=sys.stderr)
        summary = {
            "files": int(len(manifest)), "quarantined": int(len(quarantine)),
            "nanowire_ok": int(((manifest["kind"] == "nanowire") & (manifest["status"] == "ok")).sum()),
            "generic_ok": int(((manifest["kind"] == "generic") & (manifest["status"] == "ok")).sum()),
        }
        mlflow.log_metrics(summary)
        mlflow.log_artifact(v.manifest)
        mlflow.log_artifact(v.quarantine)
        write_json("metrics/validate.json", summary)
        require_classes(manifest, cfg.data.classes)


def main(argv: list[str] | None = None) -> int:
    return stage_main("validate", validate, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
