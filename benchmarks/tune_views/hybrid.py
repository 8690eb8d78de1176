"""Tuning study, round 4c: SSL + classical features with the classical block weighted, on TUNING data (seed 1).

Round 3 concatenated the standardised encoder features (768 columns for layer3 + layer4) with the 17
standardised classical ones: the classical block then holds ~2 % of the squared norm, so the L2 probe barely uses
it. Here the classical block is multiplied by w * sqrt(D_encoder / D_classical) (w = 0: encoder alone; w = 1:
both blocks with equal expected squared norm) after each block is standardised on the probe's labelled rows, as
the probe stage does. `late@a`: two probes, one per block, their class probabilities averaged with weight a on
the classical probe's (late fusion; each probe standardised on its labelled rows). The random-init encoder gets the same treatment, as the control for "is it the encoder
or the classical block". Split seeds 1000-1019, n = 1, 2, 4, 8, median test accuracy, L2 softmax, C = 1.

    python benchmarks/tune_views/hybrid.py WORK simclr-paper0.5-1.0
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
from protocol import median_accuracy, tuning_stacks

warnings.filterwarnings("ignore")
WORK = sys.argv.pop(1)
torch.set_num_threads(2)
labels, whole = tuning_stacks(WORK)
WEIGHTS, LATE = [0.0, 0.5, 1.0, 2.0], [0.25, 0.5]
classical = classical_features(whole).astype(np.float64)


def score(F, w):
    scale = w * np.sqrt(F.shape[1] / classical.shape[1])

    def predict(train, fit, test):
        blocks = [StandardScaler().fit(F[fit]).transform(F)]
        if w > 0:
            blocks.append(scale * StandardScaler().fit(classical[fit]).transform(classical))
        Z = np.concatenate(blocks, 1)
        return LogisticRegression(C=1.0, max_iter=3000).fit(Z[fit], labels[fit]).predict(Z[test])

    return median_accuracy(labels, predict)


def probabilities(X, fit, test):
    sc = StandardScaler().fit(X[fit])
    model = LogisticRegression(C=1.0, max_iter=3000).fit(sc.transform(X[fit]), labels[fit])
    return model.predict_proba(sc.transform(X[test])), model.classes_


def score_late(F, a):
    def predict(train, fit, test):
        (pf, classes), (pc, _) = probabilities(F, fit, test), probabilities(classical, fit, test)
        return classes[np.argmax((1 - a) * pf + a * pc, 1)]

    return median_accuracy(labels, predict)


for name, enc in [("random", random_encoder("resnet18", 0))] + [(n, load_encoder(f"{WORK}/{n}.pt")[0])
                                                                 for n in sys.argv[1].split(",")]:
    F = extract_features(enc, whole, stages=("layer3", "layer4"), dihedral=True).astype(np.float64)
    for w in WEIGHTS:
        med, mean = score(F, w)
        print(f"{name:22s} w={w:<4g}", med, "mean", mean, flush=True)
    for a in LATE:
        med, mean = score_late(F, a)
        print(f"{name:22s} late@{a:<4g}", med, "mean", mean, flush=True)
