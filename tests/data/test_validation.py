"""The validate checks on real bad files: each is quarantined with a clear reason and every other file passes."""

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nanomorph.data.expectations import CHECK_NAMES, Rules, check_rules, validate_manifest
from nanomorph.data.layout import find_images, scan_nanowire_dataset
from nanomorph.data.validation import build_manifest, dhash, dihedral_dhashes
from nanomorph.errors import ConfigError

CLASSES = ("bundle", "dispersed", "network", "singular")
RULES = Rules(min_side=16, max_side=4096, min_std=0.005, max_saturated_fraction=0.5, min_class_ratio=0.25)


def noise(seed, shape=(32, 32), dtype=np.uint8, low=40, high=220):
    return np.random.default_rng(seed).integers(low, high, shape, dtype=dtype)


def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path, **kwargs)
    return path


def png_claiming(width, height) -> bytes:
    """A well-formed PNG header claiming width x height, followed by a few bytes of pixel data only."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


def zenodo_label(gray: np.ndarray) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rgb[10:14] = (0, 255, 0)
    return rgb


@pytest.fixture
def dataset(tmp_path):
    """A canonical nanowire tree and a generic folder holding one of every kind of bad input, and good ones."""
    nw, gen = tmp_path / "nanowires", tmp_path / "generic"
    b = nw / "bundle"
    sixteen = noise(1, dtype=np.uint16, low=5000, high=60000)
    save(b / "images" / "good16.tif", sixteen)                                   # 16-bit TIFF
    save(b / "labels" / "good16.png", zenodo_label((sixteen // 257).astype(np.uint8)))
    rgba = np.dstack([noise(2), noise(3), noise(4), np.full((32, 32), 200, np.uint8)])
    save(b / "images" / "rgba.png", rgba)                                        # RGBA
    save(b / "images" / "mask_small.png", noise(5))
    save(b / "labels" / "mask_small.png", np.zeros((16, 16), np.uint8))          # mask size mismatch
    save(b / "images" / "gray_mask.png", noise(6))
    save(b / "labels" / "gray_mask.png", np.tile(np.array([0, 128, 255], np.uint8), (32, 11))[:, :32])
    save(b / "images" / "empty_mask.png", noise(7))
    (b / "labels" / "empty_mask.png").write_bytes(b"")
    n1 = noise(8)
    save(nw / "network" / "images" / "n1.png", n1)
    rotated = np.clip(np.rot90(n1).astype(int) + noise(9, low=0, high=3), 0, 255).astype(np.uint8)
    save(nw / "network" / "images" / "n1_rotated.png", rotated)                  # near-duplicate, no split
    save(nw / "network" / "images" / "n2.png", noise(10))
    d = save(nw / "dispersed" / "images" / "d1_train.png", noise(11))
    (nw / "dispersed" / "images" / "d2_test.png").write_bytes(d.read_bytes())    # duplicate across splits
    save(nw / "dispersed" / "images" / "d3_other.png", noise(12))
    (nw / "splits.csv").write_text("image,split\ndispersed/images/d1_train.png,train\n"
                                   "dispersed/images/d2_test.png,test\ndispersed/images/d3_other.png,train\n")
    (nw / "singular" / "images").mkdir(parents=True)                             # empty class folder

    (gen).mkdir()
    (gen / "zero.png").write_bytes(b"")                                           # zero-byte file
    good_png = io.BytesIO()
    Image.fromarray(noise(13, (64, 64))).save(good_png, format="PNG")
    (gen / "truncated.png").write_bytes(good_png.getvalue()[:200])               # truncated PNG
    (gen / "text.png").write_text("these are not pixels\n" * 20)                 # text renamed .png
    save(gen / "one_pixel.png", np.array([[128]], np.uint8))                     # 1x1 image
    (gen / "bomb.png").write_bytes(png_claiming(50_000, 50_000))                 # header claims 50000x50000
    save(gen / "flat.png", np.full((32, 32), 128, np.uint8))
    save(gen / "white.png", np.where(noise(14) > 60, 255, 100).astype(np.uint8))
    save(gen / "levels.png", noise(15, low=0, high=4) * 60)
    Image.fromarray(noise(16, low=0, high=200)).convert("RGB").quantize(16).save(gen / "indexed.png")
    save(gen / "photo.jpg", noise(17, (40, 48)), quality=90)
    save(gen / "gen16.tif", noise(18, dtype=np.uint16, low=0, high=65535))
    with open(os.fsencode(str(gen)) + b"/caf\xe9.png", "wb") as handle:          # non-UTF-8 file name (bytes)
        handle.write(good_png.getvalue())
    return nw, gen


def _hashes(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_every_bad_input_gets_a_clear_reason_and_every_other_file_passes(dataset, tmp_path):
    nw, gen = dataset
    before = {**_hashes(nw), **_hashes(gen)}
    samples, empty = scan_nanowire_dataset(nw, CLASSES)
    assert empty == ["singular"]
    manifest = build_manifest(samples, find_images(gen))
    outcome = validate_manifest(manifest, CLASSES, RULES, docs_dir=tmp_path / "docs")
    judged = outcome.manifest
    assert len(judged) == 11 + 12, "one manifest row per image file"
    rows = {Path(p).name: row for p, row in zip(judged["path"], judged.to_dict("records"))}
    status = {name: row["status"] for name, row in rows.items()}
    reason = {name: row["reason"] for name, row in rows.items()}
    g = str(gen)

    assert reason["zero.png"] == f"{g}/zero.png: empty file (0 bytes)"
    assert reason["truncated.png"].startswith(f"{g}/truncated.png: truncated or corrupt image data (")
    assert reason["text.png"] == f"{g}/text.png: not a recognised image format (cannot identify the file)"
    assert reason["bomb.png"].startswith(f"{g}/bomb.png: image too large to decode safely (possible decompression bomb")
    assert status["zero.png"] == status["truncated.png"] == status["text.png"] == status["bomb.png"] == "decodable"
    assert status["one_pixel.png"] == "size;not_blank"
    assert reason["one_pixel.png"] == ("1x1 px is outside [16, 4096] px per side; "
                                       "blank or near-constant: intensity std 0.0000 < 0.005")
    assert (status["flat.png"], reason["flat.png"]) == ("not_blank", "blank or near-constant: intensity std 0.0000 < 0.005")
    assert (status["white.png"], reason["white.png"]) == ("not_saturated", "saturated: 87.2% of pixels at 0 or 1 (> 50.0%)")
    assert status["caf%E9.png"] == "utf8_name"
    assert reason["caf%E9.png"] == (f"{g}/caf%E9.png: file name is not valid UTF-8 (undecodable bytes shown as %XX); "
                                    "rename the file")
    assert status["mask_small.png"] == "mask_size"
    assert reason["mask_small.png"] == f"mask {nw}/bundle/labels/mask_small.png is 16x16 px, image is 32x32 px"
    assert status["gray_mask.png"] == "mask_binary"
    assert reason["gray_mask.png"] == f"mask {nw}/bundle/labels/gray_mask.png is not binary: values 0,128,255"
    assert status["empty_mask.png"] == "mask_decodable"
    assert reason["empty_mask.png"] == f"{nw}/bundle/labels/empty_mask.png: empty file (0 bytes)"
    assert status["d2_test.png"] == "unique_sha256"
    assert reason["d2_test.png"] == f"duplicate: same bytes (sha256) as {nw}/dispersed/images/d1_train.png"
    assert status["n1_rotated.png"] == "near_duplicate"
    assert reason["n1_rotated.png"].startswith(f"near-duplicate of {nw}/network/images/n1.png (perceptual hash ")

    good = {"good16.tif", "rgba.png", "n1.png", "n2.png", "d1_train.png", "d3_other.png", "levels.png",
            "indexed.png", "photo.jpg", "gen16.tif"}
    assert {name for name, s in status.items() if s == "ok"} == good
    assert (rows["good16.tif"]["mode"], rows["good16.tif"]["bit_depth"]) == ("I;16", 16)
    assert rows["good16.tif"]["mask_values"] == "encoded: wire where green != blue"
    assert rows["good16.tif"]["mask_coverage"] == pytest.approx(4 / 32)
    assert (rows["rgba.png"]["mode"], rows["indexed.png"]["mode"], rows["photo.jpg"]["mode"]) == ("RGBA", "P", "L")
    assert rows["d1_train.png"]["split"] == "train" and rows["d2_test.png"]["split"] == "test"
    assert len(rows["n1.png"]["phash"]) == 64  # 256 bits in hex

    assert outcome.failures["decodable"] == 4 and outcome.failures["classes_present"] == 1
    assert outcome.critical == ["classes_present (1 failing): class 'singular' has no usable images"]
    assert not outcome.success
    quarantine = outcome.quarantine
    assert len(quarantine) == len(judged) - len(good)
    assert set(quarantine["failed_expectations"]) >= {"expect_column_values_to_be_null",
                                                       "expect_column_pair_values_to_be_equal",
                                                       "expect_column_values_to_be_in_set"}
    classes = outcome.classes.set_index("class")
    assert classes.loc["singular", "status"] == "classes_present;classes_balanced"
    assert classes.loc["bundle", "usable"] == 2 and classes.loc["network", "usable"] == 2

    assert (tmp_path / "docs" / "index.html").is_file() and (tmp_path / "docs" / "validation_result.json").is_file()
    page = next((tmp_path / "docs" / "validations" / "files").rglob("*.html")).read_text()
    assert "must always be equal" in page and "unexpected values found" in page  # the rendered mask_size check
    assert {**_hashes(nw), **_hashes(gen)} == before, "raw files are never changed, moved or deleted"


def test_critical_row_checks_fail_the_validation_and3_others_only_quarantine(dataset):
    nw, gen = dataset
    manifest = build_manifest([], find_images(gen))
    lenient = validate_manifest(manifest, [], Rules(16, 4096, 0.005, 0.5, 0.25, critical=()))
    assert lenient.success and len(lenient.quarantine) == 8
    strict = validate_manifest(manifest, [], Rules(16, 4096, 0.005, 0.5, 0.25, critical=("decodable", "size")))
    assert [line.split(" (")[0] for line in strict.critical] == ["decodable", "size"]
    assert strict.critical[0].startswith("decodable (4 failing): ") and strict.critical[0].endswith(" ...")
    with pytest.raises(ConfigError, match=r"validate.critical names unknown checks \['sharpness'\]"):
        check_rules(Rules(16, 4096, 0.005, 0.5, 0.25, critical=("sharpness",)))
    assert "classes_balanced" in CHECK_NAMES


def test_classes_out_of_balance_are_reported_but_not_critical(tmp_path):
    nw = tmp_path / "nw"
    for c, n in (("bundle", 8), ("network", 1)):
        for i in range(n):
            save(nw / c / "images" / f"{c}{i}.png", noise(100 * len(c) + i))
    samples, _ = scan_nanowire_dataset(nw, ("bundle", "network"))
    outcome = validate_manifest(build_manifest(samples, []), ("bundle", "network"), RULES)
    assert outcome.success and outcome.failures["classes_balanced"] == 1
    network = outcome.classes.set_index("class").loc["network"]
    assert network["reason"] == ("class 'network' has 1 usable images, 0.12 of the largest class (bundle: 8); "
                                 "below validate.min_class_ratio 0.25")


def test_near_duplicates_within_one_split_are_not_a_leak(tmp_path):
    nw = tmp_path / "nw"
    base = noise(3)
    save(nw / "bundle" / "images" / "a.png", base)
    save(nw / "bundle" / "images" / "b.png", np.fliplr(base))
    (nw / "splits.csv").write_text("image,split\nbundle/images/a.png,train\nbundle/images/b.png,train\n")
    samples, _ = scan_nanowire_dataset(nw, ("bundle",))
    assert build_manifest(samples, [])["near_duplicate_of"].isna().all()
    (nw / "splits.csv").write_text("image,split\nbundle/images/a.png,train\nbundle/images/b.png,test\n")
    samples, _ = scan_nanowire_dataset(nw, ("bundle",))
    manifest = build_manifest(samples, [])
    assert manifest["near_duplicate_of"].isna().tolist() == [True, False]
    assert manifest.at[1, "near_duplicate_of"] == str(nw / "bundle" / "images" / "a.png")
    assert manifest.at[1, "near_duplicate_bits"] == 0, "a mirrored copy is 0 bits from the original"


def test_dhash_is_stable_under_small_changes_and_separates_distinct_images():
    image = noise(1, (64, 64)).astype(np.float32) / 255
    other = noise(2, (64, 64)).astype(np.float32) / 255
    assert dhash(image).shape == (256,)
    brighter = np.clip(image * 1.05, 0, 1)
    assert (dhash(image) != dhash(brighter)).sum() <= 8
    assert (dhash(image) != dhash(other)).sum() > 80
    variants = dihedral_dhashes(image)
    assert variants.shape == (8, 4) and variants.dtype == np.uint64


def test_real_em_images_pass_the_checks(shared_data):
    """The real CEM500K-style patches and EMPS images decode and pass every check (they are good data)."""
    cem = find_images(shared_data / "cem500k-examples" / "images")
    emps = find_images(shared_data / "emps" / "images")[:20]
    outcome = validate_manifest(build_manifest([], [*cem, *emps]), [], RULES)
    assert len(outcome.manifest) == len(cem) + len(emps) > 20
    bad = outcome.quarantine
    assert bad.empty, bad[["path", "status", "reason"]].to_string()


def test_the_same_image_under_two_classes_quarantines_every_copy_as_a_label_conflict(tmp_path):
    nw = tmp_path / "nw"
    for c in ("bundle", "network"):
        for i in range(3):
            save(nw / c / "images" / f"{c}{i}.png", noise(50 * len(c) + i))
    twin = save(nw / "bundle" / "images" / "twin.png", noise(999))
    original = twin.read_bytes()
    (nw / "network" / "images" / "twin_copy.png").write_bytes(original)
    samples, _ = scan_nanowire_dataset(nw, ("bundle", "network"))
    outcome = validate_manifest(build_manifest(samples, []), ("bundle", "network"), RULES)
    judged = outcome.manifest.set_index(outcome.manifest["path"].map(lambda p: Path(p).name))
    for name in ("twin.png", "twin_copy.png"):  # the first copy too: its label is as doubtful as the second's
        assert "label_conflict" in judged.at[name, "status"].split(";")
        assert ("label conflict: the same bytes (sha256) are labelled bundle, network in different files; every "
                "copy is quarantined") in judged.at[name, "reason"]
    assert sorted(Path(p).name for p in outcome.quarantine["path"]) == ["twin.png", "twin_copy.png"]
    assert (judged.drop(index=["twin.png", "twin_copy.png"])["status"] == "ok").all()
    for path in (twin, nw / "network" / "images" / "twin_copy.png"):  # quarantined, not deleted or moved
        assert path.read_bytes() == original
