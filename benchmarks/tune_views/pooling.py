"""Tuning study, round 4b: how the encoder's feature maps are pooled, on TUNING data (generator seed 1).

The probe reads the global AVERAGE of each ResNet stage's map (layer3 + layer4, averaged over the 8
rotations/flips). Network and dispersed films differ in connectivity rather than in local texture, which an
average can wash out; variants keep more of the map's spatial statistics:
  `avg`      the stage's readout (the reference)
  `max`      global max pooling
  `avg+max`  both, concatenated
  `avg+std`  mean and standard deviation of each channel over the map
  `gem3`     generalised mean, p = 3 (between average and max)
Every variant is scored with the probe stage's rule (StandardScaler on the labelled rows, L2 softmax
regression, C = 1) on split seeds 1000-1019, n = 1, 2, 4, 8 (median test accuracy), for the random-init
encoder and the pretrained ones; the classical features are printed once for reference. WORK holds
stacks.npz (pretrain_variants.py) and <encoder>.pt. Also prints the pooled confusion matrix at n = 8.

    python benchmarks/tune_views/pooling.py WORK simclr-paper0.5-1.0
"""
import sys
import warnings

import numpy as np
import torch
from sklearn.metrics import confusion_matrix

from nanomorph.models.dihedral import SYMMETRIES, turn
from nanomorph.models.encoder import STAGES, load_encoder, normalise, random_encoder
from nanomorph.probe.classical import classical_features
from protocol import median_accuracy, probe_rule, tuning_stacks

warnings.filterwarnings("ignore")
WORK = sys.argv.pop(1)
torch.set_num_threads(2)
labels, whole = tuning_stacks(WORK)
READ = ("layer3", "layer4")
POOLS = {
    "avg": lambda m: m.mean((2, 3)),
    "max": lambda m: m.amax((2, 3)),
    "avg+max": lambda m: torch.cat([m.mean((2, 3)), m.amax((2, 3))], 1),
    "avg+std": lambda m: torch.cat([m.mean((2, 3)), m.std((2, 3))], 1),
    "gem3": lambda m: m.clamp_min(1e-6).pow(3).mean((2, 3)).pow(1 / 3),
}


def stage_maps(encoder, x):
    """The named stages' feature maps of a normalised batch (the encoder's own forward order)."""
    trunk, maps = encoder.trunk, {}
    h = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(x))))
    for name in STAGES:
        h = getattr(trunk, name)(h)
        if name in READ:
            maps[name] = h
    return [maps[s] for s in READ]


def pooled(encoder):
    encoder.eval()
    out = {p: [] for p in POOLS}
    with torch.no_grad():
        for start in range(0, len(whole), 50):
            batch = normalise(torch.from_numpy(whole[start:start + 50].astype(np.float32)).unsqueeze(1))
            acc = {p: 0 for p in POOLS}
            for flip, k in SYMMETRIES:
                maps = stage_maps(encoder, turn(batch, flip, k))
                for p, fn in POOLS.items():
                    acc[p] = acc[p] + torch.cat([fn(m) for m in maps], 1)
            for p in POOLS:
                out[p].append((acc[p] / len(SYMMETRIES)).numpy())
    return {p: np.concatenate(v).astype(np.float64) for p, v in out.items()}


def score(X, keep_confusion=False):
    conf = [0]

    def pool_confusion(n, test, predicted):
        if keep_confusion and n == 8:
            conf[0] = conf[0] + confusion_matrix(labels[test], predicted, labels=np.unique(labels))

    med, mean = median_accuracy(labels, lambda train, fit, test: probe_rule(X, labels, fit, test), pool_confusion)
    return med, mean, conf[0]


med, mean, conf = score(classical_features(whole).astype(np.float64), True)
print(f"{'classical':22s} {'-':8s}", med, "mean", mean, flush=True)
print("classes", np.unique(labels).tolist(), "confusion n=8 (rows true):\n", conf, flush=True)
for name, enc in [("random", random_encoder("resnet18", 0))] + [(n, load_encoder(f"{WORK}/{n}.pt")[0])
                                                                 for n in sys.argv[1].split(",")]:
    for p, X in pooled(enc).items():
        med, mean, conf = score(X, p == "avg")
        print(f"{name:22s} {p:8s}", med, "mean", mean, flush=True)
        if p == "avg":
            print("confusion n=8 (rows true):\n", conf, flush=True)
