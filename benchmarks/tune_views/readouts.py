"""Tuning study, step 2: few-shot probe accuracy of the encoders in WORK under feature readouts (tuning data).

Readouts: layer3+4 global-average-pooled features at 64 px (the probe stage's), averaged over the 8
rotations/flips (`/d4`), and of the four 64 px tiles of the 128 px image (`/tiles`). Probe: StandardScaler on
the labelled rows + L2 softmax regression (C = 1), split seeds 1000-1019, n = 1, 2, 4, 8 labels per class;
median test accuracy. Beside the classical features and a random-init encoder.

    python benchmarks/tune_views/readouts.py WORK barlow_twins-paper0.5-1.0 [threads]
"""
import sys
from pathlib import Path
import numpy as np, torch, pandas as pd
from sklearn.linear_model import LogisticRegression
from nanomorph.models.encoder import load_encoder, random_encoder, normalise
from nanomorph.probe.classical import classical_features
from nanomorph.probe.splits import as_rule, nested_label_subsets

WORK = Path(sys.argv.pop(1))
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
z = np.load(WORK / "stacks.npz"); labels = z["labels"]; imgs = z["t64"]
SIZES = [1, 2, 4, 8]; SEEDS = range(1000, 1020)

def maps(enc, x):
    t = enc.trunk; out = {}
    x = t.maxpool(t.relu(t.bn1(t.conv1(x))))
    for name in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(t, name)(x); out[name] = x
    return out

def feats(enc, images, d4=False, std=False, stages=("layer3", "layer4")):
    enc.eval(); rows = []
    with torch.no_grad():
        x = normalise(torch.from_numpy(images).unsqueeze(1))
        variants = [x] if not d4 else [torch.rot90(v, k, (-2, -1)) for v in (x, x.flip(-1)) for k in range(4)]
        acc = 0
        for v in variants:
            m = maps(enc, v); parts = []
            for s in stages:
                parts.append(m[s].mean((-2, -1)))
                if std: parts.append(m[s].std((-2, -1)))
            acc = acc + torch.cat(parts, 1)
        return (acc / len(variants)).numpy()

def evaluate(F, scaler="labelled", C=1.0):
    res = {n: [] for n in SIZES}
    rule = as_rule(0.2)
    for seed in SEEDS:
        tr, te = rule.train_test(labels, seed)
        for n, fit in nested_label_subsets(labels, tr, SIZES, seed).items():
            ref = F[fit] if scaler == "labelled" else F[tr]
            mu, sd = ref.mean(0), ref.std(0); sd[sd < 1e-8] = 1
            clf = LogisticRegression(C=C, max_iter=2000).fit((F[fit] - mu) / sd, labels[fit])
            res[n].append((clf.predict((F[te] - mu) / sd) == labels[te]).mean())
    return {n: float(np.median(v)) for n, v in res.items()}

MODES = sys.argv[3:] if len(sys.argv) > 3 else []
sets = {"classical": classical_features(imgs)}
if "classical128" in MODES: sets["classical128"] = classical_features(z["task"])
encs = {"random": random_encoder("resnet18", 0)}
for path in sorted(WORK.glob("*.pt")):
    if sys.argv[1] == "all" or path.stem in sys.argv[1].split(","):
        encs[path.stem] = load_encoder(path)[0]
big = z["task"]
def tiles(enc, d4):
    parts = [feats(enc, np.ascontiguousarray(big[:, r:r+64, c:c+64]), d4) for r in (0, 64) for c in (0, 64)]
    return sum(parts) / 4
for name, enc in encs.items():
    if "classical" in MODES: break
    for d4 in (False, True):
        sets[f"{name}{'/d4' if d4 else ''}"] = feats(enc, imgs, d4)
        t = tiles(enc, d4)
        sets[f"{name}{'/d4' if d4 else ''}/tiles"] = t
        sets[f"{name}{'/d4' if d4 else ''}/whole+tiles"] = np.concatenate([sets[f"{name}{'/d4' if d4 else ''}"], t], 1)
rows = []
for name, F in sets.items():
    for scaler in ("labelled",):
        r = evaluate(F, scaler); r["mean"] = np.mean(list(r.values()))
        rows.append({"set": name, "scaler": scaler, **r})
        print(rows[-1], flush=True)
print(pd.DataFrame(rows).round(3).to_string())
