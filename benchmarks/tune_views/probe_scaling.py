"""Tuning study, round 4: where the probe's feature scaling comes from, on TUNING data (generator seed 1).

The probe stage standardises each probe on its own labelled rows: at 1 label per class that is a mean and a
variance per feature from 4 images. Variants (every one scored on every feature set, so the classical and
random-init baselines get the same probe):
  `probe`    StandardScaler on the labelled rows (the stage's rule) + L2 softmax regression, C = 1
  `pool`     StandardScaler on the split's whole TRAIN part, labels unused (never its test part), + the same
  `pool+l2`  `pool`, then each row scaled to norm sqrt(D) (cosine geometry at the same scale)
  `sqrt+pool` square root of the (non-negative) encoder features first, then `pool` (encoders only)
  `ncm`      nearest class mean in the `pool+l2` space (SimpleShot's CL2N)
`pool@C` repeats `pool` with C in {0.1, 10}. Split seeds 1000-1019, n = 1, 2, 4, 8; median test accuracy.
WORK holds stacks.npz (pretrain_variants.py) and <encoder>.pt.

    python benchmarks/tune_views/probe_scaling.py WORK simclr-paper0.5-1.0
"""
import sys
import warnings

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from nanomorph.models.encoder import load_encoder, random_encoder
from nanomorph.probe.classical import classical_features
from nanomorph.probe.features import extract_features
from protocol import median_accuracy, probe_rule, tuning_stacks

warnings.filterwarnings("ignore")
WORK = sys.argv.pop(1)
torch.set_num_threads(1)
labels, whole = tuning_stacks(WORK)
STAGES = ("layer3", "layer4")
sets = {"classical": classical_features(whole).astype(np.float64)}
for name, enc in [("random", random_encoder("resnet18", 0))] + [(n, load_encoder(f"{WORK}/{n}.pt")[0])
                                                                 for n in sys.argv[1].split(",")]:
    sets[name] = extract_features(enc, whole, stages=STAGES, dihedral=True).astype(np.float64)


def l2(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True).clip(1e-12) * np.sqrt(X.shape[1])


def predict(how, X, train, fit, test, C=1.0):
    y = labels[fit]
    if how == "probe":
        return probe_rule(X, labels, fit, test, C)
    if how.startswith("sqrt"):
        X = np.sqrt(np.clip(X, 0, None))
    sc = StandardScaler().fit(X[train])
    Z = sc.transform(X)
    if how in ("pool+l2", "ncm"):
        Z = l2(Z)
    if how == "ncm":
        classes = np.unique(y)
        centroids = np.stack([Z[fit][y == c].mean(0) for c in classes])
        return classes[np.argmax(l2(Z[test]) @ l2(centroids).T, 1)]
    return LogisticRegression(C=C, max_iter=3000).fit(Z[fit], y).predict(Z[test])


VARIANTS = [("probe", 1.0), ("pool", 1.0), ("pool", 0.1), ("pool", 10.0), ("pool+l2", 1.0), ("sqrt+pool", 1.0),
            ("ncm", 1.0)]
for name, X in sets.items():
    for how, C in VARIANTS:
        if how.startswith("sqrt") and name == "classical":
            continue
        med, mean = median_accuracy(labels, lambda train, fit, test: predict(how, X, train, fit, test, C))
        print(f"{name:22s} {how}@{C:g}", med, "mean", mean, flush=True)
