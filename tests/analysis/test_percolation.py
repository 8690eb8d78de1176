import numpy as np
import pytest
from skimage import draw

from nanomorph.analysis.percolation import percolates, wire_clusters, wire_clusters_dbscan


def random_mask(rng: np.random.Generator) -> np.ndarray:
    """Scattered pixels, line segments and blobs at a random density on a small random canvas."""
    height, width = (int(n) for n in rng.integers(1, 48, size=2))
    mask = rng.random((height, width)) < rng.uniform(0.0, 0.3)
    for _ in range(int(rng.integers(0, 6))):
        r0, r1 = rng.integers(0, height, 2)
        c0, c1 = rng.integers(0, width, 2)
        rows, cols = draw.line(int(r0), int(c0), int(r1), int(c1))
        mask[rows, cols] = True
    for _ in range(int(rng.integers(0, 4))):
        centre = (rng.uniform(0, height), rng.uniform(0, width))
        rows, cols = draw.disk(centre, rng.uniform(0.5, 5), shape=mask.shape)
        mask[rows, cols] = True
    return mask


CASES = [
    (seed, eps, min_samples)
    for seed, (eps, min_samples) in enumerate(
        (eps, ms)
        for eps in (1.0, np.sqrt(2), 1.5, 2.0, 2.5, np.sqrt(8), 3.0, 4.2)
        for ms in (1, 2, 3, 4, 5)
        for _ in range(5)
    )
]


@pytest.mark.parametrize("seed, eps, min_samples", CASES)
def test_fast_clusters_equal_dbscan(seed, eps, min_samples):
    mask = random_mask(np.random.default_rng(seed))
    fast = wire_clusters(mask, eps, min_samples)
    reference = wire_clusters_dbscan(mask, eps, min_samples)
    # Same numbering, not just the same partition: border ties are resolved as scikit-learn does.
    np.testing.assert_array_equal(fast, reference)
    assert percolates(mask, eps, min_samples) == percolates(mask, eps, min_samples, method="dbscan")


def test_case_count_is_two_hundred():
    assert len(CASES) == 200


def test_border_point_between_two_clusters_joins_the_first():
    mask = np.zeros((3, 7), dtype=bool)
    mask[:, 0:3] = True
    mask[:, 4:7] = True
    mask[1, 3] = True  # 3 points within eps=1 (itself included) < min_samples=4: a border point
    labels = wire_clusters(mask, eps=1.0, min_samples=4)
    np.testing.assert_array_equal(labels, wire_clusters_dbscan(mask, eps=1.0, min_samples=4))
    image = np.full(mask.shape, -9)
    image[mask] = labels
    assert image[1, 3] == image[1, 0] == 0
    assert image[1, 6] == 1


def test_diagonal_steps_join_within_default_eps():
    mask = np.eye(20, dtype=bool)
    assert set(wire_clusters(mask)) == {0}
    assert percolates(mask)


def test_plus_sign_percolates_line_does_not():
    plus = np.zeros((30, 40), dtype=bool)
    plus[15, :] = True
    plus[:, 20] = True
    assert percolates(plus) and percolates(plus, method="dbscan")
    line = np.zeros((30, 40), dtype=bool)
    line[15, :] = True
    assert not percolates(line)


def test_two_disjoint_lines_do_not_percolate():
    mask = np.zeros((30, 30), dtype=bool)
    mask[1, :] = True  # spans all columns
    mask[4:, 10] = True  # spans rows 4..29; 3 px from the other line, beyond eps=2
    assert not percolates(mask)
    mask[2:4, 10] = True  # bridge them: the joined cluster spans both directions
    assert percolates(mask)


def test_spanning_tolerance_is_size_minus_two():
    width = 30
    mask = np.zeros((width, width), dtype=bool)
    mask[:, 0] = True
    mask[0, 1 : width - 2] = True  # column span width - 3
    assert not percolates(mask)
    mask[0, width - 2] = True  # column span width - 2: enough
    assert percolates(mask)


def test_gaps_wider_than_eps_break_clusters():
    mask = np.zeros((10, 30), dtype=bool)
    mask[5, ::3] = True  # neighbours 3 px apart, eps 2: every pixel is isolated noise
    assert (wire_clusters(mask) == -1).all()
    mask[5, ::2] = True
    assert (wire_clusters(mask[:, :28]) >= 0).all()


def test_empty_mask_and_single_pixel():
    empty = np.zeros((16, 16), dtype=bool)
    assert wire_clusters(empty).shape == (0,)
    assert wire_clusters_dbscan(empty).shape == (0,)
    assert not percolates(empty)
    single = empty.copy()
    single[4, 7] = True
    np.testing.assert_array_equal(wire_clusters(single), [-1])  # alone: fewer than min_samples=2
    np.testing.assert_array_equal(wire_clusters(single, min_samples=1), [0])
    assert not percolates(single, min_samples=1)


@pytest.mark.parametrize(
    "kwargs", [{"eps": 0.0}, {"eps": -1.0}, {"eps": float("nan")}, {"min_samples": 0}, {"min_samples": 1.5}]
)
def test_invalid_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        wire_clusters(np.ones((4, 4), dtype=bool), **kwargs)


def test_mask_must_be_2d_and_method_known():
    with pytest.raises(ValueError, match="2-D"):
        percolates(np.ones((2, 4, 4), dtype=bool))
    with pytest.raises(ValueError, match="method"):
        percolates(np.ones((4, 4), dtype=bool), method="union-find")


def test_large_mask_runs():
    rng = np.random.default_rng(0)
    mask = rng.random((1024, 1024)) < 0.1
    labels = wire_clusters(mask)
    assert labels.shape == (np.count_nonzero(mask),)
    assert not percolates(mask)  # 10 % scattered pixels: far below the site-percolation threshold
    mask[512, :] = True
    mask[:, 300] = True
    assert percolates(mask)


PROPERTY_EPS = (0.5, 1.0, 1.2, np.sqrt(2), 1.5, 2.0, 2.5, 3.0, 3.7)


def random_canvas(rng: np.random.Generator) -> np.ndarray:
    """A mask of random shape (boxes, single rows, single columns) and density (empty and full included),
    sometimes crossed by a few lines, so that clusters meet at every angle."""
    height, width = (int(n) for n in rng.integers(1, 40, size=2))
    height, width = [(height, width), (1, width), (height, 1)][int(rng.choice(3, p=[0.7, 0.15, 0.15]))]
    density = [0.0, 1.0, rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.2)][int(rng.integers(4))]
    mask = rng.random((height, width)) < density
    for _ in range(int(rng.integers(0, 4)) if rng.random() < 0.3 else 0):
        rows, cols = draw.line(*(int(rng.integers(0, n)) for n in (height, width, height, width)))
        mask[rows, cols] = True
    return mask


@pytest.mark.parametrize("block", range(4))
def test_random_masks_eps_and_min_samples_equal_dbscan(block):
    """Property test (seeded; hypothesis is not a dependency): labels identical for any mask and parameters."""
    for seed in range(100 * block, 100 * (block + 1)):
        rng = np.random.default_rng(10_000 + seed)
        mask = random_canvas(rng)
        eps, min_samples = float(rng.choice(PROPERTY_EPS)), int(rng.integers(1, 7))
        fast = wire_clusters(mask, eps, min_samples)
        reference = wire_clusters_dbscan(mask, eps, min_samples)
        assert np.array_equal(fast, reference), (seed, mask.shape, eps, min_samples)


def test_edge_shapes_equal_dbscan_for_every_eps_and_min_samples():
    masks = [np.zeros((5, 5), dtype=bool), np.ones((1, 1), dtype=bool), np.ones((6, 7), dtype=bool),
             np.ones((1, 9), dtype=bool), np.ones((9, 1), dtype=bool), np.eye(6, 8, dtype=bool)[:, ::-1]]
    for mask in masks:
        for eps in PROPERTY_EPS:
            for min_samples in range(1, 7):
                assert np.array_equal(wire_clusters(mask, eps, min_samples),
                                      wire_clusters_dbscan(mask, eps, min_samples)), (mask.shape, eps, min_samples)


def test_wide_stencil_counts_past_255_neighbours():
    """eps 9.5 has 293 offsets: neighbour counts no longer fit in a byte."""
    mask = np.random.default_rng(3).random((30, 34)) < 0.6
    for min_samples in (1, 100, 200, 260, 293):
        np.testing.assert_array_equal(wire_clusters(mask, 9.5, min_samples),
                                      wire_clusters_dbscan(mask, 9.5, min_samples))


def test_components_joined_only_by_long_offsets_keep_scikit_learn_numbering():
    # eps 2, every pixel core: (0,0) and (2,0) join through the (2, 0) offset, which 8-connectivity lacks;
    # (0,5) starts between them in raster order but is a cluster of its own.
    mask = np.zeros((3, 7), dtype=bool)
    mask[0, 0] = mask[2, 0] = mask[0, 5] = True
    np.testing.assert_array_equal(wire_clusters(mask, 2.0, 1), [0, 1, 0])
    np.testing.assert_array_equal(wire_clusters_dbscan(mask, 2.0, 1), [0, 1, 0])
