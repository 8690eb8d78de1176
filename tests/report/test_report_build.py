import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nanomorph.report.build import write_report
from nanomorph.report.gallery import caption_from_name, collect_figures

ROOT = Path(__file__).resolve().parents[2]
BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def _png(path: Path, colour: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 30, 3), colour, dtype=np.uint8)).save(path)
    return path


def _metrics(tmp_path: Path, with_optional: bool = True) -> Path:
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    rng = np.random.default_rng(0)
    # The linear probe scores 0.5-0.9, its k-NN baseline 0.0-0.1: the headline must show the linear probe only.
    # Baselines are named like the probe stage names them: encoder 'simclr+knn', classifier 'knn'.
    pd.DataFrame([{"encoder": e if c == "linear" else f"{e}+{c}", "classifier": c, "split_seed": s, "n": n,
                   "accuracy": rng.uniform(0.5, 0.9) if c == "linear" else rng.uniform(0.0, 0.1)}
                  for e in ("simclr", "random") for c in ("linear", "knn") for s in range(3) for n in (1, 8)]
                 ).to_csv(metrics / "probe_results.csv", index=False)
    pd.DataFrame([{"encoder": e, "seed": 0, "n": n, "image_index": i, "dice": rng.uniform(), "iou": rng.uniform()}
                  for e in ("simclr", "random") for n in (1, 4) for i in range(4)]
                 ).to_csv(metrics / "segment_results.csv", index=False)
    if with_optional:
        (metrics / "validate.json").write_text(json.dumps({"files": 784, "quarantined": 3, "nanowire_ok": 397}))
        (metrics / "analyse.json").write_text(json.dumps({
            "percolation_agreement_true_masks": 0.95, "generator_self_check": True, "median_density": {"network": 0.2, "dispersed": 0.04},
            "percolating_share": {"network": 0.9, "dispersed": 0.0}}))
        pd.DataFrame({"image": ["a", "b", "c", "d"], "label": ["network", "network", "dispersed", "dispersed"],
                      "density": [0.2, 0.22, 0.04, 0.05], "percolates": [True, False, False, False]}
                     ).to_csv(metrics / "morphology.csv", index=False)
        pd.DataFrame([{"n": 1, "method_a": "simclr", "method_b": "random", "pairs": 3, "median_a": 0.7,
                       "median_b": 0.5, "median_difference": 0.2, "W": 0.0, "p": 0.002, "p_holm": 0.004}]
                     ).to_csv(metrics / "probe_stats.csv", index=False)
        pd.DataFrame([{"encoder": e, "split_seed": s, "accuracy": rng.uniform(0.3, 0.8), "atypicality": rng.uniform(0.5, 2),
                       "inverted": s % 3 == 0} for e in ("simclr", "random") for s in range(6)]
                     ).to_csv(metrics / "probe_anchor.csv", index=False)
        anchors = {"probes": 6, "inverted": 2, "median_accuracy_inverted": 0.41, "median_accuracy_ordered": 0.62,
                   "mann_whitney_p": 0.2, "spearman_rho_atypicality": -0.42, "spearman_p": 0.03,
                   "spearman_rho_density_gap": 0.3, "spearman_p_density_gap": 0.1}
        (metrics / "anchors.json").write_text(json.dumps({"simclr": anchors, "random": anchors}))
        # simclr's advisor wins at k = 4 and 8; random's only at k = 4.
        pd.DataFrame([{"encoder": e, "encoder_seed": 0, "k": k, "seeds": 20, "advisor_accuracy": 0.7,
                       "random_accuracy": 0.6, "advisor_minus_random": 0.1, "advisor_wins": 18,
                       "wilcoxon_p": 0.001 if (e == "simclr" or k == 4) else 0.2}
                      for e in ("simclr", "random") for k in (4, 8)]).to_csv(metrics / "probe_advisor.csv", index=False)
        pd.DataFrame({"epoch": [1, 2, 3], "loss": [4.1, 3.5, 3.2], "lr": [0.1, 0.1, 0.05],
                      "embedding_std": [0.02, 0.03, 0.03], "effective_rank": [170.0, 120.0, 110.0]}
                     ).to_csv(metrics / "pretrain_simclr_history.csv", index=False)
        entry = {"recommendation": "challenger", "registered": True, "metric": "accuracy",
                 "name": "nanomorph-classifier", "version": "2",
                 "score": 0.61, "previous_champion": {"version": "1", "score": 0.64},
                 "reason": "does not beat the champion by more than the margin"}
        (metrics / "register.json").write_text(json.dumps({
            "classifier": entry, "encoder_choice": {"encoder": "simclr", "cv_folds": 5,
                                                    "cv_accuracy": {"simclr": 0.6, "barlow_twins": 0.5}},
            "eval_split": {"fraction": 0.2, "seed": 1, "hash": "abc123"},
            "store": {"uri": "sqlite:///mlflow.db", "kind": "local store of this checkout"}}))
    return metrics


def test_report_inlines_every_figure_and_shows_every_result(tmp_path):
    metrics = _metrics(tmp_path)
    tsne = _png(tmp_path / "figures/probe/tsne_simclr.png", (10, 200, 10))
    overlay = _png(tmp_path / "figures/segment/examples/overlay_network-000.png", (200, 10, 10))
    out = tmp_path / "reports"
    paths = write_report(metrics, out, "micro", 8, (tmp_path / "figures/probe", tmp_path / "figures/segment"),
                         benchmarks=tmp_path / "benchmarks", pretraining=(("simclr",), "task"))

    page = paths["html"].read_text()
    sources = re.findall(r'<img alt="[^"]*" src="([^"]+)"', page)
    assert len(sources) == 7  # 2 box plots, anchor study, morphology, pretraining curves, t-SNE, overlay
    assert all(s.startswith("data:image/png;base64,") for s in sources)  # self-contained
    inlined = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
    assert {tsne.read_bytes(), overlay.read_bytes(), paths["morphology_plot"].read_bytes(),
            paths["anchor_plot"].read_bytes(), paths["pretraining_plot"].read_bytes()} <= inlined
    assert page.count('<input type="checkbox" class="zoom">') == 7  # every figure can be enlarged
    for text in ("t-SNE SimCLR", "Overlay network 000", "Data validation", "784", "95.0%",
                 "nanomorph-classifier", "challenger", "v1 (0.640)", "does not beat the champion", "abc123", "local store of this checkout", "nanomorph promote",
                 "Deployed encoder: simclr", "Statistics: paired tests", "Holm", "Anchor study", "-0.420",
                 "Pretraining curves", "simclr: the advisor beats random choice (p &lt; 0.01) at k = 4 and 8",
                 "random: the advisor does not beat random choice"):
        assert text in page, text
    assert "<script" not in page and "http://" not in page and "https://" not in page

    markdown = paths["markdown"].read_text()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (out / link).resolve().is_file(), link
    assert "../figures/probe/tsne_simclr.png" in markdown

    headline = json.loads(paths["metrics"].read_text())
    assert set(headline["probe"]["median_accuracy"]) == {"simclr", "random"}
    assert all(0.5 <= v <= 0.9 for v in headline["probe"]["median_accuracy"].values())
    assert "| n | random | random+knn | simclr | simclr+knn |" in markdown  # baselines tabled under their names
    assert headline["registry"]["classifier"] == {"name": "nanomorph-classifier", "version": "2",
                                                  "recommendation": "challenger", "metric": "accuracy", "score": 0.61}
    assert headline["validate"]["quarantined"] == 3
    # dvc's only metrics file: the headline numbers, short keys, three decimals (`dvc metrics show` fits a terminal).
    short = json.loads(paths["headline"].read_text())
    assert short == {"acc_n8": {m: round(v, 3) for m, v in headline["probe"]["median_accuracy"].items()},
                     f"dice_n{headline['segment']['train_images']}": {
                         m: round(v, 3) for m, v in headline["segment"]["median_dice"].items()}}


def test_missing_inputs_are_named_in_the_report(tmp_path):
    metrics = _metrics(tmp_path, with_optional=False)
    paths = write_report(metrics, tmp_path / "reports", "micro", 8, (tmp_path / "none1", tmp_path / "none2"),
                         benchmarks=tmp_path / "benchmarks")
    page = paths["html"].read_text()
    for text in ("metrics/validate.json is missing", "metrics/analyse.json is missing",
                 "metrics/morphology.csv is missing", "metrics/register.json is missing",
                 "metrics/probe_stats.csv is missing", "metrics/probe_advisor.csv is missing",
                 "metrics/anchors.json is missing", "No figures under",
                 "repro_stage_times.json is missing"):
        assert text in page, text
    assert "morphology_plot" not in paths
    assert json.loads(paths["metrics"].read_text())["registry"] == {}


def test_captions_from_file_names(tmp_path):
    assert caption_from_name("tsne_simclr-n80.png") == "t-SNE SimCLR n80"
    assert caption_from_name("dice_vs_train_size.png") == "Dice vs train size"
    assert caption_from_name("confusion_barlow_twins.png") == "Confusion Barlow Twins"
    _png(tmp_path / "b.png", (0, 0, 0))
    _png(tmp_path / "sub/a.png", (0, 0, 0))
    (tmp_path / "notes.txt").write_text("x")
    assert [f.path.name for f in collect_figures(tmp_path)] == ["b.png", "a.png"]  # sorted by path
    assert collect_figures(tmp_path / "absent") == []


@pytest.mark.skipif(BROWSER is None, reason="no chromium/chrome installed (Debian: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    _png(tmp_path / "figures/probe/tsne_simclr.png", (10, 200, 10))
    paths = write_report(_metrics(tmp_path), tmp_path / "reports", "micro", 8,
                         (tmp_path / "figures/probe", tmp_path / "figures/segment"), benchmarks=tmp_path / "none",
                         pretraining=(("simclr",), "task"))
    shot = tmp_path / "shot.png"
    done = subprocess.run([sys.executable, str(ROOT / "scripts/render_report.py"), str(paths["html"]),
                           "--out", str(shot), "--height", "1500"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr  # also: no console message, no resource that failed to load
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (1500, 1200, 3)
    # Rendered content: dark text pixels and the coloured box plots, not just a white page.
    assert (pixels.sum(axis=2) < 150).mean() > 0.001
    assert (np.ptp(pixels, axis=2) > 60).mean() > 0.001

    # A broken image is caught: the same page with one image's data cut short.
    page = paths["html"].read_text()
    broken = tmp_path / "reports" / "broken.html"
    broken.write_text(page.replace('src="data:image/png;base64,', 'src="missing.png" data-x="', 1))
    done = subprocess.run([sys.executable, str(ROOT / "scripts/render_report.py"), str(broken), "--out",
                           str(tmp_path / "broken.png"), "--height", "600"], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 2 and "problem" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_headline_puts_learned_beside_classical_random_and_the_paper(tmp_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    accuracy = {"barlow_twins": 0.8, "random": 0.5, "classical": 0.6}
    pd.DataFrame([{"encoder": e, "classifier": "linear", "split_seed": s, "n": n, "accuracy": a + 0.01 * s}
                  for e, a in accuracy.items() for s in range(12) for n in (1, 8)]
                 ).to_csv(metrics / "probe_results.csv", index=False)
    # Holm-corrected tests: barlow_twins beats both baselines at n=8, only random at n=1.
    tests = [{"n": 8, "method": "barlow_twins", "baseline": b, "median_difference": 0.2, "p": 1e-4, "p_holm": 4e-4}
             for b in ("random", "classical")]
    tests += [{"n": 1, "method": "barlow_twins", "baseline": "random", "median_difference": 0.3, "p": 1e-4,
               "p_holm": 4e-4},
              {"n": 1, "method": "barlow_twins", "baseline": "classical", "median_difference": 0.2, "p": 0.02,
               "p_holm": 0.04}]
    (metrics / "probe.json").write_text(json.dumps({"headline_tests": tests}))
    pd.DataFrame([{"encoder": e, "seed": 0, "n": n, "image_index": i, "dice": d, "iou": d / 2}
                  for e, d in (("barlow_twins", 0.7), ("random", 0.4), ("otsu", 0.5)) for n in (1, 8)
                  for i in range(4)]).to_csv(metrics / "segment_results.csv", index=False)
    (metrics / "segment.json").write_text(json.dumps({
        "classical": ["otsu"], "image_size": 64, "headline_tests": [],
        "best": {"encoder": "barlow_twins", "n": 8},
        "percolation": {"agreement_predicted": 0.7, "agreement_true": 1.0, "images": 40},
        "classical_downstream": {"method": "otsu", "percolation": {"agreement_predicted": 0.55}}}))
    (metrics / "analyse.json").write_text(json.dumps({"percolation_agreement_true_masks": 1.0,
                                                      "generator_self_check": True}))
    paths = write_report(metrics, tmp_path / "reports", "micro", 8,
                         (tmp_path / "figures/probe", tmp_path / "figures/segment"), benchmarks=tmp_path / "benchmarks")
    page = paths["markdown"].read_text()
    headline = page[page.index("## Headline"):page.index("## Few-shot classification")]
    assert "synthetic" in headline and "random-init" in headline and "classical" in headline
    assert "| labels/class | barlow_twins | random | classical | paper (BT, TEM) |" in headline
    assert "0.90" in headline and "0.74" in headline                     # the paper's numbers beside ours
    assert "barlow_twins: beats both baselines (Holm p < 0.01) at labels/class 8 of n <= 8." in headline
    assert "with no training images" in headline                          # no segmentation test passed
    assert "PREDICTED masks" in headline and "70.0%" in headline and "55.0%" in headline
    assert "generator self-check" in headline
    assert json.loads(paths["metrics"].read_text())["percolation_agreement"] == 0.7


def test_real_data_section_shows_the_benchmark_beside_its_classical_baseline(tmp_path):
    metrics = _metrics(tmp_path)
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "segment_real.json").write_text(json.dumps({
        "data": {"pairs": 366, "source": "emps", "train": 255, "validation": 37, "test": 74},
        "table": {"real_barlow_twins": {"n4": {"dice_median": 0.61}, "n8": {"dice_median": 0.66}},
                  "otsu": {"n4": {"dice_median": 0.58}, "n8": {"dice_median": 0.59}}},
        "paired_tests_vs_classical": [{"n": 4, "method_a": "real_barlow_twins", "method_b": "otsu",
                                       "median_difference": 0.03, "p": 0.01, "p_holm": 0.02}]}))
    paths = write_report(metrics, tmp_path / "reports", "micro", 8, (tmp_path / "a", tmp_path / "b"), benchmarks=bench)
    page = paths["markdown"].read_text()
    section = page[page.index("## Real EM images"):]
    assert "366 real images" in section and "| training images | real_barlow_twins | otsu |" in section
    assert "| 4 | 0.610 | 0.580 |" in section and "0.020" in section
    assert "generator_realism.png is missing" in page      # no figure in this benchmarks folder: said, not hidden


def test_stage_times_come_from_the_committed_benchmark_and_name_its_profile(tmp_path):
    metrics = _metrics(tmp_path)
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "repro_stage_times.json").write_text(json.dumps({
        "params": {"profile": "cpu", "commit": "0123456789abcdef"},
        "machine": {"cpus": 2, "processor": "x86_64", "load_average_1min_start": 0.1},
        "metrics": {"repro_seconds": 600.0, "stage_seconds": {"fetch": 20.0, "pretrain-simclr": 239.6},
                    "overhead_seconds": 40.0, "outputs_compared": 30, "outputs_differing": []}}))
    for profile, foreign in (("cpu", False), ("micro", True)):
        paths = write_report(metrics, tmp_path / profile, profile, 8, (tmp_path / "a", tmp_path / "b"), benchmarks=bench)
        page = paths["markdown"].read_text()
        section = page[page.index("## Stage times"):]
        assert "Profile cpu" in section and "commit 0123456789" in section and "10.0 min in all" in section
        assert "| pretrain-simclr | 240 | 40% |" in section, section  # whole seconds
        assert "0 of 30 outputs differed" in section
        assert ("not this report's profile, micro" in section) == foreign


def test_headline_names_what_the_encoders_were_pretrained_on(tmp_path):
    metrics = _metrics(tmp_path)
    paths = write_report(metrics, tmp_path / "reports", "micro", 8, (tmp_path / "a", tmp_path / "b"),
                         benchmarks=tmp_path / "benchmarks", pretraining=(("simclr",), "task"))
    markdown = paths["markdown"].read_text()
    headline = markdown.split("## ", 2)[1]
    assert "Pretrained encoders (simclr) learned self-supervised from the task's own nanowire images" in headline
    assert "(pretrain.images: task)" in headline
    unnamed = write_report(metrics, tmp_path / "plain", "micro", 8, (tmp_path / "a", tmp_path / "b"),
                           benchmarks=tmp_path / "benchmarks")["markdown"].read_text()
    assert "Pretrained encoders" not in unnamed


def test_long_schedule_section_shows_the_benchmark_beside_both_baselines(tmp_path):
    metrics = _metrics(tmp_path)
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    paths = write_report(metrics, tmp_path / "none", "micro", 8, (tmp_path / "a", tmp_path / "b"), benchmarks=bench)
    assert "long_schedule_probe.json is missing" in paths["markdown"].read_text()   # said, not hidden
    (bench / "long_schedule_probe.json").write_text(json.dumps({
        "params": {"epochs": 200, "images": 400, "view_size": 64, "generator_seed": 0, "split_seeds": "0-19"},
        "pretrain": {"seconds_this_process": 1800}, "machine": {"cpus": 2},
        "median_accuracy": {"simclr_e200@128": {"1": 0.8, "8": 0.9}, "classical@64": {"1": 0.525, "8": 0.725}},
        "paired_tests": [{"n": 8, "method_a": "simclr_e200@128", "method_b": "classical@64",
                          "median_difference": 0.175, "p": 0.0001, "p_holm": 0.0008}]}))
    paths = write_report(metrics, tmp_path / "reports", "micro", 8, (tmp_path / "a", tmp_path / "b"), benchmarks=bench)
    page = paths["markdown"].read_text()
    section = page[page.index("## Longer pretraining"):]
    assert "200 epochs" in section and "seed 0" in section and "1000-1019" in section
    assert "| labels/class | simclr_e200@128 | classical@64 |" in section
    assert "| 8 | 0.900 | 0.725 |" in section and "0.175" in section and "0.001" in section
