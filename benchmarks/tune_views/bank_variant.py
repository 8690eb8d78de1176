"""Round 9 on TUNING data: more negatives per step than SimCLR's batch, at the cpu recipe's compute.

Round 8 found that the cpu recipe's 30 epochs stop far above the loss that long schedules reach, and that
batch 64 (more in-batch negatives, half the steps) scores lower than batch 32. SimCLR's authors report that
many negatives matter most in short schedules; with 400 images every image can be a negative at every step
at no extra forward pass:
  bank      SimCLR's anchors (both views of the batch) scored against the in-batch views AND a memory bank of
            every other image's L2-normalised projection (Wu et al. 2018: the bank row of image i becomes
            normalise(m * row + (1 - m) * mean of its two views' projections) when i is in a batch, m = 0.5;
            filled once at the start with the untrained model's projections of one view per image);
  exemplar  parametric instance discrimination (Dosovitskiy et al. 2014 with a cosine classifier): each view
            classified among the 400 images by cosine similarity / temperature to a learned row per image.
Everything else is the cpu profile's recipe (`pretrain_arguments`: views, AdamW, warmup + cosine, seed),
driven step by step with the package's own view pipeline and models; the probe reads layer3+layer4 features
averaged over the 8 rotations/flips at 64 and 128 px with the probe stage's rule on split seeds 1000-1019
(protocol.py) at n = 1, 2, 4, 8, 80. WORK/stacks.npz as for schedule_grid.py (generator seed 1). One JSON line
per (spec, feature side) to WORK/bank_variant.jsonl.

    python benchmarks/tune_views/bank_variant.py WORK bank:30:32 exemplar:30:32
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from schedule_grid import cpu_arguments, score
from nanomorph.models.encoder import Projector, ResNetEncoder
from nanomorph.ssl.embedding import TwinEmbedder, embed
from nanomorph.ssl.train import make_optimizer, warmup_cosine
from nanomorph.ssl.view_data import _epoch_order, as_batch_tensor, step_views
from nanomorph.ssl.views import make_view_transform

BANK_MOMENTUM = 0.5


def bank_loss(z1: torch.Tensor, z2: torch.Tensor, bank: torch.Tensor, rows: torch.Tensor, tau: float) -> torch.Tensor:
    """NT-Xent whose candidates are the 2B in-batch views plus the bank rows of the images not in the batch."""
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    others = torch.ones(len(bank), dtype=torch.bool)
    others[rows] = False
    logits = torch.cat([z @ z.T, z @ bank[others].T], 1) / tau
    anchors = torch.arange(2 * n)
    logits[anchors, anchors] = float("-inf")
    return F.cross_entropy(logits, (anchors + n) % (2 * n))


def pretrain_variant(task: np.ndarray, kind: str, epochs: int, batch: int, kw: dict) -> tuple[ResNetEncoder, float]:
    data = as_batch_tensor(task)
    steps_per_epoch, seed = len(data) // batch, kw["seed"]
    total = epochs * steps_per_epoch
    torch.manual_seed(seed)
    encoder = ResNetEncoder(kw["arch"], 1).train()
    projector = Projector(encoder.out_dim, tuple(kw["projector_dims"])).train()
    twin = TwinEmbedder(encoder, projector)
    dim = kw["projector_dims"][-1]
    params = [*encoder.parameters(), *projector.parameters()]
    prototypes = None
    if kind == "exemplar":
        prototypes = torch.nn.Parameter(F.normalize(torch.randn(len(data), dim), dim=1))
        params.append(prototypes)
    optimizer = make_optimizer(kw["optimizer"], params, kw["lr"], kw["momentum"], kw["weight_decay"])
    scheduler = LambdaLR(optimizer, warmup_cosine(kw["warmup_epochs"] * steps_per_epoch, total))
    transform = make_view_transform(kw["image_size"], kw["crop_side"], kw["flip_p"], kw["jitter_p"], kw["brightness"],
                                    kw["contrast"], kw["dihedral"], kw["blur_p"], kw["blur_sigma"], kw["noise_std"])
    tau = kw["temperature"]
    bank = None
    if kind == "bank":
        with torch.no_grad():
            first, _ = step_views(data, transform, seed, -2)
            bank = F.normalize(embed(encoder, projector, first)[1], dim=1)
    loss = torch.zeros(())
    for step in range(total):
        epoch, b = divmod(step, steps_per_epoch)
        rows = _epoch_order(len(data), seed, epoch)[b * batch:(b + 1) * batch]
        v1, v2 = step_views(data[rows], transform, seed, step)
        z1, z2, _, _ = twin(v1, v2)
        if kind == "bank":
            loss = bank_loss(z1, z2, bank, rows, tau)
        else:
            w = F.normalize(prototypes, dim=1)
            target = torch.cat([rows, rows])
            loss = F.cross_entropy(F.normalize(torch.cat([z1, z2]), dim=1) @ w.T / tau, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if bank is not None:
            with torch.no_grad():
                mean = F.normalize((F.normalize(z1, dim=1) + F.normalize(z2, dim=1)) / 2, dim=1)
                bank[rows] = F.normalize(BANK_MOMENTUM * bank[rows] + (1 - BANK_MOMENTUM) * mean, dim=1)
        if (step + 1) % steps_per_epoch == 0:
            print(f"{kind} epoch {epoch + 1}/{epochs} loss {loss.item():.4f}", file=sys.stderr, flush=True)
    return encoder.eval(), float(loss.item())


def main() -> None:
    work, specs = Path(sys.argv[1]), sys.argv[2:]
    z = np.load(work / "stacks.npz")
    task, labels = z["task"].astype(np.float32), z["labels"]
    base = cpu_arguments()
    for spec in specs:
        kind, epochs, batch = spec.split(":")
        if kind not in ("bank", "exemplar"):
            raise SystemExit(f"{spec}: kind must be bank or exemplar")
        started = time.time()
        encoder, last_loss = pretrain_variant(task, kind, int(epochs), int(batch), base)
        seconds = round(time.time() - started)
        score(encoder, task, labels, (64, 128), work / "bank_variant.jsonl", {"spec": spec},
              {"pretrain_s": seconds, "last_step_loss": round(last_loss, 4)})


if __name__ == "__main__":
    main()
