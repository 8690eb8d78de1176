"""Round 5 readouts on TUNING data: the side the probe's features are extracted at, and which ResNet stages.

Reads WORK/stacks.npz (generator seed 1, written by pretrain_variants.py) and the encoder WORK/<name>.pt;
scores every variant with the probe stage's rule (benchmarks/tune_views/protocol.py: split seeds 1000-1019,
n = 1, 2, 4, 8, median test accuracy and their mean). A variant is `side/stage+stage`, features averaged over
the 8 rotations/flips; `a|b` concatenates two readouts. Results to WORK/feature_scale_<name>.json.

    python benchmarks/tune_views/feature_scale.py WORK simclr-task30 "64/layer3+layer4,128/layer3+layer4,64/layer3+layer4|128/layer3+layer4"
"""
import json
import sys

import numpy as np
import torch

from protocol import median_accuracy, probe_rule
from nanomorph.models.encoder import load_encoder
from nanomorph.probe.features import extract_features

work, name, variants = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
stacks = np.load(f"{work}/stacks.npz")
labels, by_side = stacks["labels"], {64: stacks["t64"], 128: stacks["task"]}
encoder, _ = load_encoder(f"{work}/{name}.pt")
cache: dict[str, np.ndarray] = {}


def readout(key: str) -> np.ndarray:
    if key not in cache:
        side, stages = key.split("/")
        side = int(side)
        images = by_side.get(side)
        if images is None:  # any other side: the 128 px stack resized, as the stage's loader would
            images = torch.nn.functional.interpolate(torch.from_numpy(by_side[128])[:, None], size=side,
                                                     mode="bilinear", antialias=True)[:, 0].numpy()
        cache[key] = extract_features(encoder, images, stages=tuple(stages.split("+")), dihedral=True)
    return cache[key]


results = {}
for variant in variants:
    Z = np.concatenate([readout(k) for k in variant.split("|")], axis=1)
    med, mean = median_accuracy(labels, lambda train, fit, test: probe_rule(Z, labels, fit, test))
    results[variant] = {**med, "mean": mean}
    print(name, variant, med, mean, flush=True)
json.dump(results, open(f"{work}/feature_scale_{name}.json", "w"), indent=1)
