"""Tuning study, round 3: random-forest pixel classifiers vs the local threshold on TUNING data (generator seed 1).

Variants: `rf` scikit-image multiscale_basic_features (intensity, edges, texture, sigma 0.5-16) + a 100-tree
random forest (60k training pixels); `rfl` + Sauvola local-threshold residuals as features; `rfb` balanced class
weights; `rf+<encoder>` + the encoder's conv1/layer1/layer2 maps upsampled (hypercolumns; `random` for random
init); `local`/`otsu` the classical segmenters. Median test dice per (split seed, n). WORK holds seg_stacks.npz
(written by seg_variants.py) and the encoders. Not adopted (tune_views.json round 3).

    python benchmarks/tune_views/pixel_classifier.py WORK local,rf,rf+simclr-paper0.5-1.0-bf16 1,4,8 1001,1002
"""
import sys, time, json
from pathlib import Path
import numpy as np, torch
from skimage.feature import multiscale_basic_features
from sklearn.ensemble import RandomForestClassifier
from nanomorph.probe.splits import nested_subsets
from nanomorph.segment.classical import fit_classical
from nanomorph.segment.metrics import dice_iou
from nanomorph.segment.sweep import split_train_validation_test
from nanomorph.analysis.objects import label_objects
from nanomorph.models.encoder import load_encoder, normalise, random_encoder
torch.set_num_threads(2)
WORK = Path(sys.argv.pop(1))
cache = WORK / "seg_stacks.npz"  # the tuning stacks seg_variants.py writes (generator seed 1)
if not cache.exists():
    sys.exit(f"{cache} is missing: run benchmarks/tune_views/seg_variants.py WORK local@128 1 1001 first")
z = np.load(cache); X, M, labels = z["i128"], z["m128"], z["labels"]
variants = sys.argv[1].split(","); sizes = [int(v) for v in sys.argv[2].split(",")]
seeds = [int(v) for v in sys.argv[3].split(",")]

def basic(im, sigma_max=16):
    return multiscale_basic_features(im, intensity=True, edges=True, texture=True, sigma_min=0.5, sigma_max=sigma_max)

def hyper(enc, ims, stages=("conv1", "layer1", "layer2")):
    x = normalise(torch.from_numpy(ims.astype(np.float32)).unsqueeze(1))
    t = enc.trunk
    outs = []
    with torch.no_grad():
        h = t.relu(t.bn1(t.conv1(x)))
        if "conv1" in stages: outs.append(h)
        h = t.maxpool(h)
        for name in ("layer1", "layer2", "layer3"):
            h = getattr(t, name)(h)
            if name in stages: outs.append(h)
        up = [torch.nn.functional.interpolate(o, size=ims.shape[1:], mode="bilinear", align_corners=False) for o in outs]
    return torch.cat(up, 1).permute(0, 2, 3, 1).numpy()

encs = {}
def feats(v, ims):
    parts = []
    if v.startswith("rf"):
        parts.append(np.stack([basic(im) for im in ims]))
    if v.startswith("rfl"):
        from skimage.filters import threshold_sauvola
        parts.append(np.stack([np.stack([im - threshold_sauvola(im, window_size=w, k=k) for w in (15, 31, 63) for k in (0.05, 0.2)], -1) for im in ims]))
    if "+" in v:
        name = v.split("+")[1].rstrip("b")
        if name not in encs:
            encs[name] = random_encoder("resnet18", 0) if name == "random" else load_encoder(WORK / f"{name}.pt")[0]
            encs[name].eval()
        parts.append(hyper(encs[name], ims))
    return np.concatenate(parts, -1)

rows = []
for seed in seeds:
    tr, va, te = split_train_validation_test(len(labels), 0.2, 0.125, seed, labels)
    for n, fit in nested_subsets(tr, sizes, seed).items():
        for v in variants:
            t0 = time.perf_counter()
            if v in ("local", "otsu"):
                pred = fit_classical(v, X[fit], M[fit]).predict(X[te])
            else:
                F = feats(v, X[fit]); y = M[fit]
                rng = np.random.default_rng(seed)
                flat = F.reshape(-1, F.shape[-1]); yy = y.reshape(-1)
                take = rng.choice(len(yy), size=min(len(yy), 60000), replace=False)
                clf = RandomForestClassifier(n_estimators=100, max_depth=None, min_samples_leaf=2, n_jobs=2,
                                             max_samples=0.5, random_state=seed, class_weight="balanced" if v.endswith("b") else None)
                clf.fit(flat[take], yy[take])
                pred = []
                for i in te:
                    f = feats(v, X[i:i + 1])[0]
                    p = clf.predict_proba(f.reshape(-1, f.shape[-1]))[:, 1].reshape(X.shape[1:]) > 0.5
                    pred.append(label_objects(p, 4) > 0)
                pred = np.stack(pred)
            d = [dice_iou(p, M[i])[0] for p, i in zip(pred, te)]
            rows.append({"variant": v, "seed": seed, "n": n, "dice": round(float(np.median(d)), 4), "s": round(time.perf_counter() - t0, 1)})
            print(rows[-1], flush=True)
(WORK / f"pix_{sys.argv[1]}_{sys.argv[2]}_{sys.argv[3]}.json").write_text(json.dumps(rows))
