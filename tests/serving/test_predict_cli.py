"""`nanomorph predict` on a folder with good and bad files, against the tiny registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pandas as pd
from PIL import Image

from nanomorph.cli import main
from nanomorph.predict import legend_height

from conftest import CLASSIFIER, SEGMENTER


def _folder_with_bad_files(tiny_registry, tmp_path):
    folder = tmp_path / "batch"
    (folder / "nested").mkdir(parents=True)
    for path in tiny_registry.files:
        (folder / "nested" / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"this is not a PNG")
    (folder / "empty.tif").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image: ignored when a folder is searched")
    return folder


def test_predict_classifies_segments_and_skips_bad_files(tiny_registry, tmp_path, capsys):
    folder = _folder_with_bad_files(tiny_registry, tmp_path)
    out = tmp_path / "out"
    code = main(["predict", str(folder), "--model", f"{CLASSIFIER}@champion", "--segmenter", f"{SEGMENTER}@champion",
                 "--out", str(out), "--tracking-uri", tiny_registry.tracking_uri, "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = pd.read_csv(out / "predictions.csv")
    assert sorted(table["file"].map(lambda f: f.split("/")[-1])) == sorted(p.name for p in tiny_registry.files)
    classes = [str(c) for c in tiny_registry.probe.classes_]
    assert {"class", "density", "percolates", "objects", "overlay", *(f"prob_{c}" for c in classes)} <= set(table)
    probs = table[[f"prob_{c}" for c in classes]]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=len(classes) * 5e-5)  # each rounded to 4 decimals
    np.testing.assert_array_equal(probs.to_numpy(), probs.to_numpy().round(4))
    for _, row in table.iterrows():
        overlay = np.asarray(Image.open(row["overlay"]))
        source = np.asarray(Image.open(row["file"]))
        height, width = source.shape[:2]
        assert overlay.shape == (height + legend_height(width, height), width, 3)  # the image, then its legend
        assert 0.0 <= row["density"] <= 1.0 and row["objects"] >= 0
    skipped = pd.read_csv(out / "skipped.csv").set_index("file")["reason"]
    assert {p.split("/")[-1] for p in skipped.index} == {"broken.png", "empty.tif"}
    assert "empty file" in skipped[str(folder / "empty.tif")]
    assert f"skipped {folder / 'broken.png'}:" in captured.err
    assert "3 of 5 images predicted" in captured.out


def test_predict_with_only_a_classifier_writes_no_segmentation(tiny_registry, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", str(tiny_registry.files[0]), "--model", CLASSIFIER, "--out", str(out),
                 "--tracking-uri", tiny_registry.tracking_uri, "--no-progress"]) == 0
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == 1 and "class" in table and "density" not in table
    assert not (out / "overlays").exists()


def test_unknown_model_is_one_line(tiny_registry, tmp_path, capsys):
    code = main(["predict", str(tiny_registry.files[0]), "--model", f"{CLASSIFIER}@nonexistent",
                 "--tracking-uri", tiny_registry.tracking_uri, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"nanomorph predict: error: model '{CLASSIFIER}@nonexistent' not found in the registry at "
                   f"{tiny_registry.tracking_uri} (run the register stage, or check the name and alias)"]


def test_predict_tiled_segments_at_native_resolution(tiny_registry, tmp_path):
    from nanomorph.data.io import read_image
    from nanomorph.segment.tiling import tiled_mask

    out = tmp_path / "out"
    path = tiny_registry.files[0]
    assert main(["predict", str(path), "--segmenter", SEGMENTER, "--tiled", "--out", str(out),
                 "--tracking-uri", tiny_registry.tracking_uri, "--no-progress"]) == 0
    row = pd.read_csv(out / "predictions.csv").iloc[0]
    expected = tiled_mask(tiny_registry.unet, read_image(path).astype(np.float32))
    assert row["density"] == pytest.approx(expected.mean(), abs=0.01)


def test_predict_with_the_classical_segmenter_needs_no_registry(tmp_path, capsys):
    """`--segmenter classical` thresholds at the image's own size; it finds a dark bar and says which method."""
    folder = tmp_path / "own"
    folder.mkdir()
    image = np.full((48, 80), 200, dtype=np.uint8)
    image[20:26, 5:75] = 40                       # one dark wire across the image
    Image.fromarray(image).save(folder / "wire.png")
    out = tmp_path / "out"
    code = main(["predict", str(folder), "--segmenter", "classical:otsu:darker", "--out", str(out),
                 "--tracking-uri", "sqlite:///does-not-exist.db", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "global Otsu, objects darker" in captured.err
    row = pd.read_csv(out / "predictions.csv").iloc[0]
    assert row["objects"] == 1 and row["density"] == round(6 * 70 / (48 * 80), 4)
    shown = np.asarray(Image.open(row["overlay"]))
    assert shown.shape == (48 + legend_height(80, 48), 80, 3)
    tinted = shown[20:26, 5:75].astype(int)        # the wire, tinted red in the image part
    assert (tinted[..., 0] > tinted[..., 1] + 20).all()
    assert (shown[:20, :, 0] == shown[:20, :, 1]).all()  # the background stays gray
    legend = shown[48:]
    assert (legend < 128).any() and (legend == 255).any()  # text and swatch drawn on a white strip


def test_predict_classical_spec_mistake_is_one_line(tmp_path, capsys):
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(tmp_path / "a.png")
    code = main(["predict", str(tmp_path / "a.png"), "--segmenter", "classical:watershed", "--out",
                 str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown part 'watershed'" in err[0]


def test_predict_skips_images_no_model_can_judge_and_survives_names_that_are_not_utf8(tiny_registry, tmp_path,
                                                                                    capsys):
    import os

    import tifffile

    folder = tmp_path / "batch"
    folder.mkdir()
    good = tiny_registry.files[0]
    odd = os.fsencode(folder) + b"/caf\xe9" + os.fsencode(good.suffix)  # a Latin-1 name, as old Windows tools write
    with open(odd, "wb") as f:
        f.write(good.read_bytes())
    Image.fromarray(np.full((1, 1), 128, np.uint8)).save(folder / "one_pixel.png")
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(folder / "blank.png")
    nan = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    nan[3, 3] = np.nan
    tifffile.imwrite(folder / "nan.tif", nan)
    out = tmp_path / "out"
    code = main(["predict", str(folder), "--model", f"{CLASSIFIER}@champion", "--segmenter", f"{SEGMENTER}@champion",
                 "--out", str(out), "--tracking-uri", tiny_registry.tracking_uri, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    table = pd.read_csv(out / "predictions.csv")
    assert table["file"].tolist() == [f"{folder}/caf%E9{good.suffix}"] and "prob_bundle" in table
    assert (out / "overlays" / "caf%E9.png").is_file()
    skipped = pd.read_csv(out / "skipped.csv").set_index("file")["reason"].to_dict()
    assert skipped == {
        f"{folder}/blank.png": "blank or near-constant: intensity std 0.0000 < 0.005",
        f"{folder}/nan.tif": "float image contains NaN or infinite values",
        f"{folder}/one_pixel.png": "1x1 px is below the 16 px minimum side; blank or near-constant: "
                                   "intensity std 0.0000 < 0.005",
    }


def _project_with_store(tiny_registry, tmp_path, monkeypatch) -> Path:
    """A project folder whose params.yaml names the tiny models and a copy of the tiny store, named relative to
    the project (a relative sqlite store is the project's); the working directory is tmp_path/elsewhere."""
    import yaml

    root = Path(__file__).resolve().parents[2]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["registry"].update({"classifier": CLASSIFIER, "segmenter": SEGMENTER})
    project = tmp_path / "project"
    project.mkdir()
    (project / "store.db").write_bytes((tiny_registry.root / "mlflow.db").read_bytes())
    params["tracking"]["tracking_uri"] = "sqlite:///store.db"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return project


def test_predict_takes_the_store_and_model_names_from_the_projects_params(tiny_registry, tmp_path, monkeypatch):
    project = _project_with_store(tiny_registry, tmp_path, monkeypatch)
    code = main(["predict", str(tiny_registry.files[0]), "--params", str(project / "params.yaml"), "--out", "out",
                 "--no-progress"])
    assert code == 0
    table = pd.read_csv(tmp_path / "elsewhere" / "out" / "predictions.csv")
    assert len(table) == 1 and {"class", "density"} <= set(table)  # both of the project's champions ran


def test_predict_flags_images_unlike_the_classifiers_training_images(tiny_registry, tmp_path, capsys):
    import tifffile

    folder = tmp_path / "batch"
    folder.mkdir()
    # One of the classifier's own training images, and a drawing that is no micrograph (grey stripes: it passes the
    # quality gate, which already skips saturated label images).
    tifffile.imwrite(folder / "training_image.tif", tiny_registry.images[0].astype(np.float32))
    stripes = 0.5 + 0.3 * np.sin(np.arange(64) / 2.0)[None, :] * np.ones((64, 1))
    Image.fromarray(np.round(stripes * 255).astype(np.uint8)).save(folder / "stripes.png")
    out = tmp_path / "out"
    code = main(["predict", str(folder), "--model", f"{CLASSIFIER}@champion", "--out", str(out),
                 "--tracking-uri", tiny_registry.tracking_uri, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    table = pd.read_csv(out / "predictions.csv").set_index("file")
    assert not table.loc[str(folder / "training_image.tif"), "out_of_distribution"]
    assert table.loc[str(folder / "stripes.png"), "out_of_distribution"]
    assert table.loc[str(folder / "stripes.png"), "atypicality"] > table.loc[str(folder / "training_image.tif"),
                                                                                  "atypicality"]
    warnings = [line for line in err.splitlines() if line.startswith("warning ")]
    assert len(warnings) == 1 and "stripes.png" in warnings[0] and "unreliable" in warnings[0]


def test_predict_skips_saturated_non_finite_and_undecodable_files_one_line_each(tmp_path, capsys):
    """The quality gate with no registry (classical segmenter): every file that cannot be judged is one stderr
    line and one skipped.csv row naming it and why; a float TIFF in [0, 1] is read as it is and predicted; an
    undecodable file whose name is not UTF-8 is shown with %XX; no input file is touched."""
    import os

    import tifffile

    folder = tmp_path / "batch"
    folder.mkdir()
    rng = np.random.default_rng(0)
    good = rng.uniform(0.2, 0.8, (48, 48)).astype(np.float32)
    tifffile.imwrite(folder / "float_good.tif", good)
    saturated = np.full((64, 64), 128, np.uint8)
    saturated[:48] = np.where(np.indices((48, 64)).sum(axis=0) % 2, 255, 0)  # 75 % of the pixels at 0 or 255
    Image.fromarray(saturated).save(folder / "saturated.png")
    tifffile.imwrite(folder / "all_nan.tif", np.full((32, 32), np.nan, np.float32))
    infinite = good.copy()
    infinite[0, 0] = np.inf
    tifffile.imwrite(folder / "infinite.tif", infinite)
    tifffile.imwrite(folder / "raw_counts.tif", np.linspace(0, 4000, 32 * 32, dtype=np.float32).reshape(32, 32))
    odd = os.fsencode(folder) + b"/bad\xff.png"
    with open(odd, "wb") as f:
        f.write(b"not an image at all")
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    out = tmp_path / "out"
    code = main(["predict", str(folder), "--segmenter", "classical", "--out", str(out),
                 "--tracking-uri", "sqlite:///does-not-exist.db", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = pd.read_csv(out / "predictions.csv")
    assert table["file"].tolist() == [f"{folder}/float_good.tif"]
    skipped = pd.read_csv(out / "skipped.csv").set_index("file")["reason"].to_dict()
    assert skipped == {
        f"{folder}/all_nan.tif": "float image contains NaN or infinite values",
        f"{folder}/bad%FF.png": "not a recognised image format (cannot identify the file)",
        f"{folder}/infinite.tif": "float image contains NaN or infinite values",
        f"{folder}/raw_counts.tif": "intensities must lie in [0, 1], got [0, 4000]; scale them first",
        f"{folder}/saturated.png": "saturated: 75.0% of pixels at 0 or 1 (> 50.0%)",
    }
    lines = [line for line in captured.err.splitlines() if line.startswith("skipped ")]
    assert sorted(lines) == sorted(f"skipped {file}: {reason}" for file, reason in skipped.items())
    assert "Traceback" not in captured.err and "\\udc" not in captured.err
    assert "1 of 6 images predicted" in captured.out and "5 skipped" in captured.out
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before  # nothing lost


def test_only_undecodable_files_are_skipped_an_error_in_a_model_stops_the_batch(tmp_path):
    """A model that fails is a bug, not a bad file: predict_files stops instead of listing every image as skipped."""
    from nanomorph.predict import classical_segmenter, predict_files

    class FailingClassifier:
        def predict(self, frame):
            raise RuntimeError("model bug")

    image = np.random.default_rng(0).integers(40, 220, (32, 32), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"not a PNG")
    run = predict_files([tmp_path / "broken.png", tmp_path / "a.png"], None, classical_segmenter("classical"),
                        tmp_path / "ok", progress=False)
    assert len(run.table) == 1 and run.skipped["file"].tolist() == [str(tmp_path / "broken.png")]
    with pytest.raises(RuntimeError, match="model bug"):
        predict_files([tmp_path / "a.png"], FailingClassifier(), None, tmp_path / "out", progress=False)


def test_predict_without_a_classifier_champion_says_how_to_segment_alone(tiny_registry, tmp_path, monkeypatch,
                                                                         capsys):
    import mlflow

    project = _project_with_store(tiny_registry, tmp_path, monkeypatch)
    # As after a register stage whose classifier did not beat the classical baseline: no classifier champion.
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'store.db'}").delete_registered_model_alias(
        CLASSIFIER, "champion")
    image, params = str(tiny_registry.files[0]), str(project / "params.yaml")
    assert main(["predict", image, "--params", params, "--out", "out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"model '{CLASSIFIER}@champion' not found" in err[0]
    assert err[0].endswith(f"name one (--segmenter {SEGMENTER}@champion) to use it alone")
    assert main(["predict", image, "--params", params, "--out", "out", "--segmenter", SEGMENTER]) == 0
    table = pd.read_csv("out/predictions.csv")
    assert "density" in table and "class" not in table


def test_predict_draws_no_progress_bars_when_stderr_is_not_a_terminal(tiny_registry, tmp_path, monkeypatch, capsys):
    # (set, then deleted: the variable is absent during the test and restored to absent after it)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    code = main(["predict", str(tiny_registry.files[0]), "--model", CLASSIFIER, "--segmenter", SEGMENTER,
                 "--out", str(tmp_path / "out"), "--tracking-uri", tiny_registry.tracking_uri])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "%|" not in err and "\r" not in err  # neither ours nor MLflow's artifact download bars
