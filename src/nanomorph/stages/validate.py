"""Stage `validate`: measure every raw file, run the Great Expectations suite, write manifest and quarantine.

Files failing a check are quarantined with the check, the GX expectation and a reason; raw files are never
moved or deleted, and downstream stages read only the manifest rows marked `ok`. The stage fails (exit 2)
only when a check listed in `validate.critical` fails, after writing everything, so the reports show why.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlflow

from nanomorph.config import Config
from nanomorph.data.expectations import Rules, check_rules, validate_manifest
from nanomorph.data.layout import find_images, scan_nanowire_dataset
from nanomorph.data.validation import build_manifest
from nanomorph.errors import NanomorphError
from nanomorph.stages._common import stage_main, tracked, write_json

SHOWN_QUARANTINED = 30


def validate(cfg: Config, _args: argparse.Namespace) -> None:
    v = cfg.validate
    rules = Rules(min_side=v.min_side, max_side=v.max_side, min_std=v.min_std,
                  max_saturated_fraction=v.max_saturated_fraction, min_class_ratio=v.min_class_ratio,
                  critical=v.critical)
    check_rules(rules)
    with tracked(cfg, "validate", ("data", "validate")):
        nanowires, _empty = scan_nanowire_dataset(Path(cfg.data.nanowire_dir), cfg.data.classes)
        generic = find_images(Path(cfg.data.generic_dir))
        manifest = build_manifest(nanowires, generic, max_pixels=v.max_pixels, hash_size=v.hash_size,
                                  near_duplicate_bits=v.near_duplicate_bits)
        outcome = validate_manifest(manifest, cfg.data.classes, rules, docs_dir=v.docs_dir)
        quarantine = outcome.quarantine
        Path(v.manifest).parent.mkdir(parents=True, exist_ok=True)
        outcome.manifest.to_csv(v.manifest, index=False)
        quarantine.to_csv(v.quarantine, index=False)
        for _, row in quarantine.head(SHOWN_QUARANTINED).iterrows():
            print(f"quarantined {row['path']}: {row['status']}: {row['reason']}", file=sys.stderr)
        if len(quarantine) > SHOWN_QUARANTINED:
            print(f"... and {len(quarantine) - SHOWN_QUARANTINED} more in {v.quarantine}", file=sys.stderr)
        for _, row in outcome.classes[outcome.classes["status"] != "ok"].iterrows():
            print(f"classes: {row['status']}: {row['reason']}", file=sys.stderr)
        judged = outcome.manifest
        summary = {
            "files": int(len(judged)), "quarantined": int(len(quarantine)),
            "nanowire_ok": int(((judged["kind"] == "nanowire") & (judged["status"] == "ok")).sum()),
            "generic_ok": int(((judged["kind"] == "generic") & (judged["status"] == "ok")).sum()),
            "critical_failures": len(outcome.critical),
            **{f"failed_{name}": count for name, count in outcome.failures.items()},
        }
        mlflow.log_metrics(summary)
        mlflow.log_artifact(v.manifest)
        mlflow.log_artifact(v.quarantine)
        docs = Path(v.docs_dir)
        for page in sorted(docs.rglob("*.html")) + [docs / "validation_result.json"]:
            # The HTML pages and the result; GX's static fonts and images (4 MB) are not worth a copy per run.
            mlflow.log_artifact(str(page), str(Path("data_docs") / page.parent.relative_to(docs)))
        write_json("metrics/validate.json", summary)
        print(f"validate: {summary['files']} files, {summary['quarantined']} quarantined; "
              f"data docs: {outcome.docs_index}")
        if outcome.critical:
            raise NanomorphError("critical data checks failed: " + "; ".join(outcome.critical)
                                 + f" (manifest: {v.manifest}, quarantine: {v.quarantine}, report: {outcome.docs_index})")


def main(argv: list[str] | None = None) -> int:
    return stage_main("validate", validate, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
