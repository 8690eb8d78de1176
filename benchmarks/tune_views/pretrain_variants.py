"""Tuning study, step 1: pretrain Barlow Twins / SimCLR under view variants on TUNING data (generator seed 1).

The default data under generator seed 1 (the report shows seed 0): 384 generic EM images + the 400 nanowire
images (unlabelled), decoded at 128 px, pretrained with the cpu profile's settings except the views given per
spec `method:views[:lo-hi[:epochs[:images[:bf16[:temperature]]]]]` -- views `paper` (the paper's crop + h-flip + jitter), `d4` (+ vertical flip and
quarter turns), `em` (d4 + blur p 0.5 sigma <= 1.5 + noise std <= 0.1); `lo-hi` the crop side fraction;
`epochs` (default: the profile's); `images` all (generic + task, default) | task (the 400 nanowire images only);
`bf16`: pretrain under CPU bf16 autocast (pretrain.cpu_bf16); `temperature`: SimCLR's NT-Xent temperature
(default: the profile's).
Encoders go to WORK/<method>-<views><lo-hi>[-e<epochs>][-<images>].pt; the stacks to WORK/stacks.npz for
readouts.py.

    python benchmarks/tune_views/pretrain_variants.py WORK barlow_twins:paper barlow_twins:paper:0.5-1.0
"""
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: pretrain_probe_margin
from pretrain_probe_margin import pretrained_encoder
from nanomorph.config import load_config
from nanomorph.data.io import load_image_stack
from nanomorph.data.layout import find_images, find_nanowire_dataset
from nanomorph.data.synthetic import write_generic_em_dataset, write_nanowire_dataset
from nanomorph.models.encoder import save_encoder

out = Path(sys.argv.pop(1)); seed = 1  # tuning generator seed (the report: 0)
cfg = load_config("params.yaml", "cpu"); d, p = cfg.data, cfg.pretrain
if not (out / "stacks.npz").exists():
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_generic_em_dataset(work / "generic", d.generic_images, d.generic_size, seed, progress=False)
        write_nanowire_dataset(work / "nanowires", d.classes, d.images_per_class, d.image_size, seed, progress=False)
        generic = load_image_stack(find_images(work / "generic"), p.source_size)
        samples = find_nanowire_dataset(work / "nanowires", d.classes)
        paths = [s.image for s in samples]
        np.savez(out / "stacks.npz", generic=generic, task=load_image_stack(paths, p.source_size),
                 labels=np.array([s.label for s in samples]), t64=load_image_stack(paths, 64))
z = np.load(out / "stacks.npz")
IMAGES = {"all": np.concatenate([z["generic"], z["task"]]), "task": z["task"]}
# Every variant states all four view options, so none inherits a params.yaml value.
PAPER = dict(dihedral=False, blur_p=0.0, blur_sigma=1.5, noise_std=0.0)
VIEWS = {"paper": PAPER, "d4": {**PAPER, "dihedral": True},
         "em": dict(dihedral=True, blur_p=0.5, blur_sigma=1.5, noise_std=0.1)}
for spec in sys.argv[1:]:
    method, views, *rest = spec.split(":")
    crop, epochs, data, precision, temperature = (rest + [None] * 5)[:5]
    crop_side = tuple(float(c) for c in crop.split("-")) if crop else (0.25, 0.5)  # default: the paper's
    epochs = int(epochs) if epochs else p.epochs
    variant = dataclasses.replace(cfg, pretrain=dataclasses.replace(p, crop_side=crop_side, epochs=epochs,
                                                                    cpu_bf16=precision == "bf16", **VIEWS[views],
                                                                    temperature=float(temperature or p.temperature)))
    t0 = time.perf_counter()
    encoder, last = pretrained_encoder(IMAGES[data or "all"], variant, method, p.seed)
    name = f"{method}-{views}{crop or ''}" + (f"-e{epochs}" if epochs != p.epochs else "") + (f"-{data}" if data else "") \
        + (f"-{precision}" if precision else "") + (f"-t{temperature}" if temperature else "")
    save_encoder(out / f"{name}.pt", encoder, {})
    print(spec, f"{time.perf_counter() - t0:.0f}s", last, flush=True)
