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

from nanomorph.plotting.common import grouped_boxplot
from nanomorph.report.gallery import Figure, collect_figures
from nanomorph.report.morphology_figure import morphology_figure
from nanomorph.report.study_figures import anchor_figure, pretraining_figure

FIGURE_DIRS = (Path("figures/probe"), Path("figures/segment"))
BENCHMARKS = Path("benchmarks/results")  # generator realism figure and the real-data (EMPS) benchmark
# Lu et al. 2022 (Fig. 2C, Barlow Twins pretrained on TEM images; Fig. 4B, U-Net with that encoder), read off the
# figures: median test accuracy per labels/class and median dice per training images. ImageNet-initialised
# ResNet50 at 224/512 px, so a reference, not a like-for-like comparison.
PAPER_PROBE_ACCURACY = {1: 0.73, 8: 0.90, 80: 0.96}
PAPER_DICE = {8: 0.74, 80: 0.78}
PROBE_BASELINES = ("random", "classical")
SIGNIFICANCE = 0.01
_STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{border-bottom:2px solid #444}
h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.8em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}figure{margin:1em 0}
img{max-width:100%;height:auto;border:1px solid #eee;cursor:zoom-in}figcaption{font-size:.9em;color:#555}
input.zoom{display:none}input.zoom:checked+img{position:fixed;inset:0;margin:auto;max-width:98vw;max-height:98vh;
width:auto;z-index:10;background:#fff;box-shadow:0 0 0 100vmax rgba(0,0,0,.6);cursor:zoom-out}
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


def _paid_off(tests: list[dict], method: str, baselines: tuple[str, ...] | list[str]) -> list[int]:
    """Budgets n at which `method` beats EVERY baseline with Holm-corrected paired p < SIGNIFICANCE."""
    wins: dict[int, set[str]] = {}
    for t in tests:
        if t["method"] == method and t["p_holm"] is not None and t["p_holm"] < SIGNIFICANCE \
                and t["median_difference"] is not None and t["median_difference"] > 0:
            wins.setdefault(int(t["n"]), set()).add(t["baseline"])
    return sorted(n for n, beaten in wins.items() if beaten >= set(baselines))


PRETRAINING_IMAGES = {
    "generic": "generic EM images of other materials (as the paper's CEM500K)",
    "task": "the task's own nanowire images, without their labels or masks",
    "generic+task": "generic EM images of other materials and the task's own nanowire images (unlabelled)",
}


def _headline_section(metrics_dir: Path, data_source: str, pretraining: tuple[tuple[str, ...], str] | None) -> Section:
    """Per task: learned vs classical vs random-init at every label budget, the paper beside them."""
    section = Section("Headline: did pretraining pay off?")
    synthetic = data_source == "synthetic"
    pretrained = ""
    if pretraining is not None:
        methods, images = pretraining
        pretrained = (f"Pretrained encoders ({', '.join(methods)}) learned self-supervised from "
                      f"{PRETRAINING_IMAGES.get(images, images)} (pretrain.images: {images}). ")
    section.add("text", ("Data: the embedded procedural generator of TEM-like nanowire images (synthetic, exact "
                         "masks), not real micrographs. " if synthetic else f"Data source: {data_source}. ")
                + pretrained
                + "Baselines on the same splits: random-init = the same ResNet with untrained weights; classical = "
                  "hand-crafted intensity/texture/morphology features (probe) or Otsu / local thresholds fitted on "
                  "the training images (segmentation). Medians over splits (probe) or test images (segmentation); "
                  "tests are paired Wilcoxon signed-rank, Holm-corrected, on the shared splits / images.")
    probe = _linear_probe(pd.read_csv(metrics_dir / "probe_results.csv"))
    probe_json = _read_json(metrics_dir / "probe.json")
    medians = probe.groupby(["n", "encoder"])["accuracy"].median().unstack("encoder")
    spread = probe.groupby(["n", "encoder"])["accuracy"].agg(lambda a: a.quantile(0.75) - a.quantile(0.25))
    learned = [m for m in medians.columns if m not in PROBE_BASELINES]
    order = learned + [b for b in PROBE_BASELINES if b in medians.columns]
    table = pd.DataFrame({"labels/class": medians.index.astype(int)})
    for m in order:
        table[m] = [f"{medians.loc[n, m]:.3f} (IQR {spread.loc[(n, m)]:.3f})" for n in medians.index]
    table["paper (BT, TEM)"] = [f"{PAPER_PROBE_ACCURACY[n]:.2f}" if n in PAPER_PROBE_ACCURACY else "" for n in
                                medians.index]
    section.add("text", "Few-shot classification: median test accuracy of the linear probe (interquartile range "
                        "over split seeds).").add("table", table)
    tests = probe_json.get("headline_tests", [])
    for m in learned:
        wins = _paid_off(tests, m, [b for b in PROBE_BASELINES if b in medians.columns])
        section.add("text", f"{m}: beats both baselines (Holm p < {SIGNIFICANCE}) at labels/class "
                            + (", ".join(map(str, wins)) if wins else "none") + " of n <= 8.")
    seg = pd.read_csv(metrics_dir / "segment_results.csv")
    seg_json = _read_json(metrics_dir / "segment.json")
    classical = list(seg_json.get("classical", []))
    dice = seg.groupby(["n", "encoder"])["dice"].median().unstack("encoder")
    seg_learned = [m for m in dice.columns if m not in classical and m != "random"]
    seg_order = seg_learned + [m for m in ("random", *classical) if m in dice.columns]
    seg_table = dice[seg_order].reset_index().rename(columns={"n": "training images"})
    seg_table["paper (512 px)"] = [f"{PAPER_DICE[n]:.2f}" if n in PAPER_DICE else "" for n in dice.index]
    section.add("text", f"Segmentation: median per-image test dice at {seg_json.get('image_size', '?')} px.").add(
        "table", seg_table)
    seg_tests = seg_json.get("headline_tests", [])
    for m in seg_learned:
        wins = _paid_off(seg_tests, m, [*classical, "random"])
        section.add("text", f"{m} U-Net: beats random-init and every classical segmenter (Holm p < {SIGNIFICANCE}) "
                            "with " + (", ".join(map(str, wins)) if wins else "no") + " training images.")
    percolation = seg_json.get("percolation", {})
    classical_perc = seg_json.get("classical_downstream", {}).get("percolation", {})
    if percolation:
        best = seg_json.get("best", {})
        line = (f"Percolation verdict (dispersed vs network) from PREDICTED masks of the {best.get('encoder')} "
                f"U-Net (n={best.get('n')}, chosen on validation dice): agrees with the labels on "
                f"{percolation['agreement_predicted']:.1%} of {percolation['images']} test images")
        if classical_perc:
            line += (f"; from the {seg_json['classical_downstream']['method']} classical masks: "
                     f"{classical_perc['agreement_predicted']:.1%}")
        analyse = _read_json(metrics_dir / "analyse.json")
        full = analyse.get("percolation_agreement_true_masks")
        line += (f". From the true masks resized to the same {seg_json.get('image_size', '?')} px: "
                 f"{percolation['agreement_true']:.1%} (the ceiling at that size)")
        if full is not None:
            line += (f"; from the true masks at full resolution: {full:.1%}"
                     + (" (a generator self-check: the generator redraws a layout until its percolation fits "
                        "the class, so this holds by construction)" if synthetic else ""))
        section.add("text", line + ".")
    return section


def _registry_headline(register: dict) -> dict:
    return {kind: {k: register[kind][k] for k in ("name", "version", "recommendation", "metric", "score")}
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
    segment = _read_json(metrics_dir / "segment.json")
    return {
        "probe": {"labels_per_class": int(n_probe),
                  "median_accuracy": {k: float(v) for k, v in at_n.median().items()},
                  "mean_accuracy": {k: float(v) for k, v in at_n.mean().items()}},
        "segment": {"train_images": int(seg["n"].max()),
                    "median_dice": {k: float(v) for k, v in largest["dice"].median().items()},
                    "median_iou": {k: float(v) for k, v in largest["iou"].median().items()}},
        # Headline percolation agreement: from PREDICTED masks; the true-mask figure is a generator self-check.
        "percolation_agreement": segment.get("percolation", {}).get("agreement_predicted"),
        "percolation_agreement_true_masks": analyse.get("percolation_agreement_true_masks"),
        "validate": _read_json(metrics_dir / "validate.json"),
        "registry": _registry_headline(_read_json(metrics_dir / "register.json")),
    }


def terminal_headline(headline: dict) -> dict:
    """The few numbers `dvc metrics show` prints (dvc.yaml's only metrics file), short-keyed so the table fits a
    terminal: probe accuracy at the report's labels per class and segmentation dice at the largest training
    set, per method, to three decimals. Everything else stays in reports/metrics.json and metrics/*.json."""
    probe, segment = headline["probe"], headline["segment"]
    return {f"acc_n{probe['labels_per_class']}": {m: round(v, 3) for m, v in probe["median_accuracy"].items()},
            f"dice_n{segment['train_images']}": {m: round(v, 3) for m, v in segment["median_dice"].items()}}


def _table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    # itertuples keeps each column's type (iterrows would turn a row of ints and floats into floats: "4.000").
    for row in frame.itertuples(index=False, name=None):
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
    # A click shows the figure at full size and another click puts it back: a hidden checkbox and CSS, no script,
    # and the image data is inlined once.
    caption = html.escape(figure.caption)
    return (f'<figure><label><input type="checkbox" class="zoom"><img alt="{caption}" '
            f'src="{_inline_png(figure.path)}"></label><figcaption>{caption} (click to enlarge)</figcaption></figure>')


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
        agreement = analyse.get("percolation_agreement_true_masks")
        section.add("text", "Percolation rule (DBSCAN eps=2, min_samples=2; one cluster spanning the field of view) "
                            "agrees with the dispersed/network labels on "
                            + ("n/a" if agreement is None else f"{agreement:.1%}") + " of the TRUE masks"
                            + (": a generator self-check, true by construction on generated data (the headline "
                               "figure is the one from predicted masks)." if analyse.get("generator_self_check")
                               else "."))
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


def _real_data_section(benchmarks: Path) -> Section:
    """The real-EM benchmark (EMPS particles, benchmarks/segment_real.py): learned vs classical vs random-init."""
    section = Section("Real EM images (EMPS particle segmentation benchmark)")
    result = _read_json(benchmarks / "segment_real.json")
    if not result:
        return section.add("missing", f"{benchmarks.as_posix()}/segment_real.json is missing: run "
                                      "benchmarks/segment_real.py (needs ../shared/data/emps).")
    table = result.get("table", {})
    sizes = sorted({int(k[1:]) for per_n in table.values() for k in per_n})
    rows = pd.DataFrame({"training images": sizes})
    for method, per_n in table.items():
        rows[method] = [per_n.get(f"n{n}", {}).get("dice_median", float("nan")) for n in sizes]
    data = result.get("data", {})
    section.add("text", f"{data.get('pairs', '?')} real images ({data.get('source', '')}), one seeded split: "
                        f"{data.get('train', '?')} train, {data.get('validation', '?')} validation, "
                        f"{data.get('test', '?')} test; median per-image test dice. Classical methods are fitted "
                        "on the same training images; U-Net thresholds are chosen on the validation images.")
    section.add("table", rows)
    tests = result.get("paired_tests_vs_classical", [])
    if tests:
        section.add("table", pd.DataFrame(tests)[["n", "method_a", "method_b", "median_difference", "p", "p_holm"]])
    return section


def _long_schedule_section(benchmarks: Path) -> Section:
    """The few-shot probe after a longer SimCLR schedule than the profile's (benchmarks/long_schedule_probe.py),
    on the report's data and splits, beside both baselines at both feature sides."""
    section = Section("Longer pretraining (benchmark on the report's data, outside the 15-minute repro)")
    result = _read_json(benchmarks / "long_schedule_probe.json")
    if not result:
        return section.add("missing", f"{benchmarks.as_posix()}/long_schedule_probe.json is missing: run "
                                      "benchmarks/long_schedule_probe.py.")
    params, pretrain = result.get("params", {}), result.get("pretrain", {})
    medians = result.get("median_accuracy", {})
    sizes = sorted({int(n) for per_n in medians.values() for n in per_n})
    rows = pd.DataFrame({"labels/class": sizes})
    for method, per_n in medians.items():
        rows[method] = [per_n.get(str(n), float("nan")) for n in sizes]
    epochs, images, view = (params.get(k, "?") for k in ("epochs", "images", "view_size"))
    seconds, threads = pretrain.get("seconds_this_process", "?"), result.get("machine", {}).get("cpus", "?")
    section.add("text", f"SimCLR pretrained for {epochs} epochs instead of the profile's `pretrain.epochs`, on "
                        f"{images} task images, {view} px views, {seconds} s of pretraining on {threads} threads; "
                        "features read out at 64 and 128 px (`method@side`), every baseline at both sides. The "
                        "schedule and the 128 px readout were chosen on tuning data (generator seed 1, split seeds "
                        "1000-1019); these figures use the report's generator seed "
                        f"{params.get('generator_seed', '?')} and split seeds {params.get('split_seeds', '?')}. "
                        "Median test accuracy over splits:")
    section.add("table", rows)
    tests = result.get("paired_tests", [])
    if tests:
        section.add("text", "Paired Wilcoxon over shared split seeds, Holm over every test listed:")
        section.add("table", pd.DataFrame(tests)[["n", "method_a", "method_b", "median_difference", "p", "p_holm"]])
    return section


def _realism_section(benchmarks: Path) -> Section:
    section = Section("The default data: real TEM panels vs the generator")
    figure = benchmarks / "generator_realism.png"
    if not figure.is_file():
        return section.add("missing", f"{figure.as_posix()} is missing: run scripts/generator_realism.py.")
    section.add("text", "The generator is calibrated on the paper's four real panels (noise, grain, contrast, "
                        "illumination; nanomorph.data.synthetic's docstring lists the statistics, "
                        f"{benchmarks.as_posix()}/generator_realism.json the values).")
    return section.add("figure", Figure(figure, "Real TEM panels (left) next to generated images of the class"))


def _stage_times_section(benchmarks: Path, profile: str) -> Section:
    """Time per stage of a fresh clone's `dvc repro`, from benchmarks/repro_stage_times.py's committed JSON (a
    stage cannot time its own pipeline without making the report differ from run to run)."""
    section = Section("Stage times (a fresh clone's dvc repro)")
    result = _read_json(benchmarks / "repro_stage_times.json")
    if not result:
        return section.add("missing", f"{benchmarks.as_posix()}/repro_stage_times.json is missing: run "
                                      "benchmarks/repro_stage_times.py.")
    measured, machine, m = result.get("params", {}), result.get("machine", {}), result.get("metrics", {})
    stages = m.get("stage_seconds", {})
    total = m.get("repro_seconds", float("nan"))
    other = "" if measured.get("profile") == profile else f" (not this report's profile, {profile})"
    commit = str(measured.get("commit", "?"))[:10]
    section.add("text", f"Profile {measured.get('profile', '?')}{other}, commit {commit}, "
                        f"{machine.get('cpus', '?')} CPUs ({machine.get('processor', '?')}), load average "
                        f"{machine.get('load_average_1min_start', '?')} at the start: {total / 60:.1f} min in all "
                        f"(target 15 min), of which {m.get('overhead_seconds', float('nan')):.0f} s is dvc and "
                        f"process start-up between stages; {len(m.get('outputs_differing', []))} of "
                        f"{m.get('outputs_compared', '?')} outputs differed from the committed dvc.lock.")
    # Whole seconds: a stage's time varies by more than a second from run to run.
    rows = pd.DataFrame({"stage": list(stages), "seconds": [round(v) for v in stages.values()],
                         "share of the repro": [f"{v / total:.0%}" for v in stages.values()]})
    return section.add("table", rows)


def _statistics_section(metrics_dir: Path) -> Section:
    section = Section("Statistics: paired tests of the probes")
    path = metrics_dir / "probe_stats.csv"
    if not path.is_file():
        return section.add("missing", "metrics/probe_stats.csv is missing: run the probe stage.")
    stats = pd.read_csv(path)
    section.add("text", "Wilcoxon signed-rank over the split seeds the methods share (each seed gives both methods "
                        "the same labelled and test images), Holm-corrected over every comparison in the table.")
    return section.add("table", stats[["n", "method_a", "method_b", "pairs", "median_a", "median_b",
                                       "median_difference", "p_holm"]])


def _anchor_section(metrics_dir: Path, out_dir: Path, paths: dict[str, Path]) -> Section:
    """The paper's anchor study (its Fig. 3): which one-shot probes fail, and whether anchor choice explains it."""
    section = Section("Anchor study: one labelled image per class (paper Fig. 3)")
    table_path = metrics_dir / "probe_anchor.csv"
    summary = _read_json(metrics_dir / "anchors.json")
    if not table_path.is_file() or not summary:
        return section.add("missing", "metrics/probe_anchor.csv or metrics/anchors.json is missing: run the anchors "
                                      "stage.")
    section.add("text", "Each one-shot probe is trained on one anchor image per class. Atypicality: the anchors' "
                        "mean distance to their class centre (1 = an ordinary member); inverted: the dispersed "
                        "anchor is denser than the network anchor. Spearman correlations of one-shot accuracy with "
                        "atypicality and with the network-minus-dispersed density gap; Mann-Whitney U of accuracy, "
                        "inverted vs ordered anchors (probes of one encoder share images, so read p as descriptive).")
    rows = pd.DataFrame([{"encoder": name, "probes": s["probes"], "inverted": s["inverted"],
                          "median acc. inverted": s["median_accuracy_inverted"],
                          "median acc. ordered": s["median_accuracy_ordered"], "Mann-Whitney p": s["mann_whitney_p"],
                          "rho (atypicality)": s["spearman_rho_atypicality"], "p (atypicality)": s["spearman_p"],
                          "rho (density gap)": s["spearman_rho_density_gap"],
                          "p (density gap)": s["spearman_p_density_gap"]} for name, s in summary.items()])
    section.add("table", rows)
    paths["anchor_plot"] = anchor_figure(pd.read_csv(table_path), out_dir / "anchor_study.png")
    return section.add("figure", Figure(paths["anchor_plot"], "One-shot accuracy vs anchor atypicality"))


def _advisor_section(metrics_dir: Path) -> Section:
    """The label-budget advisor (which images to label first) against labelling a random choice."""
    section = Section("Label-budget advisor: which images to label first")
    path = metrics_dir / "probe_advisor.csv"
    if not path.is_file():
        return section.add("missing", "metrics/probe_advisor.csv is missing: run the advisor stage.")
    advisor = pd.read_csv(path)
    section.add("text", "The advisor proposes k images to label (k-means on the unlabelled features, the image "
                        "nearest each centre); the probe trained on them is compared with probes trained on "
                        "random choices of k, over split seeds the sweep never uses (Wilcoxon signed-rank).")
    for name, rows in advisor.groupby("encoder", sort=False):
        wins = [bool(((rows["k"] == k) & (rows["wilcoxon_p"] < SIGNIFICANCE)
                      & (rows["advisor_minus_random"] > 0)).any()) for k in (4, 8)]
        verdict = ("beats random choice (p < 0.01) at k = 4 and 8" if all(wins) else
                   "does not beat random choice at both k = 4 and 8 (p < 0.01), so it is not part of the headline")
        section.add("text", f"{name}: the advisor {verdict}.")
    return section.add("table", advisor[["encoder", "k", "seeds", "advisor_accuracy", "random_accuracy",
                                         "advisor_minus_random", "advisor_wins", "wilcoxon_p"]])


def _pretraining_section(metrics_dir: Path, out_dir: Path, paths: dict[str, Path],
                         methods: tuple[str, ...]) -> Section:
    section = Section("Pretraining curves")
    histories = {m: metrics_dir / f"pretrain_{m}_history.csv" for m in methods}
    absent = [p.as_posix() for p in histories.values() if not p.is_file()]
    if absent:
        section.add("missing", f"{', '.join(absent)} missing: run the pretrain stage.")
    present = {m: pd.read_csv(p) for m, p in histories.items() if p.is_file()}
    if present:
        paths["pretraining_plot"] = pretraining_figure(present, out_dir / "pretraining.png")
        section.add("figure", Figure(paths["pretraining_plot"],
                                     "Pretraining loss and effective rank of the embeddings per epoch"))
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
        rows.append({"model": entry["name"], "version": entry["version"],
                     "registered": "new" if entry.get("registered", True) else "unchanged (not registered again)",
                     "recommended": entry["recommendation"], "metric": entry["metric"],
                     "score": float(entry["score"]), "previous champion": before, "decision": entry["reason"]})
    if rows:
        section.add("table", pd.DataFrame(rows))
    store = register.get("store")
    if store:
        section.add("text", f"Versions are those of the {store['kind']} at {store['uri']}. The register stage only "
                            "recommends: `champion` moves by `nanomorph promote MODEL --reason ...` (or the stage "
                            "with NANOMORPH_PROMOTE=1, as CI on main runs it), so an experiment never changes "
                            "what users load. Load the champion with mlflow.pyfunc.load_model('models:/<name>"
                            "@champion'), serve it with nanomorph serve, or apply it with nanomorph predict.")
    return section


def write_report(metrics_dir: Path, out_dir: Path, profile: str, probe_n: int,
                 figure_dirs: tuple[Path, Path] = FIGURE_DIRS, data_source: str = "synthetic",
                 benchmarks: Path = BENCHMARKS,
                 pretraining: tuple[tuple[str, ...], str] | None = None) -> dict[str, Path]:
    """Write metrics.json, the figures, report.md and report.html into `out_dir`; returns their paths.

    `figure_dirs` are the (probe, segment) folders whose PNGs are shown in their sections; `pretraining`, when
    given, is (methods, `pretrain.images`), named in the headline.
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
    paths["headline"] = out_dir / "headline.json"
    paths["headline"].write_text(json.dumps(terminal_headline(headline), indent=2, sort_keys=True) + "\n")

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
        _headline_section(metrics_dir, data_source, pretraining),
        _real_data_section(benchmarks),
        classification,
        _long_schedule_section(benchmarks),
        _statistics_section(metrics_dir),
        _anchor_section(metrics_dir, out_dir, paths),
        _advisor_section(metrics_dir),
        segmentation,
        _realism_section(benchmarks),
        _morphology_section(metrics_dir, out_dir, paths),
        *([_pretraining_section(metrics_dir, out_dir, paths, pretraining[0])] if pretraining else []),
        _registry_section(_read_json(metrics_dir / "register.json")),
        _stage_times_section(benchmarks, profile),
        _validation_section(headline["validate"]),
    ]
    title = f"nanomorph report (profile {profile})"
    paths["markdown"].write_text(_render_markdown(title, sections, out_dir))
    paths["html"].write_text(_render_html(title, sections))
    return paths
