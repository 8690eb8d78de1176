"""Round 7 tuning run: VICReg (Bardes, Ponce & LeCun, ICLR 2022) in place of SimCLR's NT-Xent, on TUNING data.

The cpu profile's SimCLR recipe (task images only, 64 px views of 128 px images, crops 50-100 %, 30 epochs,
AdamW) with the loss swapped for VICReg's, for this process only (the package ships SimCLR and Barlow Twins;
VICReg would join them if it won). Reads WORK/stacks.npz (generator seed 1, pretrain_variants.py) and writes
WORK/vicreg-task<epochs>.pt for feature_scale.py:

    python benchmarks/tune_views/vicreg_variant.py WORK [EPOCHS]
    python benchmarks/tune_views/feature_scale.py WORK vicreg-task30 "64/layer3+layer4,48/layer3+layer4"

    L = 25 * mse(z1, z2) + 25 * sum_v mean_j relu(1 - sqrt(var(z_v[:, j]) + 1e-4))
        + 1 * sum_v sum_{i != j} cov(z_v)[i, j]^2 / D
"""
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: pretrain_probe_margin
import nanomorph.ssl.train as ssl_train  # noqa: E402
from pretrain_probe_margin import pretrained_encoder  # noqa: E402
from nanomorph.config import load_config  # noqa: E402
from nanomorph.models.encoder import save_encoder  # noqa: E402


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, invariance: float = 25.0, variance: float = 25.0,
                covariance: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = z1.float(), z2.float()
        n, d = z1.shape

        def hinge_std(z):
            return F.relu(1 - torch.sqrt(z.var(0) + eps)).mean()

        def off_diagonal_cov(z):
            z = z - z.mean(0)
            cov = z.T @ z / (n - 1)
            return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / d

        return (invariance * F.mse_loss(z1, z2) + variance * (hinge_std(z1) + hinge_std(z2))
                + covariance * (off_diagonal_cov(z1) + off_diagonal_cov(z2)))


work = Path(sys.argv[1])
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else None
ssl_train._loss_fn = lambda method, temperature, lambd, groups=1, sync=False: vicreg_loss
cfg = load_config("params.yaml", "cpu")
p = cfg.pretrain
epochs = epochs or p.epochs
cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(p, crop_side=(0.5, 1.0), epochs=epochs, dihedral=False,
                                                           blur_p=0.0, noise_std=0.0))
stacks = np.load(work / "stacks.npz")
t0 = time.perf_counter()
encoder, last = pretrained_encoder(stacks["task"], cfg, "simclr", p.seed)  # "simclr": its loop, VICReg's loss
save_encoder(work / f"vicreg-task{epochs}.pt", encoder, {})
print("vicreg", epochs, f"{time.perf_counter() - t0:.0f}s", last, flush=True)
