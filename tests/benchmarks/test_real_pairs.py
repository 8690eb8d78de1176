import numpy as np
import pytest
from PIL import Image

from nanomorph.errors import NanomorphError
from real_pairs import emps_pairs, folder_pairs, load_pairs, read_ids, split_three_ways


def _write_emps(root, ids, header=None):
    (root / "images").mkdir(parents=True)
    (root / "segmaps").mkdir()
    rng = np.random.default_rng(0)
    for k, id_ in enumerate(ids):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "images" / f"{id_}.png")
        segmap = np.zeros((40, 48), dtype=np.uint16)
        segmap[5:15, 5:20] = 1
        segmap[20:30, 10:40] = 300 + k  # instance ids above 255: a 16-bit map
        Image.fromarray(segmap).save(root / "segmaps" / f"{id_}.png")
    lines = ([header] if header else []) + list(ids)
    (root / "train.csv").write_text("\n".join(lines) + "\n")


def test_emps_layout_in_tmp_files(tmp_path):
    _write_emps(tmp_path, ["b2", "a1", "c3"], header="filename")
    pairs = emps_pairs(tmp_path)
    assert [p.id for p in pairs] == ["b2", "a1", "c3"]  # the id file's order
    images, masks = load_pairs(pairs, 32)
    assert images.shape == masks.shape == (3, 32, 32)
    assert images.dtype == np.float32 and masks.dtype == bool
    # Foreground = every instance (segmap > 0): (10*15 + 10*30) / (40*48) of the image.
    assert masks.mean() == pytest.approx(450 / 1920, abs=0.03)


def test_emps_missing_files_are_reported(tmp_path):
    _write_emps(tmp_path, ["a1", "b2"])
    (tmp_path / "segmaps" / "b2.png").unlink()
    with pytest.raises(NanomorphError, match="1 ids of train.csv lack.*b2"):
        emps_pairs(tmp_path)


def test_real_emps_layout(shared_data):
    pairs = emps_pairs(shared_data / "emps")
    assert len(pairs) >= 300
    ids = read_ids(shared_data / "emps" / "train.csv")
    assert [p.id for p in pairs] == ids
    images, masks = load_pairs(pairs[:4], 64)
    assert images.shape == (4, 64, 64) and 0 <= images.min() and images.max() <= 1
    assert masks.any(axis=(1, 2)).all() and not masks.all(axis=(1, 2)).any()


def test_generic_folder_pairs_by_stem(tmp_path):
    images_dir, masks_dir = tmp_path / "img", tmp_path / "lbl"
    images_dir.mkdir()
    masks_dir.mkdir()
    for stem in ("x", "y"):
        Image.fromarray(np.full((20, 30), 128, dtype=np.uint8)).save(images_dir / f"{stem}.tif")
        mask = np.zeros((20, 30), dtype=np.uint8)
        mask[:10] = 255
        Image.fromarray(mask).save(masks_dir / f"{stem}.png")
    (images_dir / "notes.txt").write_text("not an image")
    pairs = folder_pairs(images_dir, masks_dir)
    assert [(p.id, p.image.name, p.mask.name) for p in pairs] == [("x", "x.tif", "x.png"), ("y", "y.tif", "y.png")]
    _, masks = load_pairs(pairs, 32)
    assert masks[:, :16].all() and not masks[:, 16:].any()

    Image.fromarray(np.zeros((20, 30), dtype=np.uint8)).save(images_dir / "z.png")
    with pytest.raises(NanomorphError, match="1 images without a mask.*z"):
        folder_pairs(images_dir, masks_dir)
    Image.fromarray(np.zeros((20, 30), dtype=np.uint8)).save(images_dir / "x.png")
    with pytest.raises(NanomorphError, match="share a stem"):
        folder_pairs(images_dir, masks_dir)


def test_three_way_split_is_seeded_and_disjoint():
    train, val, test = split_three_ways(100, 0.1, 0.2, seed=3)
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    assert len(set(train) | set(val) | set(test)) == 100
    again = split_three_ways(100, 0.1, 0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    assert not np.array_equal(test, split_three_ways(100, 0.1, 0.2, seed=4)[2])
    with pytest.raises(ValueError):
        split_three_ways(10, 0.5, 0.5, seed=0)
