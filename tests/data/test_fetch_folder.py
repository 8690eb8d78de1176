"""The folder source: any tree or CSV manifest into the canonical layout, every left-out file reported."""

import os

import numpy as np
import pytest
from PIL import Image

from nanomorph.data.fetchers import fetch_folder_generic, fetch_folder_nanowires
from nanomorph.data.layout import TreeRules, find_images, scan_class_tree, scan_nanowire_dataset
from nanomorph.errors import NanomorphError

CLASSES = ("bundle", "dispersed", "network", "singular")
RULES = TreeRules()


def image(path, seed=0, size=(20, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(30, 220, size, dtype=np.uint8)).save(path)
    return path


def mask(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.zeros((20, 20), dtype=np.uint8)
    values[5:9] = 255
    Image.fromarray(values).save(path)
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "src"
    image(root / "Bundle" / "a.tif", 1)                 # class folder names are case-insensitive
    mask(root / "Bundle" / "a_mask.png")                 # mask by marker, beside its image
    image(root / "nets" / "images" / "n1.png", 2)        # class by alias; images/ + labels/ siblings
    mask(root / "nets" / "labels" / "n1.png")
    image(root / "train" / "dispersed" / "d.jpg", 3)     # split from an enclosing folder
    image(root / "test" / "dispersed" / "d.jpg", 4)
    (root / "singular").mkdir()                          # an empty class folder
    (root / "notes.txt").write_text("not an image")
    (root / "Bundle" / "readme.md").write_text("x")
    mask(root / "Bundle" / "orphan_mask.png")
    image(root / "other" / "x.png", 5)
    undecodable = os.fsencode(str(root / "Bundle")) + b"/bad\xff name.png"
    with open(undecodable, "wb") as handle:
        handle.write((root / "nets" / "images" / "n1.png").read_bytes())
    return root


def test_tree_to_canonical_layout_with_every_file_accounted_for(tree, tmp_path):
    rules = TreeRules(class_aliases={"nets": "network"})
    records = fetch_folder_nanowires(root=tree, manifest=None, out_dir=tmp_path / "raw", classes=CLASSES,
                                     rules=rules, link="copy")
    out = tmp_path / "raw"
    samples, empty = scan_nanowire_dataset(out, CLASSES)
    found = {(s.label, s.image.name, s.mask.name if s.mask else None, s.split) for s in samples}
    assert found == {
        ("bundle", "a.tif", "a.png", None),
        ("bundle", "bad%FF name.png", None, None),
        ("network", "n1.png", "n1.png", None),
        ("dispersed", "test__d.jpg", None, "test"),
        ("dispersed", "train__d.jpg", None, "train"),
    }
    assert empty == ["singular"]
    assert (out / "bundle" / "images" / "a.tif").read_bytes() == (tree / "Bundle" / "a.tif").read_bytes()
    assert (out / "splits.csv").read_text().splitlines() == [
        "image,split", "dispersed/images/test__d.jpg,test", "dispersed/images/train__d.jpg,train"]
    reasons = {r.source.split("/src/")[-1]: (r.status, r.reason) for r in records}
    assert reasons["notes.txt"] == ("unplaced", "not inside a class folder (one of bundle, dispersed, network, singular)")
    assert reasons["other/x.png"][0] == "unplaced"
    assert reasons["Bundle/readme.md"] == (
        "unplaced", "not an image or mask file ('.md'; expected .jpeg, .jpg, .png, .tif, .tiff)")
    assert reasons["Bundle/orphan_mask.png"] == (
        "unplaced", "mask without a matching image (no image named 'orphan' in its folder or the images/ folder beside it)")
    assert reasons["Bundle/bad%FF name.png"] == (
        "renamed", "file name was not valid UTF-8: undecodable bytes written as %XX")
    assert [(r.status, r.reason) for r in records if r.role == "class"] == [
        ("empty", "no images found for class 'singular'")]
    source_files = [p for p in tree.rglob("*") if p.is_file()]
    assert len(source_files) == 11
    assert len([r for r in records if r.role != "class"]) == len(source_files), "one record per source file"


def test_ambiguous_masks_are_not_guessed(tmp_path):
    root = tmp_path / "src"
    image(root / "bundle" / "a.tif", 1)
    image(root / "bundle" / "a.png", 2)
    mask(root / "bundle" / "a_mask.png")
    image(root / "bundle" / "b.tif", 3)
    mask(root / "bundle" / "b_mask.png")
    mask(root / "bundle" / "masks" / "b.png")
    scan = scan_class_tree(root, CLASSES, RULES)
    assert {(s.image.name, s.mask) for s in scan.samples} == {("a.png", None), ("a.tif", None), ("b.tif", None)}
    reasons = {p.path.relative_to(root).as_posix(): p.reason for p in scan.unplaced}
    assert reasons["bundle/a_mask.png"] == "ambiguous mask: several images share its stem (a.png, a.tif)"
    assert reasons["bundle/b_mask.png"] == "one of several masks for b.tif (b.png, b_mask.png); none used"


def test_csv_manifest_source(tmp_path):
    root = tmp_path / "src"
    image(root / "imgs" / "one.png", 1)
    image(root / "imgs" / "two.png", 2)
    image(root / "imgs" / "unlisted.png", 3)
    mask(root / "masks" / "one.png")
    (root / "list.csv").write_text(
        "path,label,mask,split\n"
        "imgs/one.png,bundle,masks/one.png,train\n"
        "imgs/two.png,Network,masks/absent.png,test\n"
        "imgs/gone.png,bundle,,train\n"
        "imgs/one.png,tangled,,\n")
    records = fetch_folder_nanowires(root=None, manifest=root / "list.csv", out_dir=tmp_path / "raw", classes=CLASSES,
                                     rules=RULES, link="hardlink")
    samples, empty = scan_nanowire_dataset(tmp_path / "raw", CLASSES)
    assert [(s.label, s.image.name, s.mask.name if s.mask else None, s.split) for s in samples] == [
        ("bundle", "imgs__one.png", "imgs__one.png", "train"), ("network", "imgs__two.png", None, "test")]
    assert empty == ["dispersed", "singular"]
    assert samples[0].image.stat().st_ino == (root / "imgs" / "one.png").stat().st_ino, "hard-linked, not copied"
    problems = {(r.source.split("/src/")[-1], r.reason) for r in records if r.status == "unplaced"}
    assert problems == {
        ("masks/absent.png", "list.csv line 3: mask file not found; image kept without a mask"),
        ("imgs/gone.png", "list.csv line 4: no such file"),
        ("imgs/one.png", "list.csv line 5: label 'tangled' is not one of bundle, dispersed, network, singular"),
        ("imgs/unlisted.png", "not listed in the manifest"),
    }
    with pytest.raises(NanomorphError, match="needs the columns path,label"):
        (root / "bad.csv").write_text("file,class\n")
        fetch_folder_nanowires(root=None, manifest=root / "bad.csv", out_dir=tmp_path / "x", classes=CLASSES,
                               rules=RULES, link="copy")


def test_generic_folder_is_flattened(tmp_path):
    root = tmp_path / "em"
    image(root / "a" / "x.png", 1)
    image(root / "b" / "x.png", 2)
    image(root / "c.TIF", 3)
    (root / "info.json").write_text("{}")
    records = fetch_folder_generic(root=root, out_dir=tmp_path / "generic", image_suffixes=(".png", ".tif"),
                                   link="copy")
    assert [p.name for p in find_images(tmp_path / "generic")] == ["a__x.png", "b__x.png", "c.tif"]
    assert [(r.status, r.reason) for r in records if r.status == "unplaced"] == [("unplaced", "not an image ('.json')")]
    with pytest.raises(NanomorphError, match="data.folder.generic_root is not set"):
        fetch_folder_generic(root=None, out_dir=tmp_path / "g2", image_suffixes=(".png",), link="copy")
    with pytest.raises(NanomorphError, match="neither data.folder.nanowire_root nor"):
        fetch_folder_nanowires(root=None, manifest=None, out_dir=tmp_path / "g3", classes=CLASSES, rules=RULES,
                               link="copy")
