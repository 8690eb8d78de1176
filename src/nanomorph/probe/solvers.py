"""One entry point for fitting many linear probes: the batched solver, scikit-learn per probe, or the paper's.

* `batched` (default): every probe at once, exact Newton in the dual form in float64 (`nanomorph.probe.batched`).
* `sklearn`: one scikit-learn `LogisticRegression` per probe (`fit_linear_probe`), the reference the batched
  solver is tested against; same objective, same C, same gradient tolerance.
* `paper`: the paper's training of its probe, one probe at a time: a torch linear softmax layer, Adam
  (lr 1e-3), mini-batches of 4, a fixed 300 epochs, no weight decay and no early stopping. Its solution is
  not the L2-regularised optimum (there is no L2 term; the fixed budget is its regulariser), so its
  accuracies differ from the other two.

All three standardise each probe's features with statistics of its own training rows and predict classes
as integer codes. A probe trained on a single class predicts that class (the softmax optimum with one
class); the batched and paper solvers leave classes without a training row out of the softmax.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from nanomorph.probe.batched import ProbeTask, solve_probes
from nanomorph.probe.linear import fit_linear_probe

SOLVERS = ("batched", "sklearn", "paper")


@dataclass(frozen=True)
class SolverSettings:
    solver: str = "batched"
    C: float = 1.0
    tol: float = 1e-8
    max_iter: int = 1000
    paper_lr: float = 1e-3
    paper_batch_size: int = 4
    paper_epochs: int = 300

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown probe solver '{self.solver}' (choose from {', '.join(SOLVERS)})")


def paper_probe_predict(X_fit: np.ndarray, y_fit: np.ndarray, X_pred: np.ndarray, n_classes: int,
                        lr: float = 1e-3, batch_size: int = 4, epochs: int = 300, seed: int = 0) -> np.ndarray:
    """The paper's probe: standardise on the training rows, train nn.Linear with Adam on shuffled
    mini-batches for a fixed number of epochs (float32, seeded init and order), predict class codes."""
    scaler = StandardScaler().fit(np.asarray(X_fit, dtype=np.float64))
    Xf = torch.from_numpy(scaler.transform(np.asarray(X_fit, dtype=np.float64)).astype(np.float32))
    Xp = torch.from_numpy(scaler.transform(np.asarray(X_pred, dtype=np.float64)).astype(np.float32))
    yf = torch.from_numpy(np.asarray(y_fit, dtype=np.int64))
    present = torch.zeros(n_classes, dtype=torch.bool)
    present[yf] = True
    absent_bias = torch.zeros(n_classes).masked_fill(~present, float("-inf"))
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = torch.nn.Linear(Xf.shape[1], n_classes)
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(Xf), generator=generator)
            for start in range(0, len(Xf), batch_size):
                batch = order[start : start + batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(layer(Xf[batch]) + absent_bias, yf[batch])
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        return (layer(Xp) + absent_bias).argmax(1).numpy()


def _sklearn_predict(X_fit, y_fit, X_pred, settings: SolverSettings, seed: int) -> np.ndarray:
    present = np.unique(y_fit)
    if len(present) == 1:
        return np.full(len(X_pred), present[0])
    probe = fit_linear_probe(X_fit, y_fit, C=settings.C, max_iter=settings.max_iter, seed=seed, tol=settings.tol,
                             solver="lbfgs")
    return probe.predict(np.asarray(X_pred, dtype=np.float64))


def fit_predict(feature_sets: Mapping[object, np.ndarray], codes: np.ndarray, n_classes: int,
                tasks: Sequence[ProbeTask], settings: SolverSettings, progress: bool = False,
                desc: str = "probes") -> list[np.ndarray]:
    """Predicted class codes of every task's `predict_idx` rows, aligned with `tasks`."""
    codes = np.asarray(codes)
    if settings.solver == "batched":
        return solve_probes(feature_sets, codes, n_classes, tasks, C=settings.C, tol=settings.tol,
                            max_iter=settings.max_iter, progress=progress, desc=desc).predictions
    predictions = []
    for task in tqdm(tasks, desc=desc, disable=not progress, leave=False):
        X = np.asarray(feature_sets[task.features])
        X_fit, y_fit, X_pred = X[task.fit_idx], codes[task.fit_idx], X[task.predict_idx]
        if settings.solver == "sklearn":
            predictions.append(_sklearn_predict(X_fit, y_fit, X_pred, settings, task.seed))
        else:
            predictions.append(paper_probe_predict(X_fit, y_fit, X_pred, n_classes, settings.paper_lr,
                                                   settings.paper_batch_size, settings.paper_epochs, task.seed))
    return predictions
