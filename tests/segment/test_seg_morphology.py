import numpy as np
import pytest
from PIL import Image

from nanomorph.segment.figures import overlay_figure
from nanomorph.segment.morphology import morphology_agreement, morphology_table


def _network(side=32):
    """Wires crossing the whole field: percolates."""
    mask = np.zeros((side, side), dtype=bool)
    mask[side // 2, :] = True
    mask[:, side // 3] = True
    return mask


def _dispersed(side=32):
    """Two short separate wires: does not percolate."""
    mask = np.zeros((side, side), dtype=bool)
    mask[5, 3:12] = True
    mask[20:28, 25] = True
    return mask


def test_percolation_agreement_from_predicted_and_true_masks():
    true = np.stack([_network(), _dispersed(), _network(), _dispersed(), _dispersed()])
    pred = true.copy()
    pred[2] = _dispersed()  # a network whose predicted wires fall apart: wrong verdict from the prediction
    labels = ["network", "dispersed", "network", "dispersed", "bundle"]
    table = morphology_table(pred, true, labels, min_size=2)
    assert list(table["true_percolates"]) == [True, False, True, False, False]
    assert list(table["predicted_percolates"]) == [True, False, False, False, False]
    summary = morphology_agreement(table)
    # The bundle image is not judged: only dispersed and network have an expected verdict.
    assert summary["percolation"] == {"images": 4, "agreement_predicted": 0.75, "agreement_true": 1.0,
                                      "predicted_matches_true_verdict": 0.75}
    assert table["true_objects"].tolist() == [1, 2, 1, 2, 2]
    assert summary["objects"]["true"]["objects"] == 2
    assert summary["objects"]["predicted"]["orientation_order"] == pytest.approx(0.0)  # 0 and 90 degrees


def test_density_correlation_and_undefined_statistics():
    rng = np.random.default_rng(0)
    true = rng.random((6, 16, 16)) < np.linspace(0.1, 0.6, 6)[:, None, None]
    pred = true.copy()
    pred[:, :2] = True  # a band of false alarms on every image: biased but still ordered
    summary = morphology_agreement(morphology_table(pred, true, ["bundle"] * 6))
    assert summary["density"]["spearman_rho"] == pytest.approx(1.0)
    assert summary["density"]["pearson_r"] > 0.95
    assert summary["density"]["mean_abs_error"] > 0
    assert summary["percolation"]["images"] == 0 and summary["percolation"]["agreement_predicted"] is None
    empty = morphology_agreement(morphology_table(np.zeros((3, 8, 8), bool), true[:3, :8, :8], ["network"] * 3))
    assert empty["density"]["pearson_r"] is None  # a constant prediction has no correlation
    assert empty["objects"]["predicted"]["median_length"] is None
    with pytest.raises(ValueError, match="differ in shape"):
        morphology_table(pred[:, :8], true, ["bundle"] * 6)


def test_overlay_figure_writes_a_png(tmp_path):
    image = np.random.default_rng(1).random((32, 32), dtype=np.float32)
    path = overlay_figure(image, _network(), _dispersed(), tmp_path / "sub" / "overlay.png", "network example")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size[0] > png.size[1] > 100
    with pytest.raises(ValueError, match="shapes differ"):
        overlay_figure(image, _network(16), _network(), tmp_path / "x.png", "bad")
