import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

from nanomorph.data.cache import cached_image_stack, cached_images
from nanomorph.data.io import load_image_stack
from nanomorph.errors import ImageReadError


def _write_images(folder, seed=0):
    """An 8-bit PNG, a 16-bit PNG, a 16-bit TIFF and an RGB JPEG, of different sizes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "a.png", folder / "b.png", folder / "c.tif", folder / "d.jpg"]
    Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8)).save(paths[0])
    Image.fromarray(rng.integers(0, 65536, (33, 33), dtype=np.uint16)).save(paths[1])
    tifffile.imwrite(paths[2], rng.integers(0, 65536, (64, 48), dtype=np.uint16))
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(paths[3], quality=95)
    return paths


def _entries(cache_dir):
    return sorted(p.name for p in cache_dir.iterdir())


def test_same_values_as_load_image_stack_memory_mapped(tmp_path):
    paths = _write_images(tmp_path / "images")
    stack = cached_image_stack(paths, 24, tmp_path / "cache")
    assert isinstance(stack, np.memmap) and not stack.flags.writeable
    assert stack.dtype == np.float32 and stack.shape == (4, 24, 24)
    np.testing.assert_array_equal(stack, load_image_stack(paths, 24))
    assert not [n for n in _entries(tmp_path / "cache") if n.endswith(".tmp")]  # no leftovers


def test_second_call_is_served_from_the_entry_also_under_other_names(tmp_path):
    paths = _write_images(tmp_path / "images")
    cache = tmp_path / "cache"
    first = cached_image_stack(paths, 24, cache)
    entry = cache / _entries(cache)[1]  # <key>.json, <key>.npy
    written = (entry.stat().st_ino, entry.stat().st_mtime_ns)
    again = cached_image_stack(paths, 24, cache)
    copies = tmp_path / "renamed"
    copies.mkdir()
    renamed = [shutil.copy(p, copies / f"x{i}{p.suffix}") for i, p in enumerate(paths)]
    moved = cached_image_stack(renamed, 24, cache)  # same bytes, other names: the same entry
    assert _entries(cache) == [entry.with_suffix(".json").name, entry.name]
    assert (entry.stat().st_ino, entry.stat().st_mtime_ns) == written  # never rewritten
    assert again.filename == first.filename == moved.filename
    np.testing.assert_array_equal(again, first)


def test_changed_content_or_size_is_a_new_entry(tmp_path):
    paths = _write_images(tmp_path / "images")
    cache = tmp_path / "cache"
    before = np.array(cached_image_stack(paths, 24, cache))
    Image.fromarray(np.full((40, 50), 7, dtype=np.uint8)).save(paths[0])  # same name, new pixels
    after = cached_image_stack(paths, 24, cache)
    np.testing.assert_array_equal(after, load_image_stack(paths, 24))
    assert not np.array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1:], before[1:])
    assert cached_image_stack(paths, 16, cache).shape == (4, 16, 16)
    assert len([n for n in _entries(cache) if n.endswith(".npy")]) == 3


def test_unreadable_files_raise_or_are_skipped_with_their_reason(tmp_path):
    paths = _write_images(tmp_path / "images")
    broken = tmp_path / "images" / "broken.png"
    broken.write_bytes(b"not an image at all")
    empty = tmp_path / "images" / "empty.tif"
    empty.write_bytes(b"")
    listed = [paths[0], broken, paths[1], empty, paths[2]]
    with pytest.raises(ImageReadError, match="broken.png"):
        cached_image_stack(listed, 24, tmp_path / "cache")
    for _ in range(2):  # building the entry, then reading it back
        result = cached_images(listed, 24, tmp_path / "cache", skip_unreadable=True)
        assert result.paths == (paths[0], paths[1], paths[2])
        assert [p.name for p, _ in result.skipped] == ["broken.png", "empty.tif"]
        assert "recognised" in result.skipped[0][1] and "empty" in result.skipped[1][1]
        np.testing.assert_array_equal(result.images, load_image_stack(result.paths, 24))
    with pytest.raises(ImageReadError, match="broken.png"):  # the entry remembers why
        cached_image_stack(listed, 24, tmp_path / "cache")


def test_nothing_readable_gives_an_empty_stack(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"junk")
    result = cached_images([broken], 8, tmp_path / "cache", skip_unreadable=True)
    assert result.images.shape == (0, 8, 8) and result.paths == () and len(result.skipped) == 1
