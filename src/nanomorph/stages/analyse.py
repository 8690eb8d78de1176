"""Stage `analyse`: nanowire pixel density and the paper's percolation rule on every labelled mask.

Percolation should separate dispersed (does not percolate) from network (percolates); the stage reports how
often the verdict on the TRUE masks agrees with the class label. On the generated default that is a generator
self-check (true by construction); the segment stage reports the same agreement from predicted masks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlflow
import pandas as pd
from tqdm import tqdm

from nanomorph.analysis.density import pixel_density
from nanomorph.analysis.percolation import PERCOLATING_CLASS, percolates
from nanomorph.config import Config
from nanomorph.data.io import read_mask
from nanomorph.data.validation import accepted
from nanomorph.stages._common import stage_main, tracked, write_json, on_terminal


def run_analyse(cfg: Config, _args: argparse.Namespace) -> None:
    rows = accepted(cfg.validate.manifest, "nanowire")
    rows = rows[rows["mask_path"].notna()]
    records = []
    for _, row in tqdm(rows.iterrows(), total=len(rows), desc="analyse masks", disable=not on_terminal()):
        mask = read_mask(Path(row["mask_path"]))  # full resolution: percolation depends on pixel geometry
        records.append({"image": row["path"], "label": row["label"], "density": pixel_density(mask),
                        "percolates": bool(percolates(mask))})
    table = pd.DataFrame(records)
    table.to_csv("metrics/morphology.csv", index=False)
    judged = table[table["label"].isin(PERCOLATING_CLASS)]
    agreement = float((judged["percolates"] == judged["label"].map(PERCOLATING_CLASS)).mean()) if len(judged) else float("nan")
    density = {label: float(g["density"].median()) for label, g in table.groupby("label")}
    percolating_share = {label: float(g["percolates"].mean()) for label, g in table.groupby("label")}
    with tracked(cfg, "analyse", ()):
        mlflow.log_metrics({"percolation_agreement": agreement,
                            **{f"density.{k}": v for k, v in density.items()}})
        mlflow.log_artifact("metrics/morphology.csv")
    write_json("metrics/analyse.json", {
        # On generated data this holds by construction (the generator redraws until the label fits): a
        # self-check of the generator, not a finding. The finding is the agreement from predicted masks (segment).
        "percolation_agreement_true_masks": agreement,
        "generator_self_check": cfg.data.source == "synthetic",
        "median_density": density, "percolating_share": percolating_share,
    })
    check = " (generator self-check: holds by construction)" if cfg.data.source == "synthetic" else ""
    print(f"analyse: {len(table)} true masks; percolation agrees with the class on {agreement:.3f} of "
          f"network/dispersed images{check}")


def main(argv: list[str] | None = None) -> int:
    return stage_main("analyse", run_analyse, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
