"""Assemble the headline metrics and the markdown + self-contained HTML report from the stage outputs.

The report reproduces the paper's figures from the current results: label-efficiency box plots, dice vs
training-set size, every figure the probe and segment stages leave under figures/probe and figures/segment
(t-SNE maps, segmentation examples; captions from the file names), pixel density and percolation per class,
the data-validation summary and the model registry's state. The HTML inlines every image (base64) and its
style, so the one file can be mailed or archived. An input that a stage has not produced yet gives a section
saying which file is missing, never a silently shorter report.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nanomorph.report.figures import grouped_boxplot
from nanomorph.report.gallery import Figure, collect_figures
from nanomorph.report.morphology_figure import morphology_figure

FIGURE_DIRS = (Path("figures/probe"), Path("figures/segment"))
_STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{border-bottom:2px solid #444}
h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.8em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}figure{margin:1em 0}
img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.9em;color:#555}
.gallery{display:flex;flex-wrap:wrap;gap:1em}.gallery figure{flex:1 1 300px;max-width:520px}
.missing{color:#a33}code{background:#f5f5f5;padding:0 .2em}"""


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _linear_probe(probe: pd.DataFrame) -> pd.DataFrame:
    """The paper's linear-probe rows; the probe stage also writes baselines (column `classifier`, e.g. knn)."""
    return probe[probe["classifier"] == "linear"] if "classifier" in probe.columns else probe


def _probe_method(probe: pd.DataFrame) -> pd.Series:
    """'simclr' for the linear probe, 'simclr+knn' for a baseline classifier (the probe summary's naming; the
    probe stage already writes baselines' encoders that way, which is kept as it is)."""
    if "classifier" not in probe.columns:
        return probe["encoder"]
    suffix = "+" + probe["classifier"].astype(str)
    named = (probe["classifier"] == "linear") | pd.Series(
        [e.endswith(x) for e, x in zip(probe["encoder"].astype(str), suffix)], index=probe.index)
    return probe["encoder"].where(named, probe["encoder"] + suffix)


def _registry_headline(register: dict) -> dict:
    return {kind: {k: register[kind][k] for k in ("name", "version", "alias", "metric", "score")}
            for kind in ("classifier", "segmenter") if kind in register}


def headline_metrics(metrics_dir: Path, probe_n: int) -> dict:
    """The few numbers a reader wants first: probe accuracy at `probe_n` labels/class, dice, percolation,
    data validation and the registered versions."""
    probe = _linear_probe(pd.read_csv(metrics_dir / "probe_results.csv"))
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
        "registry": _registry_headline(_read_json(metrics_dir / "register.json")),
    }


def _table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


def _html_cell(value: object) -> str:
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        text = f"{value:.3f}" if isinstance(value, (float, np.floating)) else str(value)
        return f'<td class="num">{html.escape(text)}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(_html_cell(v) for v in row) + "</tr>"
                   for row in frame.itertuples(index=False, name=None))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass
class Section:
    """A report section; blocks are ("text", str) | ("missing", str) | ("table", DataFrame) |
    ("figure", Figure) | ("gallery", list[Figure])."""

    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def add(self, kind: str, value: object) -> Section:
        self.blocks.append((kind, value))
        return self


def _inline_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _figure_html(figure: Figure) -> str:
    caption = html.escape(figure.caption)
    return (f'<figure><img alt="{caption}" src="{_inline_png(figure.path)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _render_markdown(title: str, sections: list[Section], out_dir: Path) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for kind, value in section.blocks:
            if kind in ("text", "missing"):
                lines += [str(value), ""]
            elif kind == "table":
                lines += [_table(value), ""]
            else:
                for figure in ([value] if kind == "figure" else value):
                    rel = Path(os.path.relpath(figure.path.resolve(), out_dir.resolve())).as_posix()
                    lines += [f"![{figure.caption}]({rel})", "", f"*{figure.caption}*", ""]
    return "\n".join(lines)


def _render_html(title: str, sections: list[Section]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        for kind, value in section.blocks:
            if kind == "text":
                body.append(f"<p>{html.escape(str(value))}</p>")
            elif kind == "missing":
                body.append(f'<p class="missing">{html.escape(str(value))}</p>')
            elif kind == "table":
                body.append(_html_table(value))
            elif kind == "figure":
                body.append(_figure_html(value))
            else:
                body.append('<div class="gallery">' + "".join(_figure_html(f) for f in value) + "</div>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
            + _STYLE + "</style></head><body>" + "\n".join(body) + "</body></html>\n")


def _gallery(section: Section, folder: Path) -> None:
    figures = collect_figures(folder)
    if figures:
        section.add("text", f"Figures from {folder.as_posix()}/:").add("gallery", figures)
    else:
        section.add("missing", f"No figures under {folder.as_posix()}/ yet.")


def _validation_section(validate: dict) -> Section:
    section = Section("Data validation")
    if not validate:
        return section.add("missing", "metrics/validate.json is missing: run the validate stage.")
    rows = pd.DataFrame({"check": list(validate), "value": [str(v) for v in validate.values()]})
    return section.add("text", "Files checked by the validate stage and what was quarantined (see "
                               "data/validated/quarantine.csv for the reasons per file).").add("table", rows)


def _morphology_section(metrics_dir: Path, out_dir: Path, paths: dict[str, Path]) -> Section:
    section = Section("Nanowire density and percolation (true masks)")
    analyse = _read_json(metrics_dir / "analyse.json")
    if analyse:
        agreement = analyse.get("percolation_agreement_dispersed_vs_network")
        section.add("text", "Percolation rule (DBSCAN eps=2, min_samples=2; one cluster spanning the field of view) "
                            "agrees with the dispersed/network labels on "
                            + ("n/a" if agreement is None else f"{agreement:.1%}") + " of the true masks.")
        per_class = pd.DataFrame({"median density": analyse.get("median_density", {}),
                                  "percolating share": analyse.get("percolating_share", {})})
        per_class.index.name = "class"
        section.add("table", per_class.reset_index())
    else:
        section.add("missing", "metrics/analyse.json is missing: run the analyse stage.")
    table_path = metrics_dir / "morphology.csv"
    if table_path.is_file():
        paths["morphology_plot"] = morphology_figure(pd.read_csv(table_path), out_dir / "morphology.png")
        section.add("figure", Figure(paths["morphology_plot"], "Pixel density and percolation per class"))
    else:
        section.add("missing", "metrics/morphology.csv is missing: run the analyse stage.")
    return section


def _registry_section(register: dict) -> Section:
    section = Section("Model registry")
    if not register:
        return section.add("missing", "metrics/register.json is missing: run the register stage.")
    choice = register.get("encoder_choice", {})
    split = register.get("eval_split", {})
    if choice:
        section.add("text", f"Deployed encoder: {choice['encoder']} (best mean {choice['cv_folds']}-fold "
                            "cross-validated probe accuracy on the training part, among the pretrained encoders: "
                            + ", ".join(f"{k} {v:.3f}" for k, v in choice["cv_accuracy"].items()) + ").")
    if split:
        section.add("text", f"Every version is scored on a fixed evaluation split (fraction {split['fraction']}, "
                            f"seed {split['seed']}, content hash {split['hash']}) that no version is trained on.")
    rows = []
    for kind in ("classifier", "segmenter"):
        entry = register.get(kind)
        if not entry:
            continue
        previous = entry.get("previous_champion")
        before = "none" if not previous else f"v{previous['version']} ({previous['score']:.3f})"
        rows.append({"model": entry["name"], "new version": entry["version"], "alias": entry["alias"],
                     "metric": entry["metric"], "score": float(entry["score"]), "previous champion": before,
                     "decision": entry["reason"]})
    if rows:
        section.add("table", pd.DataFrame(rows))
    aliases = register.get("registry", {})
    if aliases:
        section.add("text", "Aliases now: " + "; ".join(
            f"{name}: " + (", ".join(f"{a} = v{v}" for a, v in sorted(per.items())) or "none")
            for name, per in aliases.items()))
        section.add("text", "Load the champion with mlflow.pyfunc.load_model('models:/<name>@champion'), serve it "
                            "with mlflow models serve, or apply it with nanomorph predict.")
    return section


def write_report(metrics_dir: Path, out_dir: Path, profile: str, probe_n: int,
                 figure_dirs: tuple[Path, Path] = FIGURE_DIRS) -> dict[str, Path]:
    """Write metrics.json, the figures, report.md and report.html into `out_dir`; returns their paths.

    `figure_dirs` are the (probe, segment) folders whose PNGs are shown in their sections.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    probe = pd.read_csv(metrics_dir / "probe_results.csv")
    seg = pd.read_csv(metrics_dir / "segment_results.csv")
    headline = headline_metrics(metrics_dir, probe_n)
    paths = {
        "metrics": out_dir / "metrics.json",
        "accuracy_plot": grouped_boxplot(_linear_probe(probe), "accuracy", "labelled images per class",
                                         "test accuracy", "Few-shot linear probe on frozen features",
                                         out_dir / "accuracy_vs_labels.png"),
        "dice_plot": grouped_boxplot(seg, "dice", "training images", "per-image dice",
                                     "U-Net with transferred frozen encoder", out_dir / "dice_vs_train_size.png"),
        "markdown": out_dir / "report.md",
        "html": out_dir / "report.html",
    }
    paths["metrics"].write_text(json.dumps(headline, indent=2, sort_keys=True) + "\n")

    probe_table = (probe.assign(method=_probe_method(probe)).groupby(["n", "method"])["accuracy"].median()
                   .unstack("method").reset_index())
    classification = Section("Few-shot classification (median test accuracy over splits)")
    classification.add("table", probe_table).add(
        "figure", Figure(paths["accuracy_plot"],
                         "Linear-probe test accuracy vs labelled images per class (box: splits)"))
    _gallery(classification, figure_dirs[0])

    seg_table = seg.groupby(["n", "encoder"])["dice"].median().unstack("encoder").reset_index()
    segmentation = Section("Segmentation (median per-image dice on held-out images)")
    segmentation.add("table", seg_table).add(
        "figure", Figure(paths["dice_plot"], "Per-image dice vs number of training images"))
    _gallery(segmentation, figure_dirs[1])

    sections = [
        _validation_section(headline["validate"]),
        classification,
        segmentation,
        _morphology_section(metrics_dir, out_dir, paths),
        _registry_section(_read_json(metrics_dir / "register.json")),
    ]
    title = f"nanomorph report (profile {profile})"
    paths["markdown"].write_text(_render_markdown(title, sections, out_dir))
    paths["html"].write_text(_render_html(title, sections))
    return paths
