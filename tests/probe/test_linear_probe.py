import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from nanomorph.probe.linear import fit_linear_probe, knn_probe


def _blobs(n_per_class, seed, dim=16, spread=0.5):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(0, 3, (4, dim))
    y = np.repeat(np.array(["a", "b", "c", "d"]), n_per_class)
    X = centres[np.repeat(np.arange(4), n_per_class)] + rng.normal(0, spread, (len(y), dim))
    return X.astype(np.float32), y


def test_linear_probe_separates_blobs():
    X_train, y_train = _blobs(8, seed=0)
    X_test, y_test = _blobs(50, seed=1)
    probe = fit_linear_probe(X_train, y_train, seed=0)
    assert (probe.predict(X_test) == y_test).mean() > 0.95


def test_standardisation_is_fitted_on_training_features_only():
    X_train, y_train = _blobs(5, seed=0)
    X_test, _ = _blobs(20, seed=1)
    X_test = X_test * 100 + 50  # a test set on a very different scale must not move the scaler
    probe = fit_linear_probe(X_train, y_train)
    scaler = probe.named_steps["scale"]
    np.testing.assert_allclose(scaler.mean_, X_train.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scaler.scale_, X_train.std(0), rtol=1e-4)
    # Prediction is row-wise: a row's prediction does not depend on the other test rows (no refit).
    together = probe.predict_proba(X_test)
    alone = np.vstack([probe.predict_proba(X_test[i : i + 1]) for i in range(len(X_test))])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scaler.mean_, X_train.mean(0), rtol=1e-5, atol=1e-5)


def test_linear_probe_is_softmax_over_all_classes():
    X_train, y_train = _blobs(3, seed=0)
    probe = fit_linear_probe(X_train, y_train)
    proba = probe.predict_proba(X_train)
    assert proba.shape == (12, 4)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("classes,dim", [(2, 40), (3, 6), (4, 64)])
def test_newton_dual_fit_is_scikit_learns_optimum(classes, dim):
    # Wider and narrower than the training rows, binary (scikit-learn's own binary loss) and multinomial:
    # the dual solver's fit must be the model lbfgs converges to, down to the predicted probabilities.
    rng = np.random.default_rng(classes)
    y = np.repeat(np.arange(classes), 10).astype(str)
    X = rng.normal(size=(len(y), dim)) + rng.normal(size=(classes, dim))[np.repeat(np.arange(classes), 10)] * 0.4
    X_test = rng.normal(size=(100, dim)) * 1.5
    dual = fit_linear_probe(X, y, C=0.5, tol=1e-9)
    reference = fit_linear_probe(X, y, C=0.5, tol=1e-11, max_iter=50000, solver="lbfgs")
    assert dual[-1].coef_.shape == reference[-1].coef_.shape and list(dual.classes_) == list(reference.classes_)
    np.testing.assert_array_equal(dual.predict(X_test), reference.predict(X_test))
    np.testing.assert_allclose(dual.predict_proba(X_test), reference.predict_proba(X_test), atol=1e-5)
    np.testing.assert_allclose(dual[-1].coef_, reference[-1].coef_, atol=1e-5)


def test_newton_dual_warns_when_stopped_early_and_rejects_bad_input():
    X, y = _blobs(5, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe = fit_linear_probe(X, y, tol=1e-12, max_iter=1)
    assert [w.category for w in caught] == [ConvergenceWarning]
    assert probe[-1].n_iter_.tolist() == [1]
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_linear_probe(X[:5], y[:5])
    with pytest.raises(ValueError, match="unknown linear probe solver 'adam'"):
        fit_linear_probe(X, y, solver="adam")


def test_knn_caps_k_and_classifies_blobs():
    X_train, y_train = _blobs(1, seed=0)
    clf = knn_probe(X_train, y_train)
    assert clf.n_neighbors == 4
    # With one example per class all four are neighbours; the nearest must still win (no tie to class "a").
    X_test, y_test = _blobs(30, seed=2)
    assert (clf.predict(X_test) == y_test).mean() > 0.9
    X_big, y_big = _blobs(10, seed=0)
    clf = knn_probe(X_big, y_big)
    assert clf.n_neighbors == 5 and clf.metric == "cosine"
    X_test, y_test = _blobs(30, seed=2)
    assert (clf.predict(X_test) == y_test).mean() > 0.9


def test_extract_features_eval_mode_batch_invariant_and_normalised():
    import pytest
    import torch

    from nanomorph.models.encoder import normalise, random_encoder
    from nanomorph.probe.features import extract_features

    encoder = random_encoder("resnet18", seed=0)
    encoder.train()
    images = np.random.default_rng(0).random((5, 32, 32), dtype=np.float32)
    feats = extract_features(encoder, images, batch_size=2)
    assert feats.shape == (5, 512) and feats.dtype == np.float32
    assert encoder.training  # caller's mode restored
    # Eval-mode BatchNorm: a row's features do not depend on its batch-mates.
    np.testing.assert_allclose(extract_features(encoder, images, batch_size=64), feats, rtol=1e-4, atol=1e-5)
    encoder.eval()
    with torch.no_grad():
        expected = encoder(normalise(torch.from_numpy(images[:1]).unsqueeze(1))).numpy()
    np.testing.assert_allclose(feats[:1], expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        extract_features(encoder, images[:, None])


def test_dihedral_features_are_invariant_to_rotations_and_flips_and_are_the_mean_of_eight():
    import torch

    from nanomorph.models.encoder import normalise, random_encoder
    from nanomorph.probe.features import extract_features

    encoder = random_encoder("resnet18", seed=0)
    images = np.random.default_rng(0).random((3, 32, 32), dtype=np.float32)
    plain = extract_features(encoder, images, stages=("layer3", "layer4"))
    averaged = extract_features(encoder, images, stages=("layer3", "layer4"), dihedral=True)
    turned = extract_features(encoder, np.ascontiguousarray(np.rot90(images, 1, axes=(1, 2))),
                              stages=("layer3", "layer4"), dihedral=True)
    flipped = extract_features(encoder, np.ascontiguousarray(images[:, :, ::-1]), stages=("layer3", "layer4"),
                               dihedral=True)
    np.testing.assert_allclose(turned, averaged, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(flipped, averaged, rtol=1e-4, atol=1e-5)
    assert not np.allclose(plain, averaged, atol=1e-3)  # a random CNN is not invariant by itself
    x = torch.from_numpy(images).unsqueeze(1)
    views = [torch.rot90(v, k, dims=(-2, -1)) for v in (x, x.flip(-1)) for k in range(4)]
    encoder.eval()
    with torch.no_grad():
        expected = torch.stack([encoder.pooled_stages(normalise(v), ("layer3", "layer4")) for v in views]).mean(0)
    np.testing.assert_allclose(averaged, expected.numpy(), rtol=1e-4, atol=1e-5)
