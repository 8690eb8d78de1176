"""Round 7 readout on TUNING data: how far labels alone take each representation (n = 80 per class, the whole
train part), and where the errors fall (confusion pooled over split seeds 1000-1019 at n = 8 and 80).

    python benchmarks/tune_views/ceiling.py WORK simclr-task30
"""
import json
import sys

import numpy as np

from protocol import SEEDS, probe_rule, tuning_stacks
from nanomorph.models.encoder import load_encoder
from nanomorph.probe.classical import classical_features
from nanomorph.probe.features import extract_features
from nanomorph.probe.splits import as_rule, nested_label_subsets

work, name = sys.argv[1], sys.argv[2]
labels, images = tuning_stacks(work)
classes = list(np.unique(labels))
encoder, _ = load_encoder(f"{work}/{name}.pt")
readouts = {name: extract_features(encoder, images, stages=("layer3", "layer4"), dihedral=True),
            "classical": classical_features(images)}
results = {}
for key, Z in readouts.items():
    for n in (8, 80):
        accuracy, confusion = [], np.zeros((4, 4), int)
        for seed in SEEDS:
            train, test = as_rule(0.2).train_test(labels, seed)
            predicted = probe_rule(Z, labels, nested_label_subsets(labels, train, [n], seed)[n], test)
            accuracy.append(float((predicted == labels[test]).mean()))
            np.add.at(confusion, (np.searchsorted(classes, labels[test]), np.searchsorted(classes, predicted)), 1)
        results[f"{key}/n{n}"] = {"median_accuracy": round(float(np.median(accuracy)), 4),
                                  "confusion (rows true, columns predicted)": confusion.tolist()}
        print(key, n, results[f"{key}/n{n}"], flush=True)
results["classes"] = classes
json.dump(results, open(f"{work}/ceiling_{name}.json", "w"), indent=1)
