import numpy as np
import pytest

from nanomorph.probe.batched import ProbeTask
from nanomorph.probe.solvers import SolverSettings, fit_predict, paper_probe_predict


def _blobs(n_per_class, seed, dim=16, spread=0.7):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(0, 2, (4, dim))
    y = np.repeat(np.arange(4), n_per_class)
    return (centres[y] + rng.normal(0, spread, (len(y), dim))).astype(np.float32), y


def test_paper_probe_learns_and_is_seeded():
    X_fit, y_fit = _blobs(4, seed=0)
    X_test, y_test = _blobs(30, seed=1)
    pred = paper_probe_predict(X_fit, y_fit, X_test, 4, lr=1e-2, epochs=60, seed=3)
    assert (pred == y_test).mean() > 0.9
    np.testing.assert_array_equal(pred, paper_probe_predict(X_fit, y_fit, X_test, 4, lr=1e-2, epochs=60, seed=3))


def test_paper_probe_runs_a_fixed_number_of_epochs():
    """Fixed epochs, no early stopping: more epochs move the weights further from their seeded init, so one
    epoch and many epochs give different probes on hard, overlapping data."""
    X_fit, y_fit = _blobs(5, seed=2, spread=3.0)
    X_test, _ = _blobs(50, seed=3, spread=3.0)
    one = paper_probe_predict(X_fit, y_fit, X_test, 4, lr=1e-2, epochs=1, seed=0)
    many = paper_probe_predict(X_fit, y_fit, X_test, 4, lr=1e-2, epochs=40, seed=0)
    assert (one != many).any()


def test_paper_probe_never_predicts_a_class_without_training_rows():
    X_fit, y_fit = _blobs(3, seed=4)
    keep = y_fit != 2
    X_test, _ = _blobs(20, seed=5)
    pred = paper_probe_predict(X_fit[keep], y_fit[keep], X_test, 4, lr=1e-2, epochs=20, seed=0)
    assert 2 not in pred


@pytest.mark.parametrize("solver", ["batched", "sklearn", "paper"])
def test_fit_predict_every_solver(solver):
    X, y = _blobs(20, seed=6)
    tasks = [ProbeTask("f", np.concatenate([np.flatnonzero(y == k)[first:first + 3] for k in range(4)]),
                       np.arange(len(y)), seed=first) for first in (0, 3)]
    settings = SolverSettings(solver=solver, paper_lr=1e-2, paper_epochs=30)
    preds = fit_predict({"f": X}, y, 4, tasks, settings)
    assert len(preds) == 2 and all(len(p) == len(y) for p in preds)
    assert all((p == y).mean() > 0.85 for p in preds)


def test_single_class_probe_predicts_that_class_and_unknown_solver_fails():
    X, y = _blobs(5, seed=7)
    task = ProbeTask("f", np.array([0, 1, 2]), np.arange(10))
    for solver in ("batched", "sklearn"):
        (pred,) = fit_predict({"f": X}, y, 4, [task], SolverSettings(solver=solver))
        assert (pred == y[0]).all()
    with pytest.raises(ValueError, match="unknown probe solver"):
        SolverSettings(solver="sgd")
