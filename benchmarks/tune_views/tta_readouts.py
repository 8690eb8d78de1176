"""Round 14 on TUNING data: test-time readouts of one cpu-recipe SimCLR encoder, no new pretraining recipe.

Pretrains the spec (`view:epochs:batch[:key=value]`, as schedule_grid.py; the encoder is kept in
WORK/enc_<spec>.pt and reused when it exists), then scores readouts of its layer3+layer4 features with the
probe stage's rule (protocol.py: split seeds 1000-1019, n = 1, 2, 4, 8; the report uses 0-19):
  64            - the stage's readout: the whole image at 64 px, averaged over the 8 rotations/flips
  48, 48|64     - read at 48 px; both sides concatenated
  mean 48,56,64 - the same features averaged over three sides (a scale ensemble)
  crops f       - averaged over the whole image and 5 crops (4 corners, centre) of f of the side, as SimCLR's
                  views are crops of 50-100 %
  symmetric rows - the probe fitted on the 8 rotated/flipped copies of each labelled image as separate rows
                  instead of their mean (test rows keep the mean)
  BN re-estimated - the stage's readout after the encoder's BatchNorm running statistics are recomputed on the
                  400 unlabelled images at 64 px and their 8 rotations/flips (AdaBN; SimCLR's training views
                  are jittered crops, whose statistics differ from whole images)
One JSON line per readout to WORK/tta_readouts.jsonl; `--bn-only` stops after the first two.

    python benchmarks/tune_views/tta_readouts.py WORK 64:30:32
"""
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from protocol import median_accuracy, probe_rule
from schedule_grid import cpu_arguments, resized, spec_arguments
from nanomorph.models.dihedral import SYMMETRIES, turn
from nanomorph.models.encoder import normalise
from nanomorph.probe.features import extract_features
from nanomorph.ssl.train import pretrain

STAGES = ("layer3", "layer4")


def pretrained(work: Path, spec: str, task: np.ndarray) -> torch.nn.Module:
    path = work / f"enc_{spec.replace(':', '_')}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    encoder = pretrain(task, **spec_arguments(spec, cpu_arguments()), checkpoint_path=None, device="cpu",
                       progress=False).encoder
    torch.save(encoder, path)
    return encoder


def corner_and_centre_crops(images: np.ndarray, fraction: float) -> list[np.ndarray]:
    side = images.shape[-1]
    crop = int(round(fraction * side))
    off = side - crop
    corners = ((0, 0), (0, off), (off, 0), (off, off), (off // 2, off // 2))
    return [images[:, a:a + crop, b:b + crop] for a, b in corners]


def batchnorm_reestimated(encoder: torch.nn.Module, images: np.ndarray, batch_size: int = 64) -> torch.nn.Module:
    """A copy of `encoder` whose BatchNorm running statistics are the plain average over `images` and their 8
    rotations/flips (momentum None: a cumulative average), no weight touched, no label read."""
    adapted = copy.deepcopy(encoder)
    for module in adapted.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    adapted.train()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = normalise(torch.from_numpy(images[start:start + batch_size])[:, None])
            for flip, k in SYMMETRIES:
                adapted.pooled_stages(turn(batch, flip, k), STAGES)
    return adapted.eval()


def main() -> None:
    work, spec = Path(sys.argv[1]), sys.argv[2]
    stacks = np.load(work / "stacks.npz")
    task, labels = stacks["task"].astype(np.float32), stacks["labels"]
    encoder = pretrained(work, spec, task)

    def features(images: np.ndarray, side: int) -> np.ndarray:
        return extract_features(encoder, resized(images, side), stages=STAGES, dihedral=True)

    def report(readout: str, Z: np.ndarray | None = None, predict=None) -> None:
        med, mean = median_accuracy(labels, predict or (lambda train, fit, test: probe_rule(Z, labels, fit, test)))
        row = {"spec": spec, "readout": readout, "median": med, "mean_n_le_8": mean}
        print(json.dumps(row), flush=True)
        with open(work / "tta_readouts.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    task64 = resized(task, 64)
    Z64 = features(task64, 64)
    report("64", Z64)
    adapted = batchnorm_reestimated(encoder, task64)
    report("BN re-estimated", extract_features(adapted, task64, stages=STAGES, dihedral=True))
    if "--bn-only" in sys.argv:
        return
    Z48, Z56 = features(task, 48), features(task, 56)
    report("48", Z48)
    report("48|64", np.hstack([Z48, Z64]))
    report("mean 48,56,64", (Z48 + Z56 + Z64) / 3)
    for fraction in (0.75, 0.6):
        crops = [features(c, 64) for c in corner_and_centre_crops(task, fraction)]
        report(f"crops {fraction}", np.mean(crops + [Z64], axis=0))

    small = torch.from_numpy(task64)[:, None]
    per_symmetry = np.stack([extract_features(encoder, turn(small, flip, k)[:, 0].contiguous().numpy(),
                                              stages=STAGES) for flip, k in SYMMETRIES])  # (8, N, D)

    def fit_on_symmetric_rows(train, fit, test):
        X = per_symmetry[:, fit].reshape(-1, per_symmetry.shape[-1])
        scaler = StandardScaler().fit(X)
        model = LogisticRegression(C=1.0, max_iter=3000).fit(scaler.transform(X), np.tile(labels[fit], 8))
        return model.predict(scaler.transform(Z64[test]))

    report("symmetric rows", predict=fit_on_symmetric_rows)


if __name__ == "__main__":
    main()
