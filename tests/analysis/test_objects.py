import numpy as np
import pytest
from skimage import draw

from nanomorph.analysis.objects import (
    count_objects,
    label_objects,
    measure_objects,
    orientation_order,
    skeleton_path_length,
    summarise_objects,
)


def bar(length: float, width: float, angle_deg: float, shape=(200, 200)) -> np.ndarray:
    """A filled length x width rectangle through the centre, its long axis `angle_deg` from the horizontal
    (counter-clockwise as displayed, rows growing downwards)."""
    t = np.radians(angle_deg)
    along = np.array([-np.sin(t), np.cos(t)])  # (d_row, d_col)
    across = np.array([np.cos(t), np.sin(t)])
    centre = np.array(shape) / 2
    corners = np.array([centre + a * along * length / 2 + b * across * width / 2
                        for a, b in [(-1, -1), (-1, 1), (1, 1), (1, -1)]])
    mask = np.zeros(shape, dtype=bool)
    rows, cols = draw.polygon(corners[:, 0], corners[:, 1], shape)
    mask[rows, cols] = True
    return mask


def angle_difference(a: float, b: float) -> float:
    """Smallest difference of two axial angles in degrees."""
    return abs((a - b + 90) % 180 - 90)


@pytest.mark.parametrize("start, stop, angle", [
    ((20, 20), (20, 69), 0),     # horizontal
    ((20, 20), (69, 20), 90),    # vertical
    ((70, 20), (21, 69), 45),    # "/" as displayed: rows decrease as columns increase
    ((20, 20), (69, 69), 135),   # "\\"
])
def test_one_pixel_lines(start, stop, angle):
    mask = np.zeros((100, 100), dtype=bool)
    rows, cols = draw.line(*start, *stop)
    mask[rows, cols] = True
    table = measure_objects(mask)
    assert len(table) == 1
    obj = table.iloc[0]
    n_pixels = len(rows)
    assert obj["area"] == n_pixels == 50
    # A 1-pixel line of N pixels along an axis has length N. A diagonal one: (N - 1) sqrt 2 between its end
    # pixel centres, plus 1 at each end (distance to the background there), minus 1.
    expected = n_pixels if angle in (0, 90) else (n_pixels - 1) * np.sqrt(2) + 1
    assert obj["length"] == pytest.approx(expected, abs=1e-9)
    assert obj["mean_width"] == pytest.approx(n_pixels / expected)
    assert angle_difference(obj["orientation_deg"], angle) < 0.01


def test_axis_aligned_thick_bar_length_and_width():
    mask = np.zeros((40, 100), dtype=bool)
    mask[10:15, 20:80] = True  # 60 x 5
    obj = measure_objects(mask).iloc[0]
    assert obj["area"] == 300
    assert obj["length"] == pytest.approx(60, abs=1.5)
    assert obj["mean_width"] == pytest.approx(5, abs=0.15)
    assert angle_difference(obj["orientation_deg"], 0) < 0.01


@pytest.mark.parametrize("angle", [10, 30, 45, 60, 100, 120, 135, 160])
@pytest.mark.parametrize("width", [2, 5])
def test_rotated_bars(angle, width):
    mask = bar(80, width, angle)
    obj = measure_objects(mask).iloc[0]
    assert angle_difference(obj["orientation_deg"], angle) < 0.5
    # Staircase paths and end spurs lengthen oblique skeletons (module docstring): up to +17 % seen.
    assert 80 * 0.97 <= obj["length"] <= 80 * 1.2
    assert obj["mean_width"] == pytest.approx(mask.sum() / obj["length"])
    assert width * 0.75 <= obj["mean_width"] <= width * 1.1


def test_closed_ring_has_its_circumference_as_length():
    mask = np.zeros((80, 80), dtype=bool)
    rows, cols = draw.disk((40, 40), 22)
    mask[rows, cols] = True
    rows, cols = draw.disk((40, 40), 18)
    mask[rows, cols] = False  # ring of radius ~20, width ~4: no skeleton end points
    obj = measure_objects(mask).iloc[0]
    assert obj["length"] == pytest.approx(2 * np.pi * 20, rel=0.1)
    assert obj["mean_width"] == pytest.approx(4, rel=0.15)


def test_branched_object_sums_its_branches():
    mask = np.zeros((100, 100), dtype=bool)
    mask[50, 10:90] = True  # 80 px horizontal
    mask[10:50, 50] = True  # 40 px vertical branch meeting it: a T
    obj = measure_objects(mask).iloc[0]
    assert obj["length"] == pytest.approx(120, abs=2)


def test_count_uses_8_connectivity_and_min_size():
    mask = np.zeros((60, 60), dtype=bool)
    mask[5, 5:30] = True
    mask[20:45, 40] = True
    rows, cols = draw.line(30, 5, 55, 30)
    mask[rows, cols] = True
    mask[10, 50] = mask[11, 51] = True  # a diagonal 2-pixel speck: ONE object under 8-connectivity
    mask[50, 50] = True  # a single pixel
    assert count_objects(mask) == 5
    assert count_objects(mask, min_size=3) == 3
    labels = label_objects(mask, min_size=3)
    assert labels.max() == 3 and not labels[10, 50] and not labels[50, 50]
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    table = measure_objects(mask, min_size=3)
    assert list(table["label"]) == [1, 2, 3]
    assert table["area"].sum() == 25 + 25 + 26


def test_single_pixel_and_empty_masks():
    mask = np.zeros((9, 9), dtype=bool)
    assert measure_objects(mask).empty
    summary = summarise_objects(measure_objects(mask))
    assert summary["count"] == 0 and np.isnan(summary["median_length"])
    mask[4, 4] = True
    obj = measure_objects(mask).iloc[0]
    assert obj["length"] == 1 and obj["mean_width"] == 1


def test_skeleton_path_length_does_not_count_corners_twice():
    skeleton = np.zeros((5, 5), dtype=bool)
    skeleton[1, 1] = skeleton[1, 2] = skeleton[2, 2] = True  # L corner: two orthogonal links, no diagonal
    assert skeleton_path_length(skeleton) == 2
    skeleton[1, 2] = False  # now only the diagonal link remains
    assert skeleton_path_length(skeleton) == pytest.approx(np.sqrt(2))


def test_summary_and_orientation_order():
    parallel = np.zeros((100, 100), dtype=bool)
    for r in (10, 30, 50, 70):
        parallel[r:r + 3, 10:90] = True
    summary = summarise_objects(measure_objects(parallel))
    assert summary["count"] == 4
    assert summary["orientation_order"] == pytest.approx(1.0)
    assert summary["median_width"] == pytest.approx(3, abs=0.1)
    assert summary["total_area"] == 4 * 3 * 80
    assert orientation_order(np.array([0.0, 90.0])) == pytest.approx(0.0, abs=1e-12)
    assert orientation_order(np.array([0.0, 60.0, 120.0])) == pytest.approx(0.0, abs=1e-12)
    assert orientation_order(np.array([179.0, 1.0])) == pytest.approx(np.cos(np.radians(2)))


def test_inputs_are_checked():
    with pytest.raises(TypeError, match="boolean"):
        measure_objects(np.zeros((5, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="2-D"):
        measure_objects(np.zeros((2, 5, 5), dtype=bool))
    with pytest.raises(ValueError, match="min_size"):
        label_objects(np.zeros((5, 5), dtype=bool), min_size=0)
