"""Round 10 tuning run: SimCLR with multi-crop views (Caron et al., SwAV, NeurIPS 2020), on TUNING data.

The cpu profile's SimCLR recipe (task images only, two 64 px views, crops 50-100 % of the side, AdamW, NT-Xent
at the profile's temperature), plus `LOCALS` small views per image: crops of 25-50 % of the side at 32 px. Small
views are cheap (a 32 px view costs a quarter of a 64 px one), so 4 of them add half a step's cost and give
every image 9 positive pairs per step instead of one. The loss is the mean NT-Xent over the pairs (global g,
any other view v), small-small pairs left out as in SwAV; each view batch is its own BatchNorm batch. Own loop
(the package's pretrain() takes two views), the package's model, optimiser, schedule, views and loss otherwise.
Reads WORK/stacks.npz (generator seed 1, pretrain_variants.py), writes WORK/multicrop<LOCALS>-task<EPOCHS>.pt
for feature_scale.py:

    python benchmarks/tune_views/multicrop_variant.py WORK EPOCHS LOCALS
    python benchmarks/tune_views/feature_scale.py WORK multicrop4-task20 "64/layer3+layer4"
"""
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nanomorph.config import load_config
from nanomorph.models.encoder import save_encoder
from nanomorph.ssl.embedding import embed
from nanomorph.ssl.simclr import nt_xent_loss
from nanomorph.ssl.train import _build_model
from nanomorph.ssl.view_data import _epoch_order, as_batch_tensor, derived_seed
from nanomorph.ssl.views import make_view_transform

work, epochs, locals_ = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
p = load_config("params.yaml", "cpu").pretrain
torch.set_num_threads(len(os.sched_getaffinity(0)))
data = as_batch_tensor(np.load(work / "stacks.npz")["task"])
common = dict(flip_p=p.flip_p, jitter_p=p.jitter_p, brightness=p.brightness, contrast=p.contrast, dihedral=p.dihedral)
global_view = make_view_transform(p.image_size, tuple(p.crop_side), **common)
local_view = make_view_transform(p.image_size // 2, (0.25, 0.5), **common)
steps_per_epoch = len(data) // p.batch_size
total = epochs * steps_per_epoch
m = _build_model(p.arch, tuple(p.projector_dims), p.seed, torch.device("cpu"), p.optimizer, p.lr, p.momentum,
                 p.weight_decay, p.warmup_epochs * steps_per_epoch, total)
t0 = time.perf_counter()
for step in range(total):
    epoch, b = divmod(step, steps_per_epoch)
    rows = _epoch_order(len(data), p.seed, epoch)[b * p.batch_size:(b + 1) * p.batch_size]
    views = [[], []] + [[] for _ in range(locals_)]
    with torch.random.fork_rng(devices=[]):
        for position, image in enumerate(data[rows]):
            torch.default_generator.manual_seed(derived_seed(p.seed, step, position, 2))
            for k, v in enumerate(views):
                v.append((global_view if k < 2 else local_view)(image))
    views = [torch.stack(v) for v in views]
    g = [embed(m.encoder, m.projector, v)[1] for v in views[:2]]
    small = embed(m.encoder, m.projector, torch.cat(views[2:]))[1].chunk(locals_) if locals_ else []
    pairs = [(g[0], g[1])] + [(gi, s) for gi in g for s in small]
    loss = sum(nt_xent_loss(a, b_, p.temperature) for a, b_ in pairs) / len(pairs)
    m.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    m.optimizer.step()
    m.scheduler.step()
    if (step + 1) % steps_per_epoch == 0:
        print(f"epoch {epoch + 1} loss {loss.item():.3f} {time.perf_counter() - t0:.0f}s", flush=True)
m.encoder.eval()
save_encoder(work / f"multicrop{locals_}-task{epochs}.pt", m.encoder, {})
print("multicrop", locals_, epochs, f"{time.perf_counter() - t0:.0f}s", flush=True)
