"""Tuning study, step 3: U-Net segmentation recipes on TUNING data (generator seed 1, split seeds 1000+).

Variants (resolution, training window, steps, frozen encoder or fine-tuned at encoder lr 1e-4): `64full`
(64 px whole images, the old default), `128crop64` (native 128 px, random 64 px windows), `...s400`/`s800`
(steps), `...ft` (fine-tuned encoder); every U-Net is scored plain (`-plain`) and with the mean over the 8
rotations/flips at prediction. Classical: `otsu@64`, `local@128`, ... fitted on the same training images.
Median test dice of the tuning split (the reported data are never read).

    python benchmarks/tune_views/seg_variants.py WORK barlow_twins-paper0.5-1.0 128crop64s400 4,8 1000,1001
"""

import sys, time, tempfile, json
from pathlib import Path
import numpy as np
from nanomorph.data.io import load_image_stack, load_mask_stack
from nanomorph.data.layout import find_nanowire_dataset
from nanomorph.data.synthetic import write_nanowire_dataset
from nanomorph.models.encoder import load_encoder
from nanomorph.probe.splits import nested_stratified_subsets, nested_subsets
from nanomorph.segment.classical import fit_classical
from nanomorph.segment.metrics import dice_iou
from nanomorph.segment.sweep import seeded_unet, split_train_validation_test
from nanomorph.segment.train import predict_masks, train_segmenter

classes = ("bundle", "dispersed", "network", "singular")
WORK = Path(sys.argv.pop(1))
cache = WORK / "seg_stacks.npz"
if not cache.exists():
    with tempfile.TemporaryDirectory() as tmp:
        write_nanowire_dataset(Path(tmp), classes, 100, 128, 1, progress=False)
        s = find_nanowire_dataset(Path(tmp), classes)
        np.savez(cache, i128=load_image_stack([x.image for x in s], 128), m128=load_mask_stack([x.mask for x in s], 128),
                 i64=load_image_stack([x.image for x in s], 64), m64=load_mask_stack([x.mask for x in s], 64),
                 labels=np.array([x.label for x in s]))
z = np.load(cache); labels = z["labels"]
enc_name = sys.argv[1]; variants = sys.argv[2].split(","); sizes = [int(v) for v in sys.argv[3].split(",")]
seeds = [int(v) for v in sys.argv[4].split(",")] if len(sys.argv) > 4 else [1000]
state = None if enc_name == "random" else load_encoder(WORK / f"{enc_name}.pt")[0].resnet_state_dict()
V = {  # name: (res, crop, steps, freeze, encoder_lr[, loss[, cpu_bf16]]); variants with contrast/level
# jitter of the training images (`...bcei`) and a cosine lr decay (`...bcecos`) were tried and removed, as
# train_segmenter options, after they did not help (tune_views.json, round 2)
    "64full": (64, None, 200, True, None), "128crop64": (128, 64, 200, True, None),
    "128full": (128, None, 200, True, None), "128crop64s400": (128, 64, 400, True, None),
    "128crop64ft": (128, 64, 200, False, 1e-4), "128crop64ft400": (128, 64, 400, False, 1e-4),
    "128crop96": (128, 96, 200, True, None), "128crop64s800": (128, 64, 800, True, None),
    "128crop64s400bce": (128, 64, 400, True, None, "dice+bce"),
    "128crop64s400bcebf": (128, 64, 400, True, None, "dice+bce", True),
}
rows = []
for seed in seeds:
    tr, va, te = split_train_validation_test(len(labels), 0.2, 0.125, seed, labels)
    plain, strat = nested_subsets(tr, sizes, seed), nested_stratified_subsets(tr, sizes, seed, labels)
    for n in plain:
        for v in variants:
            # `<variant>/strat`: training images spread over the classes (nested_stratified_subsets)
            fit = strat[n] if v.endswith("/strat") else plain[n]
            v = v.removesuffix("/strat")
            t0 = time.perf_counter()
            if v.startswith("otsu") or v.startswith("local"):
                method, res = v.split("@"); res = int(res)
                seg = fit_classical(method, z[f"i{res}"][fit], z[f"m{res}"][fit], min_size=4)
                pred = seg.predict(z[f"i{res}"][te])
            else:
                res, crop, steps, freeze, elr, *extra = V[v]
                loss, bf16 = (list(extra) + ["dice", False][len(extra):])[:2]
                model = seeded_unet("resnet18", state, freeze, init_seed=seed)
                train_segmenter(model, z[f"i{res}"][fit], z[f"m{res}"][fit], steps=steps, lr=1e-3, batch_size=4,
                                seed=seed, crop_size=crop, encoder_lr=elr,
                                loss=loss, cpu_bf16=bf16)
                pred = predict_masks(model, z[f"i{res}"][te], cpu_bf16=bf16)
                d = [dice_iou(p, z[f"m{res}"][i])[0] for p, i in zip(pred, te)]
                rows.append({"enc": enc_name, "variant": v + "-plain" + ("/strat" if fit is strat[n] else ""), "seed": seed, "n": n, "dice": float(np.median(d))})
                print(rows[-1], flush=True)
                pred = predict_masks(model, z[f"i{res}"][te], dihedral=True, cpu_bf16=bf16)
            d = [dice_iou(p, z[f"m{res}"][i])[0] for p, i in zip(pred, te)]
            rows.append({"enc": enc_name, "variant": v + ("/strat" if fit is strat[n] else ""), "seed": seed, "n": n, "dice": float(np.median(d)),
                         "s": time.perf_counter() - t0})
            print(rows[-1], flush=True)
out = WORK / f"seg_{enc_name}_{sys.argv[2]}.json".replace("/strat", "-strat"); out.write_text(json.dumps(rows))
