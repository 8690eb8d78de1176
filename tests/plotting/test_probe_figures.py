import numpy as np
import pandas as pd
import pytest

from nanomorph.plotting.probe import accuracy_boxplot, confusion_grid, tsne_embedding, tsne_figure

CLASSES = ["bundle", "dispersed", "network", "singular"]


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_boxplot_and_confusion_grid(tmp_path):
    rng = np.random.default_rng(0)
    table = pd.DataFrame([{"encoder": m, "n": n, "accuracy": rng.random()} for m in ("a", "a+knn", "b")
                          for n in (1, 8) for _ in range(6)])
    assert _is_png(accuracy_boxplot(table, tmp_path / "box.png"))
    matrices = {m: rng.integers(0, 20, (4, 4)) for m in ("a", "a+knn", "b", "c")}
    assert _is_png(confusion_grid(matrices, CLASSES, 8, tmp_path / "sub" / "confusion.png"))


def test_tsne_is_seeded_and_checks_perplexity(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.array(CLASSES), 10)
    features = rng.normal(size=(40, 16)) + 4 * np.eye(16)[np.repeat(np.arange(4), 10)]
    a = tsne_embedding(features, seed=0, perplexity=5)
    np.testing.assert_allclose(a, tsne_embedding(features, seed=0, perplexity=5))
    assert a.shape == (40, 2)
    with pytest.raises(ValueError, match="perplexity"):
        tsne_embedding(features, seed=0, perplexity=40)
    path = tsne_figure(a, labels, labels[::-1], np.array([0, 10, 20, 30]), CLASSES, "toy", tmp_path / "t.png")
    assert _is_png(path)
