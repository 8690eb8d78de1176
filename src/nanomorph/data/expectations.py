"""The data checks, as a Great Expectations (1.x) suite over the manifest.

Two suites run in an ephemeral GX context:

* `files`, over the manifest (one row per image): each check is one or more column expectations, and the
  rows a check's expectations flag (GX's `unexpected_index_list`, keyed by the `row` column) are quarantined
  with the check's name, the GX expectation type and a reason written from the row's values;
* `classes`, over a table with one row per configured class counting the nanowire images that passed every
  file check: every class present, and classes balanced within `min_class_ratio` of the largest.

A check listed in `critical` makes the validation fail when any row fails it; the others only quarantine.
The results are rendered as GX data docs (static HTML) when a folder is given.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from nanomorph.errors import ConfigError

# GX sends usage analytics unless told not to; a pipeline stage must not phone home. Set before the import.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import great_expectations as gx  # noqa: E402
from great_expectations.data_context.types.base import (  # noqa: E402
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

ROW_ID = "row"


@dataclass(frozen=True)
class Rules:
    min_side: int
    max_side: int
    min_std: float
    max_saturated_fraction: float
    min_class_ratio: float
    critical: tuple[str, ...] = ("classes_present",)


@dataclass(frozen=True)
class Check:
    name: str
    table: str                                              # 'files' or 'classes'
    expectations: Callable[[Rules], list]                   # GX expectations; each gets meta {"check": name}
    reason: Callable[[dict, Rules], str]                    # why a flagged row fails, from its values


def _pct(value: float) -> str:
    return f"{value:.1%}"


CHECKS: tuple[Check, ...] = (
    Check("utf8_name", "files",
          lambda r: [gx.expectations.ExpectColumnValuesToBeNull(column="name_error")],
          lambda row, r: row["name_error"]),
    Check("decodable", "files",
          lambda r: [gx.expectations.ExpectColumnValuesToBeNull(column="decode_error")],
          lambda row, r: row["decode_error"]),
    Check("size", "files",
          lambda r: [gx.expectations.ExpectColumnValuesToBeBetween(column=c, min_value=r.min_side, max_value=r.max_side)
                     for c in ("width", "height")],
          lambda row, r: f"{row['image_size']} px is outside [{r.min_side}, {r.max_side}] px per side"),
    Check("not_blank", "files",
          lambda r: [gx.expectations.ExpectColumnValuesToBeBetween(column="intensity_std", min_value=r.min_std)],
          lambda row, r: f"blank or near-constant: intensity std {row['intensity_std']:.4f} < {r.min_std}"),
    Check("not_saturated", "files",
          lambda r: [gx.expectations.ExpectColumnValuesToBeBetween(column="saturated_fraction",
                                                                   max_value=r.max_saturated_fraction)],
          lambda row, r: f"saturated: {_pct(row['saturated_fraction'])} of pixels at 0 or 1 "
                         f"(> {_pct(r.max_saturated_fraction)})"),
    Check("unique_sha256", "files",
          lambda r: [gx.expectations.ExpectColumnValuesToBeNull(column="duplicate_of")],
          lambda row, r: f"duplicate: same bytes (sha256) as {row['duplicate_of']}"),
    Check("label_conflict", "files",
          lambda r: [gx.expectations.ExpectColumnValuesToBeNull(column="label_conflict")],
          lambda row, r: f"label conflict: the same bytes (sha256) are labelled {row['label_conflict']} in different "
                         "files; every copy is quarantined"),
    Check("near_duplicate", "files",
          lambda r: [gx.expectations.ExpectColumnValuesToBeNull(column="near_duplicate_of")],
          lambda row, r: f"near-duplicate of {row['near_duplicate_of']} (perceptual hash {int(row['near_duplicate_bits'])} "
                         "bits apart, rotations/flips included): it would leak between train and test splits"),
    Check("mask_decodable", "files",
          lambda r: [gx.expectations.ExpectColumnValuesToBeNull(column="mask_error")],
          lambda row, r: row["mask_error"]),
    Check("mask_binary", "files",
          lambda r: [gx.expectations.ExpectColumnValuesToBeInSet(column="mask_binary", value_set=[True])],
          lambda row, r: f"mask {row['mask_path']} is not binary: values {row['mask_values']}"),
    Check("mask_size", "files",
          lambda r: [gx.expectations.ExpectColumnPairValuesToBeEqual(column_A="image_size", column_B="mask_size",
                                                                     ignore_row_if="either_value_is_missing")],
          lambda row, r: f"mask {row['mask_path']} is {row['mask_size']} px, image is {row['image_size']} px"),
    Check("classes_present", "classes",
          lambda r: [gx.expectations.ExpectColumnValuesToBeBetween(column="usable", min_value=1)],
          lambda row, r: f"class '{row['class']}' has no usable images"),
    Check("classes_balanced", "classes",
          lambda r: [gx.expectations.ExpectColumnValuesToBeBetween(column="ratio_to_largest", min_value=r.min_class_ratio)],
          lambda row, r: f"class '{row['class']}' has {row['usable']} usable images, {row['ratio_to_largest']:.2f} of "
                         f"the largest class ({row['largest']}); below validate.min_class_ratio {r.min_class_ratio}"),
)
CHECK_NAMES = tuple(c.name for c in CHECKS)
_BY_NAME = {c.name: c for c in CHECKS}


@dataclass
class Outcome:
    manifest: pd.DataFrame          # the input plus status ('ok' or failed checks), failed_expectations, reason
    classes: pd.DataFrame           # one row per class: usable, ratio_to_largest, status, reason
    failures: dict[str, int]        # check -> rows (files or classes) failing it
    critical: list[str] = field(default_factory=list)   # one line per failed critical check
    results: dict[str, Any] = field(default_factory=dict)
    docs_index: Path | None = None

    @property
    def success(self) -> bool:
        return not self.critical

    @property
    def quarantine(self) -> pd.DataFrame:
        bad = self.manifest[self.manifest["status"] != "ok"]
        return bad[["path", "kind", "label", "status", "failed_expectations", "reason"]]


def check_rules(rules: Rules) -> None:
    unknown = sorted(set(rules.critical) - set(CHECK_NAMES))
    if unknown:
        raise ConfigError(f"validate.critical names unknown checks {unknown} (choose from {', '.join(CHECK_NAMES)})")


def _context(docs_dir: Path | None):
    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(), analytics_enabled=False,
                               progress_bars=ProgressBarsConfig(globally=False))
    context = gx.get_context(mode="ephemeral", project_config=config)
    if docs_dir is not None:
        context.add_data_docs_site(site_name="nanomorph", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(Path(docs_dir).resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
    return context


def _run_suite(context, source, table: str, frame: pd.DataFrame, rules: Rules, docs: bool) -> Any:
    """Validate `frame` against the checks of `table`; returns GX's ExpectationSuiteValidationResult."""
    suite = context.suites.add(gx.ExpectationSuite(name=table))
    for check in CHECKS:
        if check.table == table:
            for expectation in check.expectations(rules):
                expectation.meta = {"check": check.name, "critical": check.name in rules.critical}
                suite.add_expectation(expectation)
    batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(table)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=table, data=batch, suite=suite))
    actions = [gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["nanomorph"])] if docs else []
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=table, validation_definitions=[definition], actions=actions,
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW_ID]},
    ))
    run = checkpoint.run(batch_parameters={"dataframe": frame})
    (result,) = run.run_results.values()
    return result


def _flagged(result) -> dict[str, tuple[set[int], list[str]]]:
    """check -> (row ids its expectations flagged, the GX expectation types that flagged them)."""
    flagged: dict[str, tuple[set[int], list[str]]] = {}
    for item in result.results:
        config = item.expectation_config
        check = config.meta["check"]
        rows, types = flagged.setdefault(check, (set(), []))
        if item.exception_info and item.exception_info.get("raised_exception"):
            raise RuntimeError(f"expectation {config.type} could not run: {item.exception_info.get('exception_message')}")
        if not item.success:
            rows.update(int(entry[ROW_ID]) for entry in item.result.get("unexpected_index_list") or [])
            types.append(config.type)
    return flagged


def _apply(frame: pd.DataFrame, flagged: dict, rules: Rules) -> tuple[pd.DataFrame, dict[str, int], list[str]]:
    status: dict[int, list[str]] = {}
    types: dict[int, list[str]] = {}
    reasons: dict[int, list[str]] = {}
    failures, critical = {}, []
    records = frame.to_dict("index")
    for check_name, (rows, gx_types) in flagged.items():
        check = _BY_NAME[check_name]
        failures[check_name] = len(rows)
        for row in sorted(rows):
            status.setdefault(row, []).append(check_name)
            types.setdefault(row, []).extend(t for t in gx_types if t not in types.get(row, []))
            reasons.setdefault(row, []).append(check.reason(records[row], rules))
        if rows and check_name in rules.critical:
            first = reasons[min(rows)][-1]
            critical.append(f"{check_name} ({len(rows)} failing): {first}" + (" ..." if len(rows) > 1 else ""))
    out = frame.drop(columns=[ROW_ID]).copy()
    ids = frame[ROW_ID].tolist()
    out["status"] = [";".join(status[i]) if i in status else "ok" for i in ids]
    out["failed_expectations"] = [";".join(types[i]) if i in types else "" for i in ids]
    out["reason"] = ["; ".join(reasons[i]) if i in reasons else "" for i in ids]
    return out, failures, critical


def class_table(manifest: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Usable nanowire images per class and their ratio to the largest class."""
    ok = manifest[(manifest["kind"] == "nanowire") & (manifest["status"] == "ok")]
    counts = {c: int((ok["label"] == c).sum()) for c in classes}
    largest = max(counts, key=counts.get) if counts else ""
    top = counts.get(largest, 0)
    return pd.DataFrame({
        "class": list(counts), "usable": list(counts.values()),
        "ratio_to_largest": [n / top if top else 0.0 for n in counts.values()],
        "largest": [f"{largest}: {top}"] * len(counts),
    })


def validate_manifest(manifest: pd.DataFrame, classes: Sequence[str], rules: Rules,
                      docs_dir: str | Path | None = None) -> Outcome:
    """Run both suites; returns the judged manifest and class table, failure counts and critical failures.

    With `docs_dir`, GX data docs are (re)built there (`index.html`) with the validation result JSON beside.
    """
    check_rules(rules)
    docs = Path(docs_dir) if docs_dir is not None else None
    if docs is not None and docs.exists():
        shutil.rmtree(docs)
    context = _context(docs)
    source = context.data_sources.add_pandas("nanomorph")

    files = manifest.reset_index(drop=True).copy()
    files.insert(0, ROW_ID, range(len(files)))
    files_result = _run_suite(context, source, "files", files, rules, docs is not None)
    judged, failures, critical = _apply(files, _flagged(files_result), rules)

    table = class_table(judged, classes)
    table.insert(0, ROW_ID, range(len(table)))
    classes_result = _run_suite(context, source, "classes", table, rules, docs is not None)
    judged_classes, class_failures, class_critical = _apply(table, _flagged(classes_result), rules)

    outcome = Outcome(judged, judged_classes, {**failures, **class_failures}, critical + class_critical,
                      results={"files": files_result.describe_dict(), "classes": classes_result.describe_dict()})
    if docs is not None:
        (docs / "validation_result.json").write_text(json.dumps(outcome.results, indent=2, default=str) + "\n")
        outcome.docs_index = docs / "index.html"
    return outcome
