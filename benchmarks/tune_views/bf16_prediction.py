"""Tuning study, round 3: the same trained U-Nets' test dice with float32 vs bf16-autocast prediction.

TUNING data (generator seed 1, split seeds 1001-1003, balanced training subsets n = 4, 8, the segment recipe,
training in float32). Justifies segment.predict_cpu_bf16.

    python benchmarks/tune_views/bf16_prediction.py WORK
"""
import sys
import json, numpy as np
from nanomorph.models.encoder import load_encoder
from nanomorph.probe.splits import nested_stratified_subsets
from nanomorph.segment.metrics import dice_iou
from nanomorph.segment.sweep import seeded_unet, split_train_validation_test
from nanomorph.segment.train import predict_masks, train_segmenter
WORK = sys.argv[1]
z = np.load(f"{WORK}/seg_stacks.npz"); X, M, labels = z["i128"], z["m128"], z["labels"]
state = load_encoder(f"{WORK}/simclr-paper0.5-1.0-bf16.pt")[0].resnet_state_dict()
rows = []
for seed in (1001, 1002, 1003):
    tr, va, te = split_train_validation_test(len(labels), 0.2, 0.125, seed, labels)
    for n, fit in nested_stratified_subsets(tr, [4, 8], seed, labels).items():
        m = seeded_unet("resnet18", state, True, seed)
        train_segmenter(m, X[fit], M[fit], steps=400, lr=1e-3, batch_size=4, seed=seed, crop_size=64, loss="dice+bce")
        r = {"seed": seed, "n": n}
        for bf in (False, True):
            pred = predict_masks(m, X[te], dihedral=True, cpu_bf16=bf)
            r["bf16" if bf else "fp32"] = float(np.median([dice_iou(p, M[i])[0] for p, i in zip(pred, te)]))
        rows.append(r); print(r, flush=True)
json.dump(rows, open(f"{WORK}/bf16pred.json", "w"))
