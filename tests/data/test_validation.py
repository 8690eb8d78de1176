"""The validate checks on real bad files: each is quarantined with a reason and every good file still passes."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nanomorph.data.layout import Sample
from nanomorph.data.validation import Thresholds, build_manifest, quarantine_of, require_classes
from nanomorph.errors import NanomorphError

LIMITS = Thresholds(min_side=16, max_side=4096, min_std=0.005, max_saturated_fraction=0.5)


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    good = _png(tmp_path / "good.png", rng.integers(40, 220, (32, 32), dtype=np.uint8))
    other = _png(tmp_path / "other.png", rng.integers(40, 220, (32, 32), dtype=np.uint8))
    (tmp_path / "copy.png").write_bytes(good.read_bytes())
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image at all")
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:60])
    _png(tmp_path / "flat.png", np.full((32, 32), 128, np.uint8))
    _png(tmp_path / "tiny.png", rng.integers(0, 255, (1, 1), dtype=np.uint8))
    _png(tmp_path / "white.png", np.where(rng.random((32, 32)) < 0.9, 255, 100).astype(np.uint8))
    _png(tmp_path / "mask_small.png", np.zeros((16, 16), np.uint8))
    _png(tmp_path / "mask_ok.png", (rng.random((32, 32)) < 0.2).astype(np.uint8) * 255)
    return tmp_path, good, other


def test_bad_files_are_quarantined_with_reasons(files):
    root, good, other = files
    nanowires = [Sample(good, root / "mask_ok.png", "a"), Sample(other, root / "mask_small.png", "b")]
    generic = [root / n for n in ("copy.png", "empty.png", "text.png", "truncated.png", "flat.png", "tiny.png",
                                  "white.png")]
    manifest = build_manifest(nanowires, generic, LIMITS)
    assert len(manifest) == 9, "every file gets a manifest row"
    status = dict(zip(manifest["path"].map(lambda p: Path(p).name), manifest["status"]))
    assert status["good.png"] == "ok"
    assert status["other.png"] == "mask_size"
    assert status["copy.png"] == "duplicate"
    assert status["empty.png"] == status["text.png"] == status["truncated.png"] == "decodable"
    assert status["flat.png"] == "near_constant"
    assert "size" in status["tiny.png"].split(";")
    assert status["white.png"] == "saturated"
    quarantine = quarantine_of(manifest)
    assert len(quarantine) == 8 and quarantine["reason"].str.len().min() > 0
    empty_reason = quarantine.set_index("path").loc[str(root / "empty.png"), "reason"]
    assert "empty.png" in empty_reason
    assert all((root / n).exists() for n in status), "raw files are never moved or deleted"


def test_a_class_left_without_images_is_critical(files):
    root, good, other = files
    manifest = build_manifest([Sample(good, None, "a"), Sample(root / "flat.png", None, "b")], [], LIMITS)
    require_classes(manifest, ["a"])
    with pytest.raises(NanomorphError, match="class\\(es\\) b"):
        require_classes(manifest, ["a", "b"])


def test_real_em_images_pass_the_checks(shared_data):
    """The real CEM500K-style patches and EMPS images decode and pass every check (they are good data)."""
    from nanomorph.data.layout import find_images

    cem = find_images(shared_data / "cem500k-examples" / "images")
    emps = find_images(shared_data / "emps" / "images")[:20]
    manifest = build_manifest([], [*cem, *emps], LIMITS)
    assert len(manifest) == len(cem) + len(emps) > 20
    bad = manifest[manifest["status"] != "ok"]
    assert bad.empty, bad[["path", "status", "reason"]].to_string()
