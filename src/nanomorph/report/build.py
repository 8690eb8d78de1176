"""Assemble the headline metrics and the markdown + self-contained HTML report from the stage outputs."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from nanomorph.report.figures import grouped_boxplot


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def headline_metrics(metrics_dir: Path, probe_n: int) -> dict:
    """The few numbers a reader wants first: probe accuracy at `probe_n` labels/class, dice, percolation."""
    probe = pd.read_csv(metrics_dir / "probe_results.csv")
    seg = pd.read_csv(metrics_dir / "segment_results.csv")
    n_probe = probe_n if probe_n in set(probe["n"]) else int(probe["n"].max())
    at_n = probe[probe["n"] == n_probe].groupby("encoder")["accuracy"]
    largest = seg[seg["n"] == seg["n"].max()].groupby("encoder")
    analyse = _read_json(metrics_dir / "analyse.json")
    return {
        "probe": {"labels_per_class": int(n_probe),
                  "median_accuracy": {k: float(v) for k, v in at_n.median().items()},
                  "mean_accuracy": {k: float(v) for k, v in at_n.mean().items()}},
        "segment": {"train_images": int(seg["n"].max()),
                    "median_dice": {k: float(v) for k, v in largest["dice"].median().items()},
                    "median_iou": {k: float(v) for k, v in largest["iou"].median().items()}},
        "percolation_agreement": analyse.get("percolation_agreement_dispersed_vs_network"),
        "validate": _read_json(metrics_dir / "validate.json"),
    }


def _table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


def write_report(metrics_dir: Path, out_dir: Path, profile: str, probe_n: int) -> dict[str, Path]:
    """Write metrics.json, the two figures, report.md and report.html into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    probe = pd.read_csv(metrics_dir / "probe_results.csv")
    seg = pd.read_csv(metrics_dir / "segment_results.csv")
    headline = headline_metrics(metrics_dir, probe_n)
    paths = {
        "metrics": out_dir / "metrics.json",
        "accuracy_plot": grouped_boxplot(probe, "accuracy", "labelled images per class", "test accuracy",
                                         "Few-shot linear probe on frozen features", out_dir / "accuracy_vs_labels.png"),
        "dice_plot": grouped_boxplot(seg, "dice", "training images", "per-image dice",
                                     "U-Net with transferred frozen encoder", out_dir / "dice_vs_train_size.png"),
        "markdown": out_dir / "report.md",
        "html": out_dir / "report.html",
    }
    paths["metrics"].write_text(json.dumps(headline, indent=2, sort_keys=True) + "\n")
    probe_table = probe.groupby(["n", "encoder"])["accuracy"].median().unstack("encoder").reset_index()
    seg_table = seg.groupby(["n", "encoder"])["dice"].median().unstack("encoder").reset_index()
    sections = [
        ("Few-shot classification (median test accuracy over splits)", _table(probe_table), paths["accuracy_plot"]),
        ("Segmentation (median per-image dice on held-out images)", _table(seg_table), paths["dice_plot"]),
    ]
    agreement = headline["percolation_agreement"]
    percolation = ("n/a" if agreement is None else f"{agreement:.1%}")
    md = [f"# nanomorph report (profile `{profile}`)", "",
          f"Percolation rule (DBSCAN eps=2, min_samples=2) agrees with dispersed/network labels on "
          f"{percolation} of true masks.", ""]
    body = [f"<h1>nanomorph report (profile <code>{html.escape(profile)}</code>)</h1>",
            f"<p>Percolation rule agreement with dispersed/network labels: {html.escape(percolation)}</p>"]
    for title, table, figure in sections:
        md += [f"## {title}", "", table, "", f"![{title}]({figure.name})", ""]
        encoded = base64.b64encode(figure.read_bytes()).decode()
        body += [f"<h2>{html.escape(title)}</h2>",
                 "<pre>" + html.escape(table) + "</pre>",
                 f'<img alt="{html.escape(title)}" src="data:image/png;base64,{encoded}">']
    paths["markdown"].write_text("\n".join(md))
    paths["html"].write_text("<!doctype html><html><head><meta charset='utf-8'><title>nanomorph report</title>"
                             "</head><body>" + "\n".join(body) + "</body></html>\n")
    return paths
