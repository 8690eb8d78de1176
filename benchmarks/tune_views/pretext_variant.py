"""Round 11 tuning run: SimCLR plus a hand-crafted-feature pretext task (as MaskFeat predicts HOG), on TUNING data.

The cpu profile's SimCLR recipe (task images only, two 64 px views, crops 50-100 % of the side, AdamW, NT-Xent at
the profile's temperature, 30 epochs by default) with one more term: a linear head on the encoder's pooled
features predicts, from each view, the classical feature vector (nanomorph.probe.classical: intensity, texture,
Otsu morphology) of the whole image at 64 px, each feature standardised over the pretraining images:

    L = NT-Xent(z1, z2) + WEIGHT * (mse(head(h1), c) + mse(head(h2), c)) / 2

No label is read: the targets are computed from the images alone, so the encoder may learn what the classical
features see (connectivity, width) beside what the views teach. The head is dropped after pretraining. Own loop
(the package's pretrain() has no pretext term), the package's model, optimiser, schedule, views and loss
otherwise. Reads WORK/stacks.npz (generator seed 1, pretrain_variants.py), writes WORK/pretext<WEIGHT>-task<EPOCHS>.pt
for feature_scale.py:

    python benchmarks/tune_views/pretext_variant.py WORK WEIGHT [EPOCHS]
    python benchmarks/tune_views/feature_scale.py WORK pretext1.0-task30 "64/layer3+layer4"
"""
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from nanomorph.config import load_config
from nanomorph.models.encoder import save_encoder
from nanomorph.probe.classical import classical_features
from nanomorph.ssl.embedding import embed
from nanomorph.ssl.simclr import nt_xent_loss
from nanomorph.ssl.train import _build_model, make_optimizer, warmup_cosine
from nanomorph.ssl.view_data import _epoch_order, as_batch_tensor, step_views
from nanomorph.ssl.views import make_view_transform

work, weight = Path(sys.argv[1]), float(sys.argv[2])
p = load_config("params.yaml", "cpu").pretrain
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else p.epochs
torch.set_num_threads(len(os.sched_getaffinity(0)))
stacks = np.load(work / "stacks.npz")
data = as_batch_tensor(stacks["task"])
t0 = time.perf_counter()
targets = classical_features(stacks["t64"]).astype(np.float64)
targets = (targets - targets.mean(0)) / np.where(targets.std(0) > 0, targets.std(0), 1.0)
targets = torch.from_numpy(targets.astype(np.float32))
print(f"targets {targets.shape} {time.perf_counter() - t0:.1f}s", flush=True)
view = make_view_transform(p.image_size, tuple(p.crop_side), flip_p=p.flip_p, jitter_p=p.jitter_p,
                           brightness=p.brightness, contrast=p.contrast, dihedral=p.dihedral)
steps_per_epoch = len(data) // p.batch_size
total = epochs * steps_per_epoch
m = _build_model(p.arch, tuple(p.projector_dims), p.seed, torch.device("cpu"), p.optimizer, p.lr, p.momentum,
                 p.weight_decay, p.warmup_epochs * steps_per_epoch, total)
with torch.random.fork_rng(devices=[]):
    torch.manual_seed(p.seed + 1)
    head = torch.nn.Linear(m.encoder.out_dim, targets.shape[1])
# one optimiser and schedule over encoder, projector and head (the package's, rebuilt to include the head)
optimizer = make_optimizer(p.optimizer, [*m.encoder.parameters(), *m.projector.parameters(), *head.parameters()],
                           p.lr, p.momentum, p.weight_decay)
scheduler = LambdaLR(optimizer, warmup_cosine(p.warmup_epochs * steps_per_epoch, total))
for step in range(total):
    epoch, b = divmod(step, steps_per_epoch)
    rows = _epoch_order(len(data), p.seed, epoch)[b * p.batch_size:(b + 1) * p.batch_size]
    (h1, z1), (h2, z2) = (embed(m.encoder, m.projector, v) for v in step_views(data[rows], view, p.seed, step))
    contrastive = nt_xent_loss(z1, z2, p.temperature)
    pretext = (F.mse_loss(head(h1), targets[rows]) + F.mse_loss(head(h2), targets[rows])) / 2
    loss = contrastive + weight * pretext
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    if (step + 1) % steps_per_epoch == 0:
        print(f"epoch {epoch + 1} nt-xent {contrastive.item():.3f} pretext {pretext.item():.3f} "
              f"{time.perf_counter() - t0:.0f}s", flush=True)
m.encoder.eval()
save_encoder(work / f"pretext{weight}-task{epochs}.pt", m.encoder, {})
print("pretext", weight, epochs, f"{time.perf_counter() - t0:.0f}s", flush=True)
