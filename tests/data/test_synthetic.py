import itertools
from pathlib import Path

import numpy as np
import pytest
import tifffile

from nanomorph.analysis.percolation import percolates
from nanomorph.data.io import read_image, read_zenodo_label
from nanomorph.data.layout import find_images, find_nanowire_dataset
from scipy import ndimage

from nanomorph.data.synthetic import (
    CLASSES,
    curly_curve,
    generate_generic_em_image,
    generate_nanowire_image,
    rasterise_wire,
    scale_bar_box,
    varying_width,
    wire_layout,
    write_generic_em_dataset,
    write_nanowire_dataset,
)


def rng(*words):
    return np.random.default_rng(np.random.SeedSequence(list(words)))


@pytest.mark.parametrize("morphology", CLASSES)
def test_nanowire_image_types_and_determinism(morphology):
    image, mask = generate_nanowire_image(morphology, 64, rng(7))
    assert image.dtype == np.uint16 and image.shape == (64, 64)
    assert mask.dtype == bool and mask.shape == (64, 64)
    assert 0 < mask.sum() < mask.size
    again_image, again_mask = generate_nanowire_image(morphology, 64, rng(7))
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(mask, again_mask)
    other_image, _ = generate_nanowire_image(morphology, 64, rng(8))
    assert not np.array_equal(image, other_image)


@pytest.mark.parametrize("morphology, seed", list(itertools.product(CLASSES, range(4))))
def test_percolation_label_matches_class(morphology, seed):
    _, mask = generate_nanowire_image(morphology, 96, rng(seed))
    assert percolates(mask) == (morphology == "network")


@pytest.mark.parametrize("morphology", CLASSES)
def test_wires_are_dark_on_a_bright_film(morphology):
    # Real thin wires absorb only ~20-40 % (the paper's panels): darker than the film, but not by much.
    image, mask = generate_nanowire_image(morphology, 128, rng(3))
    film = ~mask & (image < 65535)  # not the scale bar's white box
    assert image[mask].mean() < 0.95 * image[film].mean()


@pytest.mark.parametrize("morphology", CLASSES)
def test_the_mask_is_exactly_the_drawn_wires(morphology):
    # generate_nanowire_image draws the scale bar's place first, then the layout (cut by it), then renders.
    _, mask = generate_nanowire_image(morphology, 96, rng(5))
    generator = rng(5)
    box = scale_bar_box(generator, 96)
    hidden = np.zeros((96, 96), dtype=bool)
    hidden[box] = True
    wires = wire_layout(morphology, 96, generator, hidden)
    np.testing.assert_array_equal(mask, np.logical_or.reduce(wires))


@pytest.mark.parametrize("morphology, size", list(itertools.product(CLASSES, (96, 128))))
def test_the_scale_bar_is_burned_in_and_not_part_of_the_mask(morphology, size):
    image, mask = generate_nanowire_image(morphology, size, rng(4))
    box = scale_bar_box(rng(4), size)  # the first thing drawn from the image's generator
    patch = image[box]
    rows, cols = box
    assert rows.stop == size or rows.stop >= 0.98 * size      # at the bottom border
    assert cols.start <= 0.05 * size or cols.stop >= 0.95 * size  # in a corner
    assert (patch == 65535).mean() > 0.5                       # a white box...
    assert (patch < 0.5 * 65535).any()                         # ...with a black bar and text marks in it
    assert (image[~np.zeros_like(mask)] == 65535).sum() == (patch == 65535).sum()  # nothing else is pure white
    assert not mask[box].any()
    from nanomorph.data.realism import overlay_mask

    found = overlay_mask(image)                                # the realism statistics can leave it out
    assert found[box].all() and found.sum() < 2 * patch.size


def test_bundles_are_one_thick_fused_fibre():
    from skimage.measure import label

    for i in range(4):
        _, mask = generate_nanowire_image("bundle", 128, rng(6, i))
        components = label(mask, connectivity=2)
        largest = np.bincount(components.ravel())[1:].max()
        assert largest > 0.15 * mask.size                      # one broad fibre, not separate lines
        fibre = components == np.argmax(np.bincount(components.ravel())[1:]) + 1
        filled = ndimage.binary_fill_holes(fibre)
        assert filled.sum() - fibre.sum() < 0.01 * fibre.sum()  # fused: no gaps between its strands
        assert not percolates(mask)


def test_thin_wires_wind_and_vary_in_width():
    generator = rng(9)
    points = curly_curve(generator, (64, 64), 0.0, 100.0, curl=0.7, curl_length=15.0, step=1.0)
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    np.testing.assert_allclose(steps, 1.0, rtol=1e-6)
    np.testing.assert_allclose(points[len(points) // 2], (64, 64))
    heading = np.unwrap(np.arctan2(np.diff(points[:, 0]), np.diff(points[:, 1])))
    assert np.ptp(heading) > 0.5                               # winding, not straight
    widths = varying_width(generator, 200, 3.0, spread=0.25, sigma=3.0)
    assert widths.min() >= 1.2 and 0.15 < widths.std() / widths.mean() < 0.35
    # A straight centreline rasterised with a varying width: each column holds about that many pixels.
    line = np.stack([np.full(60, 20.0), np.arange(10.0, 70.0)], axis=1)
    width = np.linspace(2.0, 8.0, 60)
    band = rasterise_wire(line, width, (40, 80))
    np.testing.assert_allclose(band[:, 15:65].sum(axis=0), width[5:55], atol=1.01)


def test_wire_counts_differ_between_classes():
    density = {c: np.mean([generate_nanowire_image(c, 64, rng(i))[1].mean() for i in range(6)]) for c in CLASSES}
    assert density["network"] > density["dispersed"] > density["singular"]
    assert density["bundle"] > density["singular"]


def test_mean_intensity_alone_does_not_separate_the_classes():
    means = {
        c: [generate_nanowire_image(c, 64, rng(0, k, i))[0].mean() for i in range(10)] for k, c in enumerate(CLASSES)
    }
    for a, b in itertools.combinations(CLASSES, 2):
        # Overlapping ranges: no intensity threshold splits a from b.
        assert min(means[a]) < max(means[b]) and min(means[b]) < max(means[a]), (a, b)


def test_wire_width_scales_with_image_size():
    small = np.mean([generate_nanowire_image("singular", 64, rng(i))[1].sum() for i in range(4)]) / 64**2
    large = np.mean([generate_nanowire_image("singular", 256, rng(i))[1].sum() for i in range(4)]) / 256**2
    assert 0.5 < large / small < 2.0  # same field of view, same covered fraction


def test_bad_arguments():
    with pytest.raises(ValueError, match="morphology"):
        generate_nanowire_image("tangled", 64, rng(0))
    with pytest.raises(ValueError, match="size"):
        generate_nanowire_image("network", 8, rng(0))
    with pytest.raises(ValueError, match="classes"):
        write_nanowire_dataset("unused", ["tangled"], 1, 32, 0, progress=False)


def test_nanowire_dataset_round_trips(tmp_path):
    written = write_nanowire_dataset(tmp_path, CLASSES, 2, 48, seed=5, progress=False)
    assert len(written) == 8
    samples = find_nanowire_dataset(tmp_path, CLASSES)
    assert [s.image for s in samples] == written
    assert [s.label for s in samples] == [c for c in CLASSES for _ in range(2)]
    for sample in samples:
        assert sample.image.name == f"{sample.label}_{sample.image.stem[-3:]}.tif"
        assert sample.mask == tmp_path / sample.label / "labels" / f"{sample.image.stem}.png"
        index = int(sample.image.stem[-3:])
        image, mask = generate_nanowire_image(sample.label, 48, rng(5, 0, CLASSES.index(sample.label), index))
        stored = tifffile.imread(sample.image)
        assert stored.dtype == np.uint16
        np.testing.assert_array_equal(stored, image)
        np.testing.assert_allclose(read_image(sample.image), image / 65535, atol=1e-6)
        np.testing.assert_array_equal(read_zenodo_label(sample.mask), mask)


def test_nanowire_images_do_not_depend_on_count_or_class_subset(tmp_path):
    many = write_nanowire_dataset(tmp_path / "many", CLASSES, 3, 40, seed=1, progress=False)
    few = write_nanowire_dataset(tmp_path / "few", ["network"], 1, 40, seed=1, progress=False)
    network_first = [p for p in many if p.parent.parent.name == "network"][0]
    np.testing.assert_array_equal(tifffile.imread(network_first), tifffile.imread(few[0]))
    other_seed = write_nanowire_dataset(tmp_path / "other", ["network"], 1, 40, seed=2, progress=False)
    assert not np.array_equal(tifffile.imread(other_seed[0]), tifffile.imread(few[0]))


def test_datasets_are_byte_identical_whatever_the_number_of_worker_processes(tmp_path):
    def files(root):
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    for workers in (1, 2):
        paths = write_nanowire_dataset(tmp_path / f"nw{workers}", CLASSES, 3, 32, seed=4, progress=False,
                                       workers=workers)
        assert [p.relative_to(tmp_path / f"nw{workers}") for p in paths] == [
            Path(c) / "images" / f"{c}_{i:03d}.tif" for c in CLASSES for i in range(3)]
        write_generic_em_dataset(tmp_path / f"em{workers}", 5, 32, seed=4, progress=False, workers=workers)
    assert files(tmp_path / "nw1") == files(tmp_path / "nw2") and len(files(tmp_path / "nw1")) == 24
    assert files(tmp_path / "em1") == files(tmp_path / "em2") and len(files(tmp_path / "em1")) == 5
    with pytest.raises(ValueError, match="seed"):
        write_generic_em_dataset(tmp_path / "bad", 2, 32, seed=-1, progress=False, workers=2)


def test_generic_em_images(tmp_path):
    image = generate_generic_em_image(64, rng(0))
    assert image.dtype == np.uint8 and image.shape == (64, 64)
    assert image.std() > 10  # textured, not flat
    np.testing.assert_array_equal(image, generate_generic_em_image(64, rng(0)))
    written = write_generic_em_dataset(tmp_path, 3, 40, seed=0, progress=False)
    assert [p.name for p in written] == ["synthetic_em_00000.png", "synthetic_em_00001.png", "synthetic_em_00002.png"]
    assert find_images(tmp_path) == written
    first_of_one = write_generic_em_dataset(tmp_path / "one", 1, 40, seed=0, progress=False)[0]
    np.testing.assert_array_equal(read_image(first_of_one), read_image(written[0]))
    assert read_image(written[0]).shape == (40, 40)
    assert not np.array_equal(read_image(written[0]), read_image(written[1]))
