"""Tuning study, step 2: few-shot probe accuracy of the encoders in WORK under feature readouts (tuning data).

Readouts: layer3+4 global-average-pooled features at 64 px (the probe stage's), averaged over the 8
rotations/flips (`/d4`), and of the four 64 px tiles of the 128 px image (`/tiles`). Probe: StandardScaler on
the labelled rows + L2 softmax regression (C = 1), split seeds 1000-1019, n = 1, 2, 4, 8 labels per class;
median test accuracy. Beside the classical features and a random-init encoder.

    python benchmarks/tune_views/readouts.py WORK barlow_twins-paper0.5-1.0 [threads] [d4only]

`all` for every encoder in WORK; `d4only` scores only the `/d4` readout (the probe stage's), and adds the
concatenated `/d4` features of each pair of the listed encoders (`a+b`).
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nanomorph.models.encoder import load_encoder, random_encoder
from nanomorph.probe.classical import classical_features
from nanomorph.probe.features import extract_features
from nanomorph.probe.linear import fit_linear_probe
from nanomorph.probe.splits import as_rule, nested_label_subsets

WORK = Path(sys.argv.pop(1))
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
z = np.load(WORK / "stacks.npz")
labels, whole, big = z["labels"], z["t64"], z["task"]  # 64 px (the probe stage's size) and 128 px stacks
SIZES, SEEDS, STAGES = [1, 2, 4, 8], range(1000, 1020), ("layer3", "layer4")


def tiles(encoder, dihedral: bool) -> np.ndarray:
    """Mean features of the four 64 px tiles of each 128 px image."""
    parts = [extract_features(encoder, np.ascontiguousarray(big[:, r : r + 64, c : c + 64]), stages=STAGES,
                              dihedral=dihedral) for r in (0, 64) for c in (0, 64)]
    return sum(parts) / 4


def median_accuracy(features: np.ndarray) -> dict[int, float]:
    scores = {n: [] for n in SIZES}
    for seed in SEEDS:
        train, test = as_rule(0.2).train_test(labels, seed)
        for n, fit in nested_label_subsets(labels, train, SIZES, seed).items():
            probe = fit_linear_probe(features[fit], labels[fit], C=1.0, max_iter=2000)
            scores[n].append(float((probe.predict(features[test]) == labels[test]).mean()))
    return {n: float(np.median(v)) for n, v in scores.items()}


sets = {"classical": classical_features(whole)}
encoders = {"random": random_encoder("resnet18", 0)}
for path in sorted(WORK.glob("*.pt")):
    if sys.argv[1] == "all" or path.stem in sys.argv[1].split(","):
        encoders[path.stem] = load_encoder(path)[0]
D4_ONLY = len(sys.argv) > 3 and sys.argv[3] == "d4only"
for name, encoder in encoders.items():
    for dihedral in ((True,) if D4_ONLY else (False, True)):
        key = name + ("/d4" if dihedral else "")
        sets[key] = extract_features(encoder, whole, stages=STAGES, dihedral=dihedral)
        if D4_ONLY:
            continue
        sets[f"{key}/tiles"] = tiles(encoder, dihedral)
        sets[f"{key}/whole+tiles"] = np.concatenate([sets[key], sets[f"{key}/tiles"]], 1)
if D4_ONLY:
    learned = [n for n in encoders if n != "random"]
    for i, a in enumerate(learned):
        for b in learned[i + 1:]:
            sets[f"{a}+{b}/d4"] = np.concatenate([sets[f"{a}/d4"], sets[f"{b}/d4"]], 1)
rows = []
for name, features in sets.items():
    row = median_accuracy(features)
    rows.append({"set": name, "scaler": "labelled", **row, "mean": float(np.mean(list(row.values())))})
    print(rows[-1], flush=True)
print(pd.DataFrame(rows).round(3).to_string())
