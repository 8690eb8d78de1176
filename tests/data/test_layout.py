import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nanomorph.data.layout import (
    Sample,
    display_path,
    find_images,
    find_nanowire_dataset,
    scan_nanowire_dataset,
    utf8_safe_name,
)
from nanomorph.errors import NanomorphError


def touch_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(path, format="PNG")
    return path


def test_pairs_images_with_labels_in_class_order(tmp_path):
    b = touch_image(tmp_path / "bundle" / "images" / "b.tif")
    a = touch_image(tmp_path / "bundle" / "images" / "a.png")
    a_label = touch_image(tmp_path / "bundle" / "labels" / "a.png")
    x = touch_image(tmp_path / "network" / "images" / "x.TIF")
    (tmp_path / "network" / "images" / "notes.txt").write_text("not an image")
    samples = find_nanowire_dataset(tmp_path, ["network", "bundle"])
    assert samples == [
        Sample(image=x, mask=None, label="network"),
        Sample(image=a, mask=a_label, label="bundle"),
        Sample(image=b, mask=None, label="bundle"),
    ]


def test_missing_root_class_or_images_is_an_error(tmp_path):
    with pytest.raises(NanomorphError, match="not found"):
        find_nanowire_dataset(tmp_path / "absent", ["bundle"])
    touch_image(tmp_path / "bundle" / "images" / "a.png")
    with pytest.raises(NanomorphError, match="singular"):
        find_nanowire_dataset(tmp_path, ["bundle", "singular"])
    (tmp_path / "singular" / "images").mkdir(parents=True)
    with pytest.raises(NanomorphError, match="no images"):
        find_nanowire_dataset(tmp_path, ["bundle", "singular"])


def test_find_images_walks_the_tree(tmp_path):
    wanted = [
        touch_image(tmp_path / "a.PNG"),
        touch_image(tmp_path / "deep" / "er" / "c.jpeg"),
        touch_image(tmp_path / "deep" / "b.tiff"),
        touch_image(tmp_path / "z.jpg"),
    ]
    touch_image(tmp_path / "._a.png")  # macOS resource fork
    (tmp_path / "readme.md").write_text("x")
    assert find_images(tmp_path) == sorted(wanted)
    with pytest.raises(NanomorphError):
        find_images(tmp_path / "absent")


def test_masks_in_tiff_and_split_file(tmp_path):
    a = touch_image(tmp_path / "bundle" / "images" / "a.png")
    a_mask = touch_image(tmp_path / "bundle" / "labels" / "a.tif")
    b = touch_image(tmp_path / "bundle" / "images" / "b.png")
    (tmp_path / "splits.csv").write_text("image,split\nbundle/images/b.png,test\n")
    samples, empty = scan_nanowire_dataset(tmp_path, ["bundle", "network"])
    assert samples == [Sample(a, a_mask, "bundle", None), Sample(b, None, "bundle", "test")]
    assert empty == ["network"]
    (tmp_path / "splits.csv").write_text("file,fold\n")
    with pytest.raises(NanomorphError, match="needs the columns image,split"):
        scan_nanowire_dataset(tmp_path, ["bundle"])


def test_utf8_safe_names():
    assert utf8_safe_name("café.png") == "café.png"
    undecodable = os.fsdecode(b"caf\xe9 \xff.png")
    assert utf8_safe_name(undecodable) == "caf%E9 %FF.png"
    assert display_path(Path("/data") / undecodable) == "/data/caf%E9 %FF.png"
