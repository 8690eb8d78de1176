"""The fetch and validate stages end to end, offline: Zenodo and CEM500K imitated by a local HTTP server."""

import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from nanomorph.stages import fetch, validate

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("bundle", "dispersed", "network", "singular")


def _tif(seed: int) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.random.default_rng(seed).integers(3000, 60000, (32, 32), dtype=np.uint16))
    return buffer.getvalue()


def _png(seed: int, size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(20, 230, size, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def project(tmp_path, monkeypatch, tracking):
    """A scratch project (micro profile) in its own folder, tracked to a throwaway MLflow store."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "micro"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)

    def write(**data_changes):
        params["data"].update(data_changes)
        params["data"]["http"] = {"retries": 3, "backoff_s": 0.01, "timeout_s": 10}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return tmp_path

    return write


def test_zenodo_and_cem500k_sources_through_fetch_and_validate(project, server, publish_record, capsys):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for k, name in enumerate(CLASSES):
            for i in range(3):
                z.writestr(f"nanowires/{name}/{name}_{i}.tif", _tif(10 * k + i))
        z.writestr("nanowires/README.txt", b"about")
    api = publish_record("6377141", {"nanowires.zip": archive.getvalue()}, scripts={"nanowires.zip": ["503", "drop"]})
    lines = []
    for i in range(40):
        body = _png(100 + i)
        server.add(f"/cem/p{i:03d}.png", body)
        lines.append(f"p{i:03d}.png md5:{hashlib.md5(body).hexdigest()}")
    listing = server.add("/cem/listing.txt", "\n".join(lines).encode())
    work = project(source="zenodo", generic_source="cem500k",
                   zenodo={"api_url": api, "record": 6377141, "files": ["*.zip"], "image_suffixes": [".tif"],
                           "mask_suffixes": [".png"]},
                   cem500k={"url": listing, "checksum": None})

    assert fetch.main([]) == 0
    counts = json.loads((work / "metrics" / "fetch.json").read_text())
    assert (counts["nanowire_images"], counts["generic_images"], counts["unplaced"]) == (12, 32, 1)
    with open(work / "metrics" / "fetch_files.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["reason"] for r in rows if r["status"] == "unplaced"] == [
        "not inside a class folder (one of bundle, dispersed, network, singular)"]
    assert sorted(p.name for p in (work / "data" / "raw" / "nanowires" / "network" / "images").iterdir()) == [
        "network_0.tif", "network_1.tif", "network_2.tif"]

    assert validate.main([]) == 0
    summary = json.loads((work / "metrics" / "validate.json").read_text())
    assert (summary["files"], summary["quarantined"], summary["nanowire_ok"], summary["generic_ok"]) == (44, 0, 12, 32)
    assert (work / "reports" / "data_docs" / "index.html").is_file()
    assert "data docs: reports/data_docs/index.html" in capsys.readouterr().out


def test_folder_source_with_bad_files_quarantines_them_and_fails_on_a_missing_class(project, tmp_path, capsys):
    source = tmp_path / "lab_images"
    for k, name in enumerate(("bundle", "dispersed", "network")):
        for i in range(3):
            (source / name).mkdir(parents=True, exist_ok=True)
            (source / name / f"{name}{i}.png").write_bytes(_png(10 * k + i))
    (source / "bundle" / "broken.png").write_bytes(_png(99)[:100])
    (source / "singular").mkdir()
    work = project(source="folder", generic_source="synthetic",
                   folder={**yaml.safe_load((ROOT / "params.yaml").read_text())["data"]["folder"],
                           "nanowire_root": str(source)})
    assert fetch.main([]) == 0
    err = capsys.readouterr().err
    assert "fetch: empty " in err and "no images found for class 'singular'" in err

    assert validate.main([]) == 2, "a class without images is critical"
    err = capsys.readouterr().err
    assert "quarantined data/raw/nanowires/bundle/images/broken.png: decodable: " in err
    assert ("nanomorph validate: error: critical data checks failed: classes_present (1 failing): "
            "class 'singular' has no usable images") in err
    with open(work / "data" / "validated" / "quarantine.csv", newline="") as handle:
        quarantined = list(csv.DictReader(handle))
    assert [(Path(r["path"]).name, r["status"]) for r in quarantined] == [("broken.png", "decodable")]
    assert (source / "bundle" / "broken.png").exists()


def test_the_same_image_in_two_class_folders_is_quarantined_twice_as_a_label_conflict(project, tmp_path, capsys):
    """Through fetch (folder source) and validate: both copies are listed in quarantine.csv as a label conflict,
    each with one stderr line naming it; the source files and their fetched copies all stay on disk."""
    source = tmp_path / "lab_images"
    for k, name in enumerate(CLASSES):
        (source / name).mkdir(parents=True)
        for i in range(3):
            (source / name / f"{name}{i}.png").write_bytes(_png(10 * k + i))
    twin = _png(999)
    (source / "bundle" / "twin.png").write_bytes(twin)
    (source / "network" / "twin_copy.png").write_bytes(twin)
    work = project(source="folder", generic_source="synthetic",
                   folder={**yaml.safe_load((ROOT / "params.yaml").read_text())["data"]["folder"],
                           "nanowire_root": str(source)})
    assert fetch.main([]) == 0
    capsys.readouterr()

    assert validate.main([]) == 0  # a conflict quarantines; only classes_present is critical
    err = capsys.readouterr().err
    raw = Path("data/raw/nanowires")
    copies = [raw / "bundle" / "images" / "twin.png", raw / "network" / "images" / "twin_copy.png"]
    with open(work / "data" / "validated" / "quarantine.csv", newline="") as handle:
        quarantined = {row["path"]: row for row in csv.DictReader(handle)}
    assert sorted(quarantined) == sorted(map(str, copies))
    for path in copies:
        row = quarantined[str(path)]
        assert "label_conflict" in row["status"].split(";")
        assert ("label conflict: the same bytes (sha256) are labelled bundle, network in different files; every "
                "copy is quarantined") in row["reason"] and "\n" not in row["reason"]
        assert sum(line.startswith(f"quarantined {path}: ") for line in err.splitlines()) == 1
        assert (work / path).read_bytes() == twin                               # the fetched copy
    assert (source / "bundle" / "twin.png").read_bytes() == twin                # and the lab's own files
    assert (source / "network" / "twin_copy.png").read_bytes() == twin
    summary = json.loads((work / "metrics" / "validate.json").read_text())
    assert summary["quarantined"] == 2 and summary["nanowire_ok"] == 12
