import numpy as np
import pandas as pd
import pytest
import tifffile

from nanomorph.data.io import load_image_stack
from nanomorph.errors import ImageReadError
from nanomorph.serving.inputs import SERVING_PATH_ROOT_ENV, images_from_frame, resize_for_model, resize_mask


def test_rows_from_paths_and_arrays(tmp_path):
    raw = (np.arange(30 * 20, dtype=np.uint16).reshape(30, 20) * 100)
    tifffile.imwrite(tmp_path / "a.tif", raw)
    inline = np.linspace(0, 1, 12).reshape(3, 4)
    frame = pd.DataFrame({"path": [str(tmp_path / "a.tif"), None, np.nan],
                          "image": [None, inline.tolist(), np.array([[0, 255]], dtype=np.uint8)]})
    first, second, third = images_from_frame(frame)
    np.testing.assert_allclose(first, raw / 65535, atol=1e-6)
    np.testing.assert_allclose(second, inline, atol=1e-7)
    np.testing.assert_allclose(third, [[0.0, 1.0]])  # uint8 scaled by its type's range
    assert all(image.dtype == np.float32 for image in (first, second, third))


@pytest.mark.parametrize("frame, message", [
    (pd.DataFrame({"other": [1]}), "needs a 'path' or an 'image' column"),
    (pd.DataFrame({"path": ["x"], "image": [[[0.5]]]}), "row 0: set exactly one of 'path' and 'image'"),
    (pd.DataFrame({"path": [None]}), "row 0: set exactly one"),
    (pd.DataFrame({"image": [[[0.1, 2.0]]]}), r"intensities must lie in \[0, 1\], got \[0.1, 2\]"),
    (pd.DataFrame({"image": [[0.1, 0.2]]}), "must be a 2-D gray array"),
    (pd.DataFrame({"image": [[[0.1, 0.2], [0.3]]]}), "not a rectangular 2-D array"),
    (pd.DataFrame({"image": [[[0.1, float("nan")]]]}), "NaN or infinite"),
])
def test_bad_rows_are_refused(frame, message):
    with pytest.raises(ValueError, match=message):
        images_from_frame(frame)


def test_unreadable_path_names_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ImageReadError, match="bad.png: not a recognised image format"):
        images_from_frame(pd.DataFrame({"path": [str(tmp_path / "bad.png")]}))


def test_served_resizing_matches_the_training_loader(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 65535, size=(50, 70), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "x.tif", raw)
    (served,) = images_from_frame(pd.DataFrame({"path": [str(tmp_path / "x.tif")]}))
    np.testing.assert_array_equal(resize_for_model(served, 32), load_image_stack([tmp_path / "x.tif"], 32)[0])


def test_mask_resizing_keeps_it_binary_and_its_shape():
    mask = np.zeros((32, 32), dtype=bool)
    mask[10:12, :] = True
    big = resize_mask(mask, (64, 96))
    assert big.dtype == bool and big.shape == (64, 96)
    assert big[20:24].all() and not big[:20].any() and not big[24:].any()


@pytest.fixture
def served(monkeypatch):
    """This process as MLflow's scoring server marks itself."""
    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "true")
    monkeypatch.delenv(SERVING_PATH_ROOT_ENV, raising=False)
    return monkeypatch


def _tif(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.full((8, 8), 1000, dtype=np.uint16))
    return path


def test_a_served_model_reads_no_paths_by_default(served, tmp_path):
    with pytest.raises(ValueError, match="reads no files on the server; send the image itself"):
        images_from_frame(pd.DataFrame({"path": [str(_tif(tmp_path / "a.tif"))]}))
    (inline,) = images_from_frame(pd.DataFrame({"image": [[[0.5, 0.25]]]}))  # inline images still work
    assert inline.shape == (1, 2)


def test_a_served_model_reads_only_under_its_root(served, tmp_path):
    root = tmp_path / "root"
    inside = _tif(root / "sub" / "a.tif")
    outside = _tif(tmp_path / "secret.tif")
    (root / "link.tif").symlink_to(outside)
    served.setenv(SERVING_PATH_ROOT_ENV, str(root))
    assert len(images_from_frame(pd.DataFrame({"path": [str(inside), "sub/a.tif"]}))) == 2
    for value in (str(outside), "../secret.tif", str(root / "sub" / ".." / ".." / "secret.tif"), "link.tif"):
        with pytest.raises(ValueError, match="is outside the folder this server may read"):
            images_from_frame(pd.DataFrame({"path": [value]}))


def test_float_tiffs_take_one_path_in_predict_and_in_serving(tmp_path):
    """`nanomorph predict` reads files with io.read_image; a served model reads a path row or an inline array:
    a float image in [0, 1] comes out identical every way, and a NaN or out-of-range one is refused with the
    same words (a file's error names the file, an array's its row)."""
    from nanomorph.data.io import read_image

    good = np.random.default_rng(0).uniform(0.1, 0.9, (20, 30)).astype(np.float32)
    tifffile.imwrite(tmp_path / "good.tif", good)
    (by_path, by_array) = images_from_frame(pd.DataFrame({"path": [str(tmp_path / "good.tif"), None],
                                                          "image": [None, good.tolist()]}))
    np.testing.assert_array_equal(read_image(tmp_path / "good.tif"), good)
    np.testing.assert_array_equal(by_path, good)
    np.testing.assert_array_equal(by_array, good)
    counts = np.linspace(0, 4000, 64, dtype=np.float32).reshape(8, 8)
    nan = np.full((8, 8), np.nan, np.float32)
    for name, array, says in (("counts.tif", counts, "intensities must lie in [0, 1], got [0, 4000]; scale them first"),
                              ("nan.tif", nan, "float image contains NaN or infinite values")):
        tifffile.imwrite(tmp_path / name, array)
        with pytest.raises(ImageReadError) as from_file:
            read_image(tmp_path / name)
        assert str(from_file.value) == f"{tmp_path / name}: {says}"
        with pytest.raises(ImageReadError) as from_path_row:
            images_from_frame(pd.DataFrame({"path": [str(tmp_path / name)]}))
        assert str(from_path_row.value) == str(from_file.value)
        with pytest.raises(ValueError) as from_array_row:
            images_from_frame(pd.DataFrame({"image": [array.tolist()]}))
        assert str(from_array_row.value) == f"row 0: 'image' {says}"
